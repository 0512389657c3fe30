use mixnode::MixnodeConfig;
use net::dirclient::AuthorityRef;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Configuration of a gateway (`umbra gateway run --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// UDP address of the QUIC endpoint for mix node links.
    pub listen: SocketAddr,
    /// Address published for mix nodes; defaults to `listen`.
    pub public_address: Option<SocketAddr>,
    /// UDP address of the QUIC endpoint clients connect to.
    pub client_listen: SocketAddr,
    /// Address published for clients; defaults to `client_listen`.
    pub public_client_address: Option<SocketAddr>,
    /// HTTP address of the Prometheus endpoint.
    pub metrics_listen: SocketAddr,
    /// The network's directory authorities (URL and public key of each).
    pub authorities: Vec<AuthorityRef>,
    /// Signatures of `authorities` a topology needs (k of n).
    pub authority_threshold: usize,
    /// Identity key and the dropbox database live here.
    pub data_dir: PathBuf,
    /// Sphinx worker threads; 0 means one per core.
    pub workers: usize,
    /// Longest delay honoured per packet, milliseconds.
    pub max_delay_ms: u64,
    /// Packets waiting for a Sphinx worker.
    pub worker_queue: usize,
    /// Packets held for their delay.
    pub delay_queue: usize,
    /// Frames queued per outbound link.
    pub link_queue: usize,
    /// Packet rate the replay cache is sized for.
    pub replay_max_pps: u64,
    /// Replay cache false-positive rate when full.
    pub replay_false_positive_rate: f64,
    /// Topology refresh interval, seconds.
    pub topology_refresh_secs: u64,
    /// Frames per second one client connection may send.
    pub client_rate_pps: f64,
    /// Burst allowance of a client connection, frames.
    pub client_burst: f64,
    /// Clients subscribed at once.
    pub max_clients: usize,
    /// Replies queued per client before new ones are dropped.
    pub client_queue: usize,
    /// Unfetched messages are deleted after this many seconds.
    pub dropbox_ttl_secs: u64,
    /// Messages one dropbox may hold.
    pub dropbox_max_messages: u64,
    /// Bytes all dropboxes together may hold (each message charged its
    /// ciphertext and 160 bytes of bookkeeping).
    pub storage_max_bytes: u64,
    /// Stores are refused once the free space of the disk holding the
    /// database would fall below this many bytes (deletes need room too).
    pub storage_reserve_bytes: u64,
    /// Fetch requests older (or newer) than this many seconds are refused.
    pub fetch_max_age_secs: u64,
    /// Requests waiting for the storage thread.
    pub storage_queue: usize,
    /// Let links use UDP payloads up to 8952 bytes where the path carries
    /// them (data-centre links with jumbo frames). Off by default: on lossy
    /// paths large datagrams cost more than they save.
    pub jumbo_frames: bool,
    /// DANGEROUS, evaluation only: send no loop cover. Logs a warning.
    pub dangerous_no_cover: bool,
    /// DANGEROUS, evaluation only: ignore header delays. Logs a warning.
    pub dangerous_zero_delay: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let m = MixnodeConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9500)),
            public_address: None,
            client_listen: SocketAddr::from(([127, 0, 0, 1], 9600)),
            public_client_address: None,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9700)),
            authorities: Vec::new(),
            authority_threshold: 1,
            data_dir: PathBuf::from("umbra-data/gateway"),
            workers: m.workers,
            max_delay_ms: m.max_delay_ms,
            worker_queue: m.worker_queue,
            delay_queue: m.delay_queue,
            link_queue: m.link_queue,
            replay_max_pps: m.replay_max_pps,
            replay_false_positive_rate: m.replay_false_positive_rate,
            topology_refresh_secs: m.topology_refresh_secs,
            dangerous_no_cover: false,
            jumbo_frames: false,
            dangerous_zero_delay: false,
            client_rate_pps: 200.0,
            client_burst: 400.0,
            max_clients: 10_000,
            client_queue: 64,
            dropbox_ttl_secs: 7 * 24 * 3600,
            dropbox_max_messages: 10_000,
            storage_max_bytes: 1 << 30,
            storage_reserve_bytes: 256 << 20,
            fetch_max_age_secs: 600,
            storage_queue: 16_384,
        }
    }
}

impl GatewayConfig {
    /// The Sphinx node part of the configuration.
    pub fn node(&self) -> MixnodeConfig {
        MixnodeConfig {
            listen: self.listen,
            public_address: self.public_address,
            metrics_listen: self.metrics_listen,
            authorities: self.authorities.clone(),
            authority_threshold: self.authority_threshold,
            data_dir: self.data_dir.clone(),
            workers: self.workers,
            max_delay_ms: self.max_delay_ms,
            worker_queue: self.worker_queue,
            delay_queue: self.delay_queue,
            link_queue: self.link_queue,
            replay_max_pps: self.replay_max_pps,
            replay_false_positive_rate: self.replay_false_positive_rate,
            topology_refresh_secs: self.topology_refresh_secs,
            dangerous_no_cover: self.dangerous_no_cover,
            dangerous_zero_delay: self.dangerous_zero_delay,
            jumbo_frames: self.jumbo_frames,
            dangerous_accept_replays: false,
        }
    }

    /// A commented example, as `umbra gateway init` writes it.
    pub fn example(authorities: &[AuthorityRef], threshold: usize) -> String {
        let d = Self::default();
        format!(
            r#"# Umbra gateway configuration.
# Every key but the authorities is optional; the values shown are the defaults.

# QUIC endpoint for links with mix nodes.
listen = "{listen}"
# public_address = "203.0.113.7:9500"
# QUIC endpoint clients connect to.
client_listen = "{client_listen}"
# public_client_address = "203.0.113.7:9600"
# Prometheus metrics at http://<metrics_listen>/metrics
metrics_listen = "{metrics}"
# Signatures a topology needs: k of the authorities listed at the end.
authority_threshold = {threshold}
# Identity key (identity.key, mode 0600) and dropboxes (dropboxes.redb).
data_dir = "{data}"

# Sphinx packet path, as for a mix node.
workers = {workers}
max_delay_ms = {max_delay}
worker_queue = {wq}
delay_queue = {dq}
link_queue = {lq}
replay_max_pps = {rp}
replay_false_positive_rate = {fp:e}
topology_refresh_secs = {tr}

# Clients: frames per second and burst per connection, how many at once,
# replies queued per client.
client_rate_pps = {crate_:?}
client_burst = {cburst:?}
max_clients = {maxc}
client_queue = {cq}

# Dropboxes: unfetched messages expire after dropbox_ttl_secs; quotas per
# box (messages) and for the whole gateway (bytes, each message charged 160
# bytes beyond its ciphertext); stores stop while the disk has less than
# storage_reserve_bytes free. Fetch requests older or
# newer than fetch_max_age_secs are refused (nothing read or deleted; the
# client is told, and can tell it from an empty box).
dropbox_ttl_secs = {ttl}
dropbox_max_messages = {maxm}
storage_max_bytes = {maxb}
storage_reserve_bytes = {reserve}
fetch_max_age_secs = {age}
storage_queue = {sq}

# UDP payloads up to 8952 bytes where the path carries jumbo frames
# (data-centre links). Leave off on ordinary internet paths.
jumbo_frames = false

# Evaluation only, never in production: no loop cover, and no mixing delay.
# dangerous_no_cover = false
# dangerous_zero_delay = false

{authorities}"#,
            listen = d.listen,
            client_listen = d.client_listen,
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
            crate_ = d.client_rate_pps,
            cburst = d.client_burst,
            maxc = d.max_clients,
            cq = d.client_queue,
            ttl = d.dropbox_ttl_secs,
            maxm = d.dropbox_max_messages,
            maxb = d.storage_max_bytes,
            reserve = d.storage_reserve_bytes,
            age = d.fetch_max_age_secs,
            sq = d.storage_queue,
            authorities = mixnode::authorities_example(authorities),
        )
    }
}
