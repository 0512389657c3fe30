//! The daemon's settings: `daemon.toml` in its data directory (written on
//! the first start from the command line, so later starts need no flags),
//! with defaults in code and unknown keys refused.

use crate::Error;
use client_sdk::{AuthorityRef, ClientConfig};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API's default address: loopback, one above Nym's client port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1978";

/// One directory authority, as `daemon.toml` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authority {
    /// Base URL of its HTTP API.
    pub url: String,
    /// Its ed25519 public key, 64 hex digits.
    pub key: String,
}

/// `daemon.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonFile {
    /// Where the API and page are served.
    pub listen: SocketAddr,
    /// The network's directory authorities.
    pub authorities: Vec<Authority>,
    /// Signatures of `authorities` a topology needs.
    pub threshold: usize,
    /// How often to fetch every dropbox, ms (the SDK's default if absent).
    pub fetch_interval_ms: Option<u64>,
    /// DANGEROUS: serve beyond loopback.
    pub dangerous_listen_non_loopback: bool,
}

impl Default for DaemonFile {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            authorities: Vec::new(),
            threshold: 1,
            fetch_interval_ms: None,
            dangerous_listen_non_loopback: false,
        }
    }
}

impl DaemonFile {
    /// Reads `path`; a missing file is the defaults.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(Error::File {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
            }
        };
        Self::parse(&text, &path.display().to_string())
    }

    /// Reads `daemon.toml`'s text; errors name `file`.
    pub fn parse(text: &str, file: &str) -> Result<Self, Error> {
        toml::from_str(text).map_err(|e| Error::Config {
            file: file.to_string(),
            key: e
                .message()
                .split('`')
                .nth(1)
                .unwrap_or("(syntax)")
                .to_string(),
            reason: e.message().to_string(),
        })
    }

    /// Writes it to `path` (0600: it names the network the user uses).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text = toml::to_string(self).map_err(|e| Error::Config {
            file: path.display().to_string(),
            key: "(all)".into(),
            reason: e.to_string(),
        })?;
        let err = |e: std::io::Error| Error::File {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(err)?;
        // An existing file keeps its mode on open: narrow it too.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(err)?;
        }
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)
    }

    /// The daemon's configuration for data directory `data_dir`, read from
    /// `file` (named in errors).
    pub fn into_config(self, data_dir: PathBuf, file: &Path) -> Result<DaemonConfig, Error> {
        let cfg_err = |key: &str, reason: String| Error::Config {
            file: file.display().to_string(),
            key: key.into(),
            reason,
        };
        if self.authorities.is_empty() {
            return Err(cfg_err(
                "authorities",
                "no directory authorities: pass --authority 'URL KEY' (`umbra testnet` prints \
                 them) or list them in this file"
                    .into(),
            ));
        }
        let refs = self
            .authorities
            .iter()
            .map(|a| AuthorityRef {
                url: a.url.clone(),
                key: a.key.clone(),
            })
            .collect();
        let mut client = ClientConfig::with_authorities(refs, self.threshold)
            .map_err(|e| cfg_err("authorities", e.to_string()))?;
        if let Some(ms) = self.fetch_interval_ms {
            client.fetch_interval = Duration::from_millis(ms);
        }
        Ok(DaemonConfig {
            client,
            data_dir,
            listen: self.listen,
            dangerous_listen_non_loopback: self.dangerous_listen_non_loopback,
        })
    }
}

/// What [`crate::Daemon::start`] needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DaemonConfig {
    /// The client's settings.
    pub client: ClientConfig,
    /// Holds the client's store, the history, the token and `daemon.toml`.
    pub data_dir: PathBuf,
    /// Where the API and page are served.
    pub listen: SocketAddr,
    /// DANGEROUS: allow a `listen` address beyond loopback.
    pub dangerous_listen_non_loopback: bool,
}

impl DaemonConfig {
    /// Defaults (loopback, port 1978) for a client and a data directory.
    pub fn new(client: ClientConfig, data_dir: PathBuf) -> Self {
        Self {
            client,
            data_dir,
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            dangerous_listen_non_loopback: false,
        }
    }

    /// Refuses a non-loopback address unless the dangerous setting allows it.
    pub fn check(&self) -> Result<(), Error> {
        if !self.listen.ip().is_loopback() && !self.dangerous_listen_non_loopback {
            return Err(Error::Config {
                file: "daemon settings".into(),
                key: "listen".into(),
                reason: format!(
                    "{} is not a loopback address: the API drives your client; set \
                     dangerous_listen_non_loopback to serve it beyond this machine",
                    self.listen
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap();
        let e = DaemonFile::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("daemon.toml") && e.contains("listen_port"),
            "{e}"
        );
    }

    #[test]
    fn a_saved_file_loads_the_same_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.toml");
        let f = DaemonFile {
            authorities: vec![Authority {
                url: "http://127.0.0.1:8000".into(),
                key: "ab".repeat(32),
            }],
            fetch_interval_ms: Some(500),
            ..DaemonFile::default()
        };
        f.save(&p).unwrap();
        assert_eq!(DaemonFile::load(&p).unwrap(), f);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let cfg = f.into_config(dir.path().into(), &p).unwrap();
        assert_eq!(cfg.client.fetch_interval, Duration::from_millis(500));
    }

    #[test]
    fn no_authorities_and_remote_listening_are_refused_by_name() {
        let p = Path::new("/x/daemon.toml");
        let e = DaemonFile::default()
            .into_config("/x".into(), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("authorities") && e.contains("/x/daemon.toml"),
            "{e}"
        );
        let mut c = DaemonConfig::new(
            ClientConfig::new("http://127.0.0.1:1", &"ab".repeat(32)).unwrap(),
            "/x".into(),
        );
        c.listen = "0.0.0.0:1978".parse().unwrap();
        assert!(c.check().unwrap_err().to_string().contains("listen"));
        c.dangerous_listen_non_loopback = true;
        assert!(c.check().is_ok());
    }
}
