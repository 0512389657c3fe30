//! Key files on disk: raw 32-byte secrets, hex-encoded, mode 0600.

use crate::Error;
use ed25519_dalek::SigningKey;
use rand::Rng;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `secret` as hex to `path`, creating it with mode 0600 (never wider).
pub fn write_secret(path: &Path, secret: &[u8; 32]) -> Result<(), Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(zeroize::Zeroizing::new(hex::encode(secret)).as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    Ok(())
}

/// The permission bits (`0o755`, say) of a file or directory that group or
/// others may reach, else `None` (and always `None` off Unix): a key,
/// database or data directory must be its owner's alone.
pub fn open_to_others(meta: &fs::Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Creates `dir` (and its parents) readable by its owner only (0700): it
/// holds keys and databases. An existing directory keeps its mode (it may
/// be shared on purpose); one that others can read is reported.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        if let Some(mode) = open_to_others(&fs::metadata(dir)?) {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{mode:o}"),
                "data directory is readable by other users; chmod 700 it"
            );
        }
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)?;
    Ok(())
}

/// Creates `path` empty, readable by its owner only (0600), if it does not
/// exist: for database files, before the database library opens them.
pub fn create_private_file(path: &Path) -> Result<(), Error> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reads a secret written by [`write_secret`]. Refuses files readable by others.
pub fn read_secret(path: &Path) -> Result<[u8; 32], Error> {
    let err = |reason: String| Error::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if let Some(mode) = open_to_others(&meta) {
        return Err(err(format!(
            "permissions {mode:o} let others read it; run chmod 600"
        )));
    }
    let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|e| err(format!("not 64 hex digits: {e}")))?;
    Ok(out)
}

/// Loads the ed25519 identity at `path`, or makes and saves a new one.
pub fn load_or_create_identity(path: &Path) -> Result<SigningKey, Error> {
    if path.exists() {
        let secret = zeroize::Zeroizing::new(read_secret(path)?);
        return Ok(SigningKey::from_bytes(&secret));
    }
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(seed.as_mut());
    write_secret(path, &seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("umbra-id-{}", std::process::id()));
        let p = dir.join("identity.key");
        let _ = fs::remove_file(&p);
        let k = load_or_create_identity(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let k2 = load_or_create_identity(&p).unwrap();
            assert_eq!(k.to_bytes(), k2.to_bytes());
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(read_secret(&p).is_err());
        }
        fs::write(&p, "zz").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(read_secret(&p), Err(Error::KeyFile { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
