use crate::http::HttpLimits;
use net::dirclient::AuthorityRef;
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
    /// Every authority of the network, this one included (its URL and key).
    /// Empty: this authority alone (`threshold` must then be 1).
    pub authorities: Vec<AuthorityRef>,
    /// Signatures a topology needs (k of the n authorities). Every
    /// authority, node and client of a network uses the same value.
    pub threshold: usize,
    /// How often the authority fetches the others' votes and signatures,
    /// milliseconds.
    pub vote_interval_ms: u64,
    /// An explicit test network: descriptors may carry loopback and private
    /// addresses. Off in production, where only public unicast addresses
    /// are accepted.
    pub test_network: bool,
    /// The allowlist of admitted node identities; by default
    /// `<data_dir>/admitted.toml`. Edit it with `umbra directory admit` and
    /// `revoke`.
    pub admission_file: Option<PathBuf>,
    /// Limits of the HTTP API (`[http]`).
    pub http: HttpLimits,
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
            authorities: Vec::new(),
            threshold: 1,
            vote_interval_ms: 5_000,
            test_network: false,
            admission_file: None,
            http: HttpLimits::default(),
        }
    }
}

impl DirectoryConfig {
    /// What keeps this config from running, each naming its key: the
    /// authority's own key `me` (if known) must be among `authorities`.
    /// `Directory::open` refuses the first; `umbra directory check` lists all.
    pub fn problems(&self, me: Option<&[u8; 32]>) -> Vec<String> {
        let mut out = Vec::new();
        if self.epoch_length_secs == 0 {
            out.push("key `epoch_length_secs`: must be above zero".to_string());
        }
        let h = &self.http;
        if h.max_connections == 0
            || h.max_connections_per_ip == 0
            || h.request_burst_per_ip < 1.0
            || h.requests_per_sec_per_ip.is_nan()
            || h.requests_per_sec_per_ip <= 0.0
        {
            out.push(
                "key `http`: max_connections, max_connections_per_ip and \
                 requests_per_sec_per_ip must be above zero, request_burst_per_ip at least 1"
                    .to_string(),
            );
        }
        let mut keys = Vec::new();
        for a in &self.authorities {
            match a.key_bytes() {
                Ok(k) if keys.contains(&k) => {
                    out.push(format!("key `authorities`: {} is listed twice", a.key))
                }
                Ok(k) => keys.push(k),
                Err(e) => out.push(format!("key `authorities`: {e}")),
            }
        }
        if let Some(me) = me
            && !keys.is_empty()
            && !keys.contains(me)
        {
            out.push(format!(
                "key `authorities`: this authority's own key {} is not listed",
                hex::encode(me)
            ));
        }
        let n = self.authorities.len().max(1);
        if self.threshold == 0 || self.threshold > n {
            out.push(format!(
                "key `threshold`: {} must be between 1 and the {n} authorities listed",
                self.threshold
            ));
        }
        if let Err(e) = self.params.check() {
            out.push(format!("key `params`: {e}"));
        }
        if self.vote_interval_ms == 0 {
            out.push("key `vote_interval_ms`: must be above zero".to_string());
        }
        out
    }

    /// What `umbra directory check` finds: [`Self::problems`] and
    /// [`Self::warnings`], and what the config names on disk (data
    /// directory, key, store, allowlist), without creating anything.
    /// Returns the authority's key, if its key file exists.
    pub fn check(&self, f: &mut net::check::Findings) -> Option<[u8; 32]> {
        f.private_dir("data_dir", &self.data_dir);
        let me = f.key_file("data_dir", &self.data_dir.join("authority.key"));
        f.problems.extend(self.problems(me.as_ref()));
        f.warnings.extend(self.warnings());
        f.private_file("data_dir", &self.data_dir.join("directory.redb"));
        let admission = self.admission_path();
        if !admission.exists() {
            f.notes.push(format!(
                "{} does not exist yet: no node is admitted (umbra directory admit)",
                admission.display()
            ));
        } else {
            match crate::Admission::load(&admission) {
                Ok(list) => f.notes.push(format!(
                    "{} nodes admitted in {}",
                    list.len(),
                    admission.display()
                )),
                Err(e) => f.problem("admission_file", e),
            }
        }
        me
    }

    /// What runs but is weaker than it should be, each naming its key.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let n = self.authorities.len().max(1);
        if 2 * self.threshold <= n {
            out.push(format!(
                "key `threshold`: {} of {n} is at most half the authorities: two halves could \
                 each publish a different topology",
                self.threshold
            ));
        }
        let p = &self.params;
        let keep_up = (p.lambda_payload + p.lambda_loop) / protocol::cover::DOWNLINK_HEADROOM;
        if p.lambda_downlink < keep_up {
            out.push(format!(
                "key `params.lambda_downlink`: {} is below (lambda_payload + lambda_loop) / 0.8 \
                 = {keep_up}: a client uploading at full speed gets its acks late or loses them",
                p.lambda_downlink
            ));
        }
        if self.test_network {
            out.push(
                "key `test_network`: nodes may register loopback and private addresses; \
                 never on a public network"
                    .to_string(),
            );
        }
        out
    }

    /// Where the allowlist lives.
    pub fn admission_path(&self) -> PathBuf {
        self.admission_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admitted.toml"))
    }

    /// A commented example, as `umbra directory init` writes it.
    pub fn example() -> String {
        let d = Self::default();
        format!(
            r#"# Umbra directory authority configuration.
# Every key is optional; the values shown are the defaults.

# HTTP address of the API (descriptors in, signed topologies out, /metrics,
# /healthz, and /readyz: 200 once it serves a topology for the current epoch).
listen = "{listen}"
# Authority key (authority.key, mode 0600) and descriptor store (directory.redb).
data_dir = "{data_dir}"
# Epoch length in seconds: nodes rotate Sphinx keys every epoch.
epoch_length_secs = {epoch}
# Start of epoch 0, Unix milliseconds.
genesis_unix_ms = {genesis}
# Most nodes the authority keeps descriptors for.
max_nodes = {max_nodes}
# Signatures a topology needs: k of the n authorities listed below. Every
# authority, node and client of the network uses the same k.
threshold = {threshold}
# How often to fetch the other authorities' votes and signatures (ms).
vote_interval_ms = {vote_interval}
# Only nodes on this allowlist are admitted; edit it with
# `umbra directory admit KEY --role mix|gateway` and `umbra directory revoke KEY`.
# admission_file = "{data_dir}/admitted.toml"
# A test network accepts loopback and private node addresses; production
# authorities accept public unicast addresses only.
test_network = false

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
# Rate of the constant downlink each gateway sends its clients, Deliver
# frames/s (dummies when nothing is queued).
lambda_downlink = {ld:?}

# Limits of the HTTP API. A source is an IPv4 address or an IPv6 /64;
# refusals are counted in umbra_directory_http_refused_total{{reason}}.
[http]
# Open connections in total, and from one source.
max_connections = {maxc}
max_connections_per_ip = {maxip}
# Requests per second from one source on average, and in a burst.
requests_per_sec_per_ip = {rps:?}
request_burst_per_ip = {burst:?}
# Time to send a request's head; time for a whole request; longest life
# of a connection (milliseconds).
header_timeout_ms = {hto}
request_timeout_ms = {rto}
connection_lifetime_ms = {life}

# Every authority of the network, this one included, with its public key
# (`umbra directory key`). Leave empty for a network of one authority.
# [[authorities]]
# url = "http://198.51.100.4:8000"
# key = "<64 hex digits>"
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
            ld = d.params.lambda_downlink,
            threshold = d.threshold,
            vote_interval = d.vote_interval_ms,
            maxc = d.http.max_connections,
            maxip = d.http.max_connections_per_ip,
            rps = d.http.requests_per_sec_per_ip,
            burst = d.http.request_burst_per_ip,
            hto = d.http.header_timeout_ms,
            rto = d.http.request_timeout_ms,
            life = d.http.connection_lifetime_ms,
        )
    }
}
