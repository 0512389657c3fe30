//! `umbra <role> check --config F`: what a config names on disk (data
//! directory, key files, databases), inspected without creating or
//! changing anything. Each role's config adds its own findings.

use std::fs;
use std::path::Path;

/// What a check found. Problems stop the role from starting or leave it
/// exposed (exit 1); warnings are allowed but weaken it (dangerous knobs,
/// addresses a production directory refuses).
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Each problem, naming the key (`key \`x\`: why`).
    pub problems: Vec<String>,
    /// Each warning, naming the key.
    pub warnings: Vec<String>,
    /// Facts worth printing on success (the identity, for one).
    pub notes: Vec<String>,
}

impl Findings {
    /// A problem with `key`.
    pub fn problem(&mut self, key: &str, reason: impl std::fmt::Display) {
        self.problems.push(format!("key `{key}`: {reason}"));
    }

    /// A warning about `key`.
    pub fn warn(&mut self, key: &str, reason: impl std::fmt::Display) {
        self.warnings.push(format!("key `{key}`: {reason}"));
    }

    /// The data directory named by `key`: a directory only its owner can
    /// read, or absent (then created, 0700, at first start).
    pub fn private_dir(&mut self, key: &str, dir: &Path) {
        match fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                self.problem(key, format!("{} is not a directory", dir.display()))
            }
            Ok(m) => {
                if let Some(mode) = crate::identity::open_to_others(&m) {
                    self.problem(
                        key,
                        format!(
                            "{} has mode {mode:o}: other users can read the keys; chmod 700 it",
                            dir.display()
                        ),
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.notes.push(format!(
                "{} does not exist yet: created (0700) at first start",
                dir.display()
            )),
            Err(e) => self.problem(key, format!("{}: {e}", dir.display())),
        }
    }

    /// A secret key file in the data directory named by `key`: if present,
    /// 0600 and 32 bytes in hex. Returns its public key.
    pub fn key_file(&mut self, key: &str, path: &Path) -> Option<[u8; 32]> {
        if !path.exists() {
            self.notes.push(format!(
                "{} does not exist yet: a new key is made at first start",
                path.display()
            ));
            return None;
        }
        match crate::identity::read_secret(path) {
            Ok(secret) => {
                let secret = zeroize::Zeroizing::new(secret);
                Some(
                    ed25519_dalek::SigningKey::from_bytes(&secret)
                        .verifying_key()
                        .to_bytes(),
                )
            }
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    /// A private file (a database) named by `key`, if present: 0600.
    pub fn private_file(&mut self, key: &str, path: &Path) {
        if let Some(mode) = fs::metadata(path)
            .ok()
            .and_then(|m| crate::identity::open_to_others(&m))
        {
            self.problem(
                key,
                format!(
                    "{} has mode {mode:o}: other users can read it; chmod 600 it",
                    path.display()
                ),
            );
        }
    }

    /// Two listening addresses that must differ.
    pub fn distinct(&mut self, a: (&str, std::net::SocketAddr), b: (&str, std::net::SocketAddr)) {
        if a.1 == b.1 && a.1.port() != 0 {
            self.problem(b.0, format!("{} is also `{}`", b.1, a.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_contents_of_key_files_are_judged_without_changing_them() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut f = Findings::default();
        f.private_dir("data_dir", &data);
        assert!(f.key_file("data_dir", &data.join("identity.key")).is_none());
        assert!(f.problems.is_empty(), "{:?}", f.problems);
        assert!(!data.exists(), "a check creates nothing");

        crate::identity::create_private_dir(&data).unwrap();
        let key = crate::identity::load_or_create_identity(&data.join("identity.key")).unwrap();
        let mut f = Findings::default();
        f.private_dir("data_dir", &data);
        let public = f.key_file("data_dir", &data.join("identity.key"));
        assert_eq!(public, Some(key.verifying_key().to_bytes()));
        assert!(f.problems.is_empty(), "{:?}", f.problems);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
            fs::set_permissions(data.join("identity.key"), fs::Permissions::from_mode(0o644))
                .unwrap();
            let mut f = Findings::default();
            f.private_dir("data_dir", &data);
            assert!(f.key_file("data_dir", &data.join("identity.key")).is_none());
            assert_eq!(f.problems.len(), 2, "{:?}", f.problems);
            assert!(f.problems[0].contains("mode 755") && f.problems[0].contains("chmod 700"));
            assert!(f.problems[1].contains("chmod 600"), "{:?}", f.problems);
        }
        fs::write(data.join("bad.key"), "zz").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(data.join("bad.key"), fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut f = Findings::default();
        assert!(f.key_file("data_dir", &data.join("bad.key")).is_none());
        assert!(
            f.problems[0].contains("not 64 hex digits"),
            "{:?}",
            f.problems
        );
    }
}
