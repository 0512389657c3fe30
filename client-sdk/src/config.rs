//! The client's settings: built with [`ClientConfig::builder`] (or
//! [`ClientConfig::new`] for a network of one authority), adjusted field by
//! field, and checked when the client starts.

use crate::Error;
use net::dirclient::{Authorities, AuthorityRef};
use protocol::NodeId;
use std::time::Duration;

/// Settings of a client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The network's directory authorities (URL and public key of each).
    pub authorities: Vec<AuthorityRef>,
    /// Signatures of `authorities` a topology needs (k of n); fewer are refused.
    pub authority_threshold: usize,
    /// The entry gateway to use; `None` picks one at random.
    pub entry_gateway: Option<NodeId>,
    /// After the entry gateway has been unreachable this long, or missing
    /// from the topology this long while it still answers (revoked, or no
    /// longer registering), move to another (at random); zero never moves.
    /// Dropboxes do not move with it: they live on the gateways their ids
    /// pick.
    pub entry_failover: Duration,
    /// The local IP address the connection to the gateway binds; `None`
    /// lets the system choose. (A gateway takes a bounded number of
    /// connections from one address: a benchmark hosting many clients on
    /// one machine gives them loopback addresses of their own.)
    pub bind_ip: Option<std::net::IpAddr>,
    /// How often to fetch every dropbox.
    pub fetch_interval: Duration,
    /// How often to refresh the topology.
    pub topology_refresh: Duration,
    /// Messages buffered for the application.
    pub inbox_capacity: usize,
    /// On connecting (and for a newly added contact), fetch the boxes of this
    /// many past periods (hours), to collect what arrived while offline.
    pub catch_up_periods: u64,
    /// Transmissions of one fragment before its message is reported failed.
    pub max_attempts: u32,
    /// A message not stored within this time is reported failed.
    pub message_ttl: Duration,
    /// Bytes of messages not yet stored the client holds; beyond it `send` says `Busy`.
    pub max_outbox_bytes: usize,
    /// Time allowed beyond a route's sampled delays for a SURB-ack (links,
    /// the gateway's commit) before the fragment is sent again.
    pub ack_slack: Duration,
    /// Send large messages in batches (one ask acknowledges up to 32
    /// fragments that carry no SURB: about a quarter fewer packets;
    /// protocol.md §13.3). Off: every fragment carries its own SURB-ack,
    /// as before batches existed (for comparisons).
    pub batch_acks: bool,
    /// A message after a gap in a contact's stream waits this long for the
    /// gap to fill before it is handed over anyway.
    pub reorder_hold: Duration,
    /// A contact's stream met past its start (its first message is late,
    /// or this client restarted without its store) is collected this long
    /// before its lowest message is handed over. As long as
    /// `reorder_hold`: starting without a late first message loses it
    /// once the conversation has taken five Olm ratchet steps.
    pub reorder_settle: Duration,
    /// Bytes of partly received messages held per contact.
    pub max_reassembly_bytes: usize,
    /// Cost of deriving the store's key from the passphrase (Argon2id) when
    /// a store is created ([`crate::Client::open`]); an existing store keeps
    /// the cost it was made with.
    pub store_kdf: crate::store::KdfParams,
    /// How often a client with a store writes what changed, at the latest.
    /// (It writes at once when it must: before a message is handed to the
    /// application, before `send` returns, and before a fetch confirms what
    /// it received.)
    pub persist_interval: Duration,
    pub(crate) dangerous: Dangerous,
}

/// Settings that weaken anonymity, for evaluations and tests only: reached
/// through [`ClientConfig::dangerous`] so that no one sets them by accident.
#[derive(Debug, Clone, Default)]
pub struct Dangerous {
    pub(crate) no_cover: bool,
    pub(crate) clock_offset_ms: i64,
}

impl Dangerous {
    /// DANGEROUS, evaluation and tests only: send every packet at once with
    /// no cover traffic. An observer then sees exactly when you are active.
    pub fn set_no_cover(&mut self, on: bool) -> &mut Self {
        self.no_cover = on;
        self
    }

    /// Whether cover traffic is off.
    pub fn no_cover(&self) -> bool {
        self.no_cover
    }

    /// DANGEROUS, tests only: the client reads its wall clock this many
    /// milliseconds off (positive: ahead), as a device with a wrong clock
    /// would. The client then corrects it by the directory's clock (and
    /// warns); a test uses this to show that it does.
    pub fn set_clock_offset_ms(&mut self, ms: i64) -> &mut Self {
        self.clock_offset_ms = ms;
        self
    }

    /// The injected clock offset, ms.
    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms
    }
}

impl ClientConfig {
    /// A config for a network of one directory authority at `directory_url`
    /// whose key is `authority_hex`.
    pub fn new(directory_url: &str, authority_hex: &str) -> Result<Self, Error> {
        Self::with_authorities(
            vec![AuthorityRef {
                url: directory_url.to_string(),
                key: authority_hex.trim().to_string(),
            }],
            1,
        )
    }

    /// A config for a network of several authorities, of which `threshold`
    /// must sign a topology.
    pub fn with_authorities(
        authorities: Vec<AuthorityRef>,
        threshold: usize,
    ) -> Result<Self, Error> {
        Self::builder(authorities, threshold).build()
    }

    /// A builder for a network with these authorities and threshold.
    pub fn builder(authorities: Vec<AuthorityRef>, threshold: usize) -> ClientConfigBuilder {
        ClientConfigBuilder {
            cfg: Self {
                authorities,
                authority_threshold: threshold,
                entry_gateway: None,
                entry_failover: Duration::from_secs(30),
                bind_ip: None,
                fetch_interval: Duration::from_secs(5),
                topology_refresh: Duration::from_secs(60),
                inbox_capacity: 1024,
                catch_up_periods: 24,
                max_attempts: 8,
                message_ttl: Duration::from_secs(3600),
                max_outbox_bytes: 64 * 1024 * 1024,
                ack_slack: Duration::from_secs(3),
                batch_acks: true,
                reorder_hold: Duration::from_secs(60),
                reorder_settle: Duration::from_secs(60),
                max_reassembly_bytes: 48 * 1024 * 1024,
                store_kdf: crate::store::KdfParams::default(),
                persist_interval: Duration::from_secs(1),
                dangerous: Dangerous::default(),
            },
        }
    }

    /// Settings that weaken anonymity (evaluations and tests only).
    pub fn dangerous(&mut self) -> &mut Dangerous {
        &mut self.dangerous
    }

    /// Whether the settings can work: the authorities and threshold, and
    /// intervals and capacities above zero.
    pub fn check(&self) -> Result<(), Error> {
        Authorities::new(&self.authorities, self.authority_threshold).map_err(|reason| {
            Error::Config(format!("authorities/authority_threshold: {reason}"))
        })?;
        for (name, zero) in [
            ("fetch_interval", self.fetch_interval.is_zero()),
            ("topology_refresh", self.topology_refresh.is_zero()),
            ("message_ttl", self.message_ttl.is_zero()),
            // Zero would make the driver try a write on every pass, never sleeping.
            ("persist_interval", self.persist_interval.is_zero()),
            ("inbox_capacity", self.inbox_capacity == 0),
            ("max_attempts", self.max_attempts == 0),
        ] {
            if zero {
                return Err(Error::Config(format!("{name} must be above zero")));
            }
        }
        Ok(())
    }
}

/// Builds a [`ClientConfig`]; every setting has a default.
#[derive(Debug, Clone)]
pub struct ClientConfigBuilder {
    cfg: ClientConfig,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.cfg.$name = v;
            self
        }
    };
}

impl ClientConfigBuilder {
    setter!(
        /// Send large messages in batches (default true).
        batch_acks: bool
    );
    setter!(
        /// The entry gateway to use (default: one at random).
        entry_gateway: Option<NodeId>
    );
    setter!(
        /// After the entry gateway has been unreachable this long, move to
        /// another (default 30 s; zero never moves).
        entry_failover: Duration
    );
    setter!(
        /// The local IP address to bind (default: the system's choice).
        bind_ip: Option<std::net::IpAddr>
    );
    setter!(
        /// How often to fetch every dropbox (default 5 s).
        fetch_interval: Duration
    );
    setter!(
        /// How often to refresh the topology (default 60 s).
        topology_refresh: Duration
    );
    setter!(
        /// Messages buffered for the application (default 1024).
        inbox_capacity: usize
    );
    setter!(
        /// Past periods (hours) fetched on connecting (default 24).
        catch_up_periods: u64
    );
    setter!(
        /// Transmissions of one fragment before failure (default 8).
        max_attempts: u32
    );
    setter!(
        /// Time to live of an unstored message (default 1 h).
        message_ttl: Duration
    );
    setter!(
        /// Bytes of unstored messages held (default 64 MiB).
        max_outbox_bytes: usize
    );

    /// The config, checked.
    pub fn build(self) -> Result<ClientConfig, Error> {
        self.cfg.check()?;
        Ok(self.cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_intervals_and_capacities_are_refused_by_name() {
        let ok = ClientConfig::new("http://127.0.0.1:1", &hex::encode([1u8; 32])).unwrap();
        assert!(ok.check().is_ok());
        type Case = (&'static str, fn(&mut ClientConfig));
        let cases: [Case; 6] = [
            ("fetch_interval", |c| c.fetch_interval = Duration::ZERO),
            ("topology_refresh", |c| c.topology_refresh = Duration::ZERO),
            ("message_ttl", |c| c.message_ttl = Duration::ZERO),
            ("persist_interval", |c| c.persist_interval = Duration::ZERO),
            ("inbox_capacity", |c| c.inbox_capacity = 0),
            ("max_attempts", |c| c.max_attempts = 0),
        ];
        for (name, set) in cases {
            let mut c = ok.clone();
            set(&mut c);
            let err = c.check().unwrap_err();
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }
}
