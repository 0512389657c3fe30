use net::dirclient::AuthorityRef;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Configuration of a mix node (`umbra mixnode run --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixnodeConfig {
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Address published in the descriptor; defaults to `listen`.
    pub public_address: Option<SocketAddr>,
    /// HTTP address of the Prometheus endpoint.
    pub metrics_listen: SocketAddr,
    /// The network's directory authorities (URL and public key of each).
    pub authorities: Vec<AuthorityRef>,
    /// Signatures of `authorities` a topology needs (k of n); fewer are refused.
    pub authority_threshold: usize,
    /// The identity key file lives here (Sphinx keys stay in memory).
    pub data_dir: PathBuf,
    /// Sphinx worker threads; 0 means one per core.
    pub workers: usize,
    /// Longest delay honoured per packet, milliseconds; longer header delays are clamped.
    pub max_delay_ms: u64,
    /// Packets waiting for a worker before new ones are dropped.
    pub worker_queue: usize,
    /// Packets held for their delay before new ones are dropped.
    pub delay_queue: usize,
    /// Frames queued per outbound link before new ones are dropped.
    pub link_queue: usize,
    /// Packet rate the replay cache is sized for (packets/s over a key's life).
    pub replay_max_pps: u64,
    /// Replay cache false-positive rate when full.
    pub replay_false_positive_rate: f64,
    /// How often to refresh the topology, seconds.
    pub topology_refresh_secs: u64,
    /// Let links use UDP payloads up to 8952 bytes where the path carries
    /// them (data-centre links with jumbo frames). Off by default: on lossy
    /// paths large datagrams cost more than they save.
    pub jumbo_frames: bool,
    /// DANGEROUS, evaluation only: send no loop cover. Without it the node
    /// cannot notice packets being held or dropped, and its links carry less
    /// cover. Logs a warning.
    pub dangerous_no_cover: bool,
    /// DANGEROUS, evaluation only: forward every packet at once, ignoring the
    /// delay in its header. This removes the mixing. Logs a warning.
    pub dangerous_zero_delay: bool,
    /// DANGEROUS, benchmarks only, not settable from a config file: accept
    /// replayed packets (the replay cache still records every tag), so a
    /// soak can cycle a fixed set of packets. Logs a warning.
    #[serde(skip)]
    pub dangerous_accept_replays: bool,
}

impl Default for MixnodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            public_address: None,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            authorities: Vec::new(),
            authority_threshold: 1,
            data_dir: PathBuf::from("umbra-data/mixnode"),
            workers: 0,
            max_delay_ms: 10_000,
            worker_queue: 16_384,
            delay_queue: 200_000,
            link_queue: 8_192,
            replay_max_pps: 20_000,
            replay_false_positive_rate: protocol::replay::DEFAULT_FALSE_POSITIVE_RATE,
            topology_refresh_secs: 30,
            dangerous_no_cover: false,
            jumbo_frames: false,
            dangerous_zero_delay: false,
            dangerous_accept_replays: false,
        }
    }
}

/// The `authorities` part of a node's example config, for `init`.
pub fn authorities_example(authorities: &[AuthorityRef]) -> String {
    let mut out = String::from(
        "# The network's directory authorities: the URL and public key of each\n\
         # (`umbra directory key` prints a key). Topologies need signatures from\n\
         # `authority_threshold` of them; fewer are refused.\n",
    );
    for a in authorities {
        out += &format!(
            "[[authorities]]\nurl = \"{}\"\nkey = \"{}\"\n",
            a.url, a.key
        );
    }
    out
}

impl MixnodeConfig {
    /// A commented example, as `umbra mixnode init` writes it.
    pub fn example(authorities: &[AuthorityRef], threshold: usize) -> String {
        let d = Self::default();
        format!(
            r#"# Umbra mix node configuration.
# Every key but the authorities is optional; the values shown are the defaults.

# UDP address of the QUIC endpoint that receives and sends packets.
listen = "{listen}"
# Address published to the directory, if other nodes must dial another one.
# public_address = "203.0.113.7:9000"
# Prometheus metrics at http://<metrics_listen>/metrics
metrics_listen = "{metrics}"
# Signatures a topology needs: k of the authorities listed at the end.
authority_threshold = {threshold}
# The identity key (identity.key, mode 0600). Sphinx keys never touch disk.
data_dir = "{data}"
# Sphinx worker threads; 0 = one per core.
workers = {workers}
# Header delays longer than this (milliseconds) are clamped.
max_delay_ms = {max_delay}
# Bounded queues: packets waiting for a worker, packets being delayed,
# frames per outbound link. When one is full, packets are dropped and counted.
worker_queue = {wq}
delay_queue = {dq}
link_queue = {lq}
# The replay cache is sized for this packet rate over a key's lifetime,
# with this false-positive rate when full.
replay_max_pps = {rp}
replay_false_positive_rate = {fp:e}
# Topology refresh interval, seconds.
topology_refresh_secs = {tr}
# UDP payloads up to 8952 bytes where the path carries jumbo frames
# (data-centre links). Leave off on ordinary internet paths.
jumbo_frames = false
# Evaluation only, never in production: `dangerous_no_cover = true` stops
# the node's loop cover; `dangerous_zero_delay = true` forwards packets
# without their mixing delay. Both weaken everyone's anonymity.
# dangerous_no_cover = false
# dangerous_zero_delay = false

{authorities}"#,
            listen = d.listen,
            metrics = d.metrics_listen,
            data = d.data_dir.display(),
            workers = d.workers,
            max_delay = d.max_delay_ms,
            wq = d.worker_queue,
            dq = d.delay_queue,
            lq = d.link_queue,
            rp = d.replay_max_pps,
            fp = d.replay_false_positive_rate,
            tr = d.topology_refresh_secs,
            authorities = authorities_example(authorities),
        )
    }
}
