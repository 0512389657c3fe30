//! The settings every Sphinx node has ([`NodeConfig`]), and the key-by-key
//! reading ([`ConfigKeys`], [`config_keys!`](crate::config_keys)) that lets a
//! role's config embed them and still read as one flat TOML table that
//! rejects unknown keys.

use net::dirclient::AuthorityRef;
use serde::Serialize;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Configuration of a Sphinx node: what a mix node's config file holds, and
/// the part of a gateway's it shares with a mix node (same keys, at the top
/// level of the file).
#[derive(Debug, Clone, Serialize)]
pub struct NodeConfig {
    /// UDP address the QUIC endpoint for node links binds.
    pub listen: SocketAddr,
    /// Address published in the descriptor; defaults to `listen`. A DNS
    /// name (`host:port`) is resolved each time the node registers, and
    /// the descriptor carries the address it resolved to.
    pub public_address: Option<net::HostPort>,
    /// HTTP address of the Prometheus endpoint.
    pub metrics_listen: SocketAddr,
    /// The network's directory authorities (URL and public key of each).
    pub authorities: Vec<AuthorityRef>,
    /// Signatures of `authorities` a topology needs (k of n); fewer are refused.
    pub authority_threshold: usize,
    /// The identity key file lives here (Sphinx keys stay in memory), and a
    /// role's own files (a gateway's dropboxes).
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

impl Default for NodeConfig {
    /// A mix node's defaults (a gateway changes its addresses and `data_dir`).
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

// `dangerous_accept_replays` is not a key: it cannot be set from a file.
crate::config_keys!(NodeConfig {
    listen,
    public_address,
    metrics_listen,
    authorities,
    authority_threshold,
    data_dir,
    workers,
    max_delay_ms,
    worker_queue,
    delay_queue,
    link_queue,
    replay_max_pps,
    replay_false_positive_rate,
    topology_refresh_secs,
    jumbo_frames,
    dangerous_no_cover,
    dangerous_zero_delay,
});

impl NodeConfig {
    /// What `umbra <role> check` finds in the node's keys, without
    /// starting, binding or creating anything (a `public_address` name is
    /// looked up). Returns the identity, if its key file exists.
    pub fn check(&self, f: &mut net::check::Findings) -> Option<[u8; 32]> {
        if let Err(e) =
            net::dirclient::Authorities::new(&self.authorities, self.authority_threshold)
        {
            let key = if e.contains("threshold") {
                "authority_threshold"
            } else {
                "authorities"
            };
            f.problem(key, e);
        }
        f.distinct(
            ("listen", self.listen),
            ("metrics_listen", self.metrics_listen),
        );
        for (key, zero) in [
            ("worker_queue", self.worker_queue == 0),
            ("delay_queue", self.delay_queue == 0),
            ("link_queue", self.link_queue == 0),
            ("replay_max_pps", self.replay_max_pps == 0),
            ("topology_refresh_secs", self.topology_refresh_secs == 0),
        ] {
            if zero {
                f.problem(key, "must be above zero");
            }
        }
        let fp = self.replay_false_positive_rate;
        if !(fp > 0.0 && fp < 0.01) {
            f.problem(
                "replay_false_positive_rate",
                format!("{fp} must be above 0 and below 0.01"),
            );
        }
        if self.dangerous_no_cover {
            f.warn(
                "dangerous_no_cover",
                "DANGEROUS: the node sends no loop cover and cannot notice packets being held or dropped",
            );
        }
        if self.dangerous_zero_delay {
            f.warn(
                "dangerous_zero_delay",
                "DANGEROUS: packets are forwarded without their mixing delay (no mixing)",
            );
        }
        let (key, published) = match &self.public_address {
            Some(a) => ("public_address", a.clone()),
            None => ("listen", net::HostPort::Ip(self.listen)),
        };
        check_published(f, key, &published);
        f.private_dir("data_dir", &self.data_dir);
        f.key_file("data_dir", &self.data_dir.join("identity.key"))
    }

    /// The packet-path part of a role's example config (`umbra <role> init`):
    /// workers, delays, queues, replay cache, refresh, jumbo frames and the
    /// dangerous knobs, with `self`'s values.
    pub fn packet_path_example(&self) -> String {
        format!(
            r#"# Sphinx worker threads; 0 = one per core.
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
jumbo_frames = {jumbo}
# Evaluation only, never in production: `dangerous_no_cover = true` stops
# the node's loop cover; `dangerous_zero_delay = true` forwards packets
# without their mixing delay. Both weaken everyone's anonymity.
# dangerous_no_cover = false
# dangerous_zero_delay = false
"#,
            workers = self.workers,
            max_delay = self.max_delay_ms,
            wq = self.worker_queue,
            dq = self.delay_queue,
            lq = self.link_queue,
            rp = self.replay_max_pps,
            fp = self.replay_false_positive_rate,
            tr = self.topology_refresh_secs,
            jumbo = self.jumbo_frames,
        )
    }
}

/// A published address: a name must resolve now; an address a production
/// directory refuses (loopback, private, unspecified) is a warning, as a
/// test network accepts it.
pub fn check_published(f: &mut net::check::Findings, key: &str, a: &net::HostPort) {
    use std::net::ToSocketAddrs;
    let ips: Vec<std::net::IpAddr> = match a {
        net::HostPort::Ip(s) => vec![s.ip()],
        net::HostPort::Name(host, port) => match (host.as_str(), *port).to_socket_addrs() {
            Ok(it) => it.map(|s| s.ip()).collect(),
            Err(e) => {
                f.problem(key, format!("{a} does not resolve: {e}"));
                return;
            }
        },
    };
    if !ips
        .iter()
        .any(|ip| protocol::topology::is_public_unicast(*ip))
    {
        f.warn(
            key,
            format!(
                "{a} is not a public address: only a directory with test_network = true \
                 accepts it{}",
                if key == "listen" {
                    " (set public_address)"
                } else {
                    ""
                }
            ),
        );
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

/// A config struct read key by key from one flat table: each key's value
/// replaces the default's, and a key no part of the struct has is refused
/// (naming it; TOML errors also point at its line). A role's config embeds
/// [`NodeConfig`] and lists it as a nested part ([`config_keys!`](crate::config_keys)),
/// so the shared keys are written once and the file stays flat: serde's
/// `flatten` cannot be combined with refusing unknown keys.
pub trait ConfigKeys: Default {
    /// Every key, nested parts' included, for the unknown-key error.
    fn keys(&self) -> Vec<&'static str>;

    /// Reads the value of `key` from `map` into `self`; `Ok(false)` if
    /// `key` is not one of this struct's (the value is then not read).
    fn read_key<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<bool, A::Error>;
}

/// Implements [`ConfigKeys`] and `Deserialize` for a struct: its own keys,
/// and before them (`..field`) nested parts that implement [`ConfigKeys`]
/// themselves, whose keys sit in the same table.
///
/// ```ignore
/// node::config_keys!(GatewayConfig { ..node, client_listen, max_clients });
/// ```
#[macro_export]
macro_rules! config_keys {
    ($ty:ty { $(..$nested:ident,)* $($key:ident),* $(,)? }) => {
        impl $crate::config::ConfigKeys for $ty {
            fn keys(&self) -> ::std::vec::Vec<&'static str> {
                #[allow(unused_mut)]
                let mut keys = ::std::vec::Vec::new();
                $(keys.extend($crate::config::ConfigKeys::keys(&self.$nested));)*
                keys.extend([$(stringify!($key)),*]);
                keys
            }

            fn read_key<'de, A: $crate::config::__serde::de::MapAccess<'de>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> ::std::result::Result<bool, A::Error> {
                $(if $crate::config::ConfigKeys::read_key(&mut self.$nested, key, map)? {
                    return Ok(true);
                })*
                match key {
                    $(stringify!($key) => {
                        self.$key = map.next_value()?;
                        Ok(true)
                    })*
                    _ => Ok(false),
                }
            }
        }

        impl<'de> $crate::config::__serde::Deserialize<'de> for $ty {
            fn deserialize<D: $crate::config::__serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                $crate::config::deserialize_keys(d)
            }
        }
    };
}

#[doc(hidden)]
pub use serde as __serde;

/// Reads a [`ConfigKeys`] struct from a map, starting from its default.
pub fn deserialize_keys<'de, D: Deserializer<'de>, T: ConfigKeys>(d: D) -> Result<T, D::Error> {
    d.deserialize_map(KeysVisitor(PhantomData))
}

struct KeysVisitor<T>(PhantomData<T>);

impl<'de, T: ConfigKeys> Visitor<'de> for KeysVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of config keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut out = T::default();
        let keys = out.keys();
        while let Some(key) = map.next_key_seed(KnownKey(&keys))? {
            if !out.read_key(&key, &mut map)? {
                // Unreachable: KnownKey let only known keys through.
                return Err(serde::de::Error::custom(format!("unknown field `{key}`")));
            }
        }
        Ok(out)
    }
}

/// A key, refused (while the deserializer still knows where it is, so that
/// the error points at it) unless it is one of `keys`.
struct KnownKey<'k>(&'k [&'static str]);

impl<'de> DeserializeSeed<'de> for KnownKey<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KnownKey<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a config key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        if self.0.contains(&v) {
            return Ok(v.to_owned());
        }
        let expected = self
            .0
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(E::custom(format_args!(
            "unknown field `{v}`, expected one of {expected}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field a file can set is a key (a field left out of
    /// `config_keys!` would be silently unreadable), and the defaults load.
    #[test]
    fn every_field_is_a_key() {
        let cfg = NodeConfig {
            public_address: Some(net::HostPort::parse("mix.example:1").unwrap()),
            ..NodeConfig::default()
        };
        let table = toml::Table::try_from(&cfg).unwrap();
        let mut written: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        let mut read = cfg.keys();
        written.sort_unstable();
        read.sort_unstable();
        assert_eq!(written, read);
        let back: NodeConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back.public_address, cfg.public_address);
    }

    #[test]
    fn keys_override_defaults_and_unknown_keys_are_refused() {
        let cfg: NodeConfig = toml::from_str("workers = 3\nlisten = \"127.0.0.1:7\"").unwrap();
        assert_eq!(cfg.workers, 3);
        assert_eq!(cfg.listen.port(), 7);
        assert_eq!(cfg.link_queue, NodeConfig::default().link_queue);
        let e = toml::from_str::<NodeConfig>("workers = 1\nlistn = \"127.0.0.1:7\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `listn`") && e.contains("line 2"),
            "{e}"
        );
        let e = toml::from_str::<NodeConfig>("workers = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers") && e.contains("invalid type"), "{e}");
        let e = toml::from_str::<NodeConfig>("dangerous_accept_replays = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
