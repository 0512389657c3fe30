//! Loading TOML config files: defaults in code, unknown keys rejected, and
//! every error names the file and the key.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("config file {}: {reason}", path.display())]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the key.
    pub reason: String,
}

/// Reads and parses `path`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    parse(path, &text)
}

/// Parses `text` as the contents of `path`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_owned(),
        reason: e.to_string().trim_end().replace('\n', " "),
    })
}

/// Writes `text` to `path` unless it exists (or `force`).
pub fn write_new(path: &Path, text: &str, force: bool) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError {
        path: path.to_owned(),
        reason,
    };
    if path.exists() && !force {
        return Err(err("already exists (use --force to overwrite)".into()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    std::fs::write(path, text).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use directory::DirectoryConfig;
    use mixnode::MixnodeConfig;

    #[test]
    fn examples_parse_to_the_defaults() {
        let d: DirectoryConfig = parse(Path::new("d.toml"), &DirectoryConfig::example()).unwrap();
        assert_eq!(
            d.epoch_length_secs,
            DirectoryConfig::default().epoch_length_secs
        );
        let refs = [
            net::dirclient::AuthorityRef {
                url: "http://198.51.100.4:8000".into(),
                key: "ab".repeat(32),
            },
            net::dirclient::AuthorityRef {
                url: "http://198.51.100.5:8000".into(),
                key: "cd".repeat(32),
            },
        ];
        let m: MixnodeConfig =
            parse(Path::new("m.toml"), &mixnode::example_config(&refs, 2)).unwrap();
        assert_eq!(m.authorities, refs);
        assert_eq!(m.authority_threshold, 2);
        let g: gateway::GatewayConfig = parse(
            Path::new("g.toml"),
            &gateway::GatewayConfig::example(&refs, 1),
        )
        .unwrap();
        assert_eq!(g.node.authorities, refs);
        assert_eq!(m.worker_queue, MixnodeConfig::default().worker_queue);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_key() {
        let e = parse::<MixnodeConfig>(Path::new("/etc/umbra/mix.toml"), "listn = \"1.2.3.4:5\"")
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/etc/umbra/mix.toml") && msg.contains("listn"),
            "{msg}"
        );
        let e =
            parse::<DirectoryConfig>(Path::new("dir.toml"), "[params]\nmix_delay_mean_ms = \"x\"")
                .unwrap_err();
        assert!(e.to_string().contains("mix_delay_mean_ms"), "{e}");
    }
}
