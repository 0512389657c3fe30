use net::dirclient::AuthorityRef;
use node::NodeConfig;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Configuration of a gateway (`umbra gateway run --config FILE`): the
/// Sphinx node's settings ([`NodeConfig`]; `listen` is the endpoint for mix
/// node links, `data_dir` also holds the dropboxes) and the gateway's own.
/// One flat TOML table: the node's keys sit beside the gateway's.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    /// The Sphinx node part.
    #[serde(flatten)]
    pub node: NodeConfig,
    /// UDP address of the QUIC endpoint clients connect to.
    pub client_listen: SocketAddr,
    /// Address published for clients; defaults to `client_listen`. A DNS
    /// name (`host:port`) is resolved each time the gateway registers.
    pub public_client_address: Option<net::HostPort>,
    /// Frames per second one client connection may send.
    pub client_rate_pps: f64,
    /// Burst allowance of a client connection, frames.
    pub client_burst: f64,
    /// Clients subscribed at once.
    pub max_clients: usize,
    /// Client connections (and handshakes) from one IP address at once: a
    /// flood from one address cannot take every slot, but users behind one
    /// address (carrier-grade NAT, a campus) share it.
    pub max_clients_per_ip: usize,
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
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            node: NodeConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 9500)),
                metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9700)),
                data_dir: PathBuf::from("umbra-data/gateway"),
                ..NodeConfig::default()
            },
            client_listen: SocketAddr::from(([127, 0, 0, 1], 9600)),
            public_client_address: None,
            client_rate_pps: 200.0,
            client_burst: 400.0,
            max_clients: 10_000,
            max_clients_per_ip: net::link::LinkConfig::default().max_per_ip,
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

node::config_keys!(GatewayConfig {
    ..node,
    client_listen,
    public_client_address,
    client_rate_pps,
    client_burst,
    max_clients,
    max_clients_per_ip,
    client_queue,
    dropbox_ttl_secs,
    dropbox_max_messages,
    storage_max_bytes,
    storage_reserve_bytes,
    fetch_max_age_secs,
    storage_queue,
});

impl GatewayConfig {
    /// What `umbra gateway check` finds: the node's findings and the
    /// gateway's own keys, without starting or creating anything. Returns
    /// the identity, if its key file exists.
    pub fn check(&self, f: &mut net::check::Findings) -> Option<[u8; 32]> {
        let id = self.node.check(f);
        f.distinct(
            ("listen", self.node.listen),
            ("client_listen", self.client_listen),
        );
        f.distinct(
            ("metrics_listen", self.node.metrics_listen),
            ("client_listen", self.client_listen),
        );
        let published = self
            .public_client_address
            .clone()
            .unwrap_or(net::HostPort::Ip(self.client_listen));
        let key = if self.public_client_address.is_some() {
            "public_client_address"
        } else {
            "client_listen"
        };
        node::config::check_published(f, key, &published);
        if !(self.client_burst.is_finite() && self.client_burst >= 1.0) {
            f.problem("client_burst", "must be at least 1");
        }
        for (key, bad) in [
            (
                "client_rate_pps",
                !(self.client_rate_pps.is_finite() && self.client_rate_pps > 0.0),
            ),
            ("max_clients", self.max_clients == 0),
            ("max_clients_per_ip", self.max_clients_per_ip == 0),
            ("client_queue", self.client_queue == 0),
            ("dropbox_ttl_secs", self.dropbox_ttl_secs == 0),
            ("dropbox_max_messages", self.dropbox_max_messages == 0),
            ("storage_max_bytes", self.storage_max_bytes == 0),
            ("fetch_max_age_secs", self.fetch_max_age_secs == 0),
            ("storage_queue", self.storage_queue == 0),
        ] {
            if bad {
                f.problem(key, "must be above zero");
            }
        }
        f.private_file("data_dir", &self.node.data_dir.join("dropboxes.redb"));
        id
    }

    /// A commented example, as `umbra gateway init` writes it.
    pub fn example(authorities: &[AuthorityRef], threshold: usize) -> String {
        let d = Self::default();
        format!(
            r#"# Umbra gateway configuration.
# Every key but the authorities is optional; the values shown are the defaults.

# QUIC endpoint for links with mix nodes.
listen = "{listen}"
# Published addresses, if others must dial other ones: IP addresses or DNS
# names, resolved each time the gateway registers.
# public_address = "203.0.113.7:9500"
# QUIC endpoint clients connect to.
client_listen = "{client_listen}"
# public_client_address = "gw1.example.org:9600"
# Prometheus metrics at http://<metrics_listen>/metrics, with /healthz
# (alive) and /readyz (ready: 200, else 503 naming the failed check).
metrics_listen = "{metrics}"
# Signatures a topology needs: k of the authorities listed at the end.
authority_threshold = {threshold}
# Identity key (identity.key, mode 0600) and dropboxes (dropboxes.redb).
data_dir = "{data}"

# The Sphinx packet path, as for a mix node.
{packet_path}
# Clients: frames per second and burst per connection, how many at once
# (in all, and from one IP address: raise it for users behind one NAT),
# replies queued per client.
client_rate_pps = {crate_:?}
client_burst = {cburst:?}
max_clients = {maxc}
max_clients_per_ip = {maxip}
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

{authorities}"#,
            listen = d.node.listen,
            client_listen = d.client_listen,
            metrics = d.node.metrics_listen,
            data = d.node.data_dir.display(),
            packet_path = d.node.packet_path_example(),
            crate_ = d.client_rate_pps,
            cburst = d.client_burst,
            maxc = d.max_clients,
            maxip = d.max_clients_per_ip,
            cq = d.client_queue,
            ttl = d.dropbox_ttl_secs,
            maxm = d.dropbox_max_messages,
            maxb = d.storage_max_bytes,
            reserve = d.storage_reserve_bytes,
            age = d.fetch_max_age_secs,
            sq = d.storage_queue,
            authorities = node::authorities_example(authorities),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::ConfigKeys;

    /// Every field a file can set is a key, the node's included.
    #[test]
    fn every_field_is_a_key() {
        let any = Some(net::HostPort::parse("gw.example:1").unwrap());
        let mut cfg = GatewayConfig {
            public_client_address: any.clone(),
            ..GatewayConfig::default()
        };
        cfg.node.public_address = any;
        let table = toml::Table::try_from(&cfg).unwrap();
        let mut written: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        let mut read = cfg.keys();
        written.sort_unstable();
        read.sort_unstable();
        assert_eq!(written, read);
    }

    /// The node's keys and the gateway's sit in one flat table; the
    /// gateway's defaults stand where the file says nothing.
    #[test]
    fn one_flat_table() {
        let cfg: GatewayConfig = toml::from_str(
            "listen = \"127.0.0.1:5\"\nclient_listen = \"127.0.0.1:6\"\nworkers = 2\nmax_clients = 7",
        )
        .unwrap();
        assert_eq!(cfg.node.listen.port(), 5);
        assert_eq!(cfg.client_listen.port(), 6);
        assert_eq!(cfg.node.workers, 2);
        assert_eq!(cfg.max_clients, 7);
        let d = GatewayConfig::default();
        assert_eq!(cfg.node.metrics_listen, d.node.metrics_listen);
        assert_eq!(cfg.node.data_dir, d.node.data_dir);
        let e = toml::from_str::<GatewayConfig>("max_client = 7")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `max_client`"), "{e}");
        let example: GatewayConfig = toml::from_str(&GatewayConfig::example(&[], 1)).unwrap();
        assert_eq!(example.node.listen, d.node.listen);
        assert_eq!(example.storage_queue, d.storage_queue);
    }
}
