use protocol::topology::NetworkParams;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Configuration of a directory authority (`umbra directory run --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoryConfig {
    /// HTTP listen address of the API.
    pub listen: SocketAddr,
    /// Where the authority key and the descriptor store live.
    pub data_dir: PathBuf,
    /// Length of an epoch, seconds. Sphinx keys rotate every epoch.
    pub epoch_length_secs: u64,
    /// Start of epoch 0, Unix ms.
    pub genesis_unix_ms: u64,
    /// Most nodes the authority keeps descriptors for.
    pub max_nodes: u64,
    /// Network parameters published in every topology.
    pub params: NetworkParams,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            data_dir: PathBuf::from("umbra-data/directory"),
            epoch_length_secs: 3600,
            genesis_unix_ms: 0,
            max_nodes: 10_000,
            params: NetworkParams::default(),
        }
    }
}

impl DirectoryConfig {
    /// A commented example, as `umbra directory init` writes it.
    pub fn example() -> String {
        let d = Self::default();
        format!(
            r#"# Umbra directory authority configuration.
# Every key is optional; the values shown are the defaults.

# HTTP address of the API (descriptors in, signed topologies out, /metrics).
listen = "{listen}"
# Authority key (authority.key, mode 0600) and descriptor store (directory.redb).
data_dir = "{data_dir}"
# Epoch length in seconds: nodes rotate Sphinx keys every epoch.
epoch_length_secs = {epoch}
# Start of epoch 0, Unix milliseconds.
genesis_unix_ms = {genesis}
# Most nodes the authority keeps descriptors for.
max_nodes = {max_nodes}

# Network parameters published in every topology; all clients use the same.
[params]
# Mean per-hop mixing delay (milliseconds).
mix_delay_mean_ms = {mean}
# Nodes clamp longer per-hop delays to this (milliseconds).
max_delay_ms = {max}
# Client payload stream rate, packets/s.
lambda_payload = {lp:?}
# Client loop cover rate, packets/s.
lambda_loop = {ll:?}
# Mix node loop cover rate, packets/s.
lambda_mix_loop = {lm:?}
"#,
            listen = d.listen,
            data_dir = d.data_dir.display(),
            epoch = d.epoch_length_secs,
            genesis = d.genesis_unix_ms,
            max_nodes = d.max_nodes,
            mean = d.params.mix_delay_mean_ms,
            max = d.params.max_delay_ms,
            lp = d.params.lambda_payload,
            ll = d.params.lambda_loop,
            lm = d.params.lambda_mix_loop,
        )
    }
}
