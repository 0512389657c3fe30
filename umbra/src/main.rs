//! `umbra`: one binary for every role.

use clap::{Args, Parser, Subcommand};
use directory::DirectoryConfig;
use mixnode::MixnodeConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use umbra::config;

// mimalloc: per-thread heaps and no trimming of large blocks back to the OS,
// which on glibc caused TLB-shootdown interrupts across the packet path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `umbra --version`: the release, the commit it was built from
/// (`-modified` if the tree had uncommitted changes) and the build date.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("UMBRA_COMMIT"),
    ", built ",
    env!("UMBRA_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "umbra",
    version = VERSION,
    about = "Umbra: a mix network for metadata-private messaging"
)]
struct Cli {
    /// Log format on stderr: `text` (colours only on a terminal) or `json`
    /// (one object per line). RUST_LOG sets the level (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a directory authority: accepts signed node descriptors and publishes
    /// the signed topology of each epoch over HTTP.
    #[command(subcommand)]
    Directory(DirectoryCmd),
    /// Run a mix node: receives Sphinx packets over QUIC, peels one layer, drops
    /// replays, holds each packet for its delay and forwards it.
    #[command(subcommand)]
    Mixnode(MixnodeCmd),
    /// Run a gateway: clients' entry into the mixnet, the final hop that keeps
    /// dropboxes in an embedded store, and the answerer of anonymous fetches.
    #[command(subcommand)]
    Gateway(GatewayCmd),
    /// Start a whole network on loopback in this process and have two clients,
    /// Alice and Bob, exchange messages through it. Exits 0 only if every
    /// message arrived exactly once and intact or was reported failed to its
    /// sender: none lost silently, none duplicated or corrupted.
    Demo {
        /// Messages to send in all (alternating directions).
        #[arg(long, default_value_t = 20)]
        messages: usize,
        /// Mean per-hop mixing delay, milliseconds.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// DANGEROUS, evaluation only: drop this fraction of the datagrams on
        /// every link of the demo network, each independently (QUIC
        /// retransmits them).
        #[arg(long, default_value_t = 0.0)]
        link_loss: f64,
        /// DANGEROUS, evaluation only: drop datagrams in bursts on every link
        /// (a Gilbert–Elliott channel per link: a good and a bad state, each
        /// with its own loss rate). The defaults lose 10 % on average, in bad
        /// spells of 4 datagrams that lose them all; tune them with the
        /// --burst-* options.
        #[arg(long)]
        burst_loss: bool,
        /// With --burst-loss: chance per datagram that a good link turns bad
        /// (default 0.025).
        #[arg(long, requires = "burst_loss")]
        burst_good_to_bad: Option<f64>,
        /// With --burst-loss: chance per datagram that a bad link turns good
        /// (default 0.25).
        #[arg(long, requires = "burst_loss")]
        burst_bad_to_good: Option<f64>,
        /// With --burst-loss: loss rate in the good state (default 0.01).
        #[arg(long, requires = "burst_loss")]
        burst_loss_good: Option<f64>,
        /// With --burst-loss: loss rate in the bad state (default 1).
        #[arg(long, requires = "burst_loss")]
        burst_loss_bad: Option<f64>,
        /// DANGEROUS, evaluation only: cut the link between the first mix
        /// node of layer 1 and the first of layer 2 (every datagram, both
        /// ways) for this many seconds from the first send.
        #[arg(long)]
        partition_secs: Option<f64>,
        /// Size of each message in bytes (up to 8 MiB, sent in fragments);
        /// by default short text messages.
        #[arg(long)]
        message_size: Option<usize>,
        /// Send every fragment with its own SURB-ack, as before batch
        /// acknowledgements (protocol.md §13.3): for comparisons.
        #[arg(long)]
        no_batch_acks: bool,
        /// Client payload rate λ_P, packets/s (network default: 5).
        #[arg(long, default_value_t = 50.0)]
        lambda_p: f64,
        /// Directory authorities.
        #[arg(long, default_value_t = 1)]
        authorities: usize,
        /// Signatures of the authorities a topology needs (k of n).
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// Stop this many authorities once the network runs, before the
        /// clients start (the others must still serve a valid topology).
        #[arg(long, default_value_t = 0)]
        authorities_down: usize,
        /// N members in one group instead of Alice and Bob: the first
        /// creates it and invites the others; each sends its share of
        /// --messages into the group. Exits 0 only if every message reached
        /// every other member exactly once, intact. With --json the last
        /// line is {"members","sent","expected","delivered","missing",
        /// "duplicates","corrupted","join_s","p50_ms","p99_ms","seconds"}.
        #[arg(long, value_name = "N",
              conflicts_with_all = ["authority_keys", "partition_secs", "link_loss", "burst_loss", "authorities_down"])]
        group: Option<usize>,
        /// Epoch length of the demo network, seconds (production: 3600).
        /// Shorter epochs rotate the Sphinx keys during the run: the sends
        /// are then spread over 3.5 epochs, crossing at least 3 boundaries.
        #[arg(long, default_value_t = 3600)]
        epoch_secs: u64,
        /// End with one JSON line: {"sent","delivered","failed","lost",
        /// "failed_but_delivered","duplicates","corrupted","p50_ms","p99_ms",
        /// "seconds","ended","injector","boundaries","fragments"}.
        #[arg(long)]
        json: bool,
        /// Talk through a network already running instead of starting one:
        /// a directory authority's public key, as `umbra directory key`
        /// prints it (repeat per authority; --directory-url in the same
        /// order; --threshold of them must sign). The network's own rates
        /// and delays apply; --messages, --message-size and --json too.
        #[arg(long = "authority-key", requires = "directory_urls",
              conflicts_with_all = ["link_loss", "burst_loss", "partition_secs",
                                    "authorities_down", "lambda_p", "delay_ms"])]
        authority_keys: Vec<String>,
        /// With --authority-key: each authority's base URL.
        #[arg(long = "directory-url", requires = "authority_keys")]
        directory_urls: Vec<String>,
    },
    /// Start the demo's network (directory, 2 mix nodes per layer, 2 gateways)
    /// and keep it running until Ctrl-C, printing how to point clients at it.
    Testnet {
        /// Mix nodes per layer.
        #[arg(long, default_value_t = 2)]
        per_layer: usize,
        /// Gateways.
        #[arg(long, default_value_t = 2)]
        gateways: usize,
        /// Directory authorities.
        #[arg(long, default_value_t = 1)]
        authorities: usize,
        /// Signatures of the authorities a topology needs (k of n).
        #[arg(long, default_value_t = 1)]
        threshold: usize,
        /// Give the authorities the production HTTP limits per source
        /// (a local network otherwise raises them, as every process shares
        /// 127.0.0.1).
        #[arg(long)]
        production_http_limits: bool,
    },
    /// DANGEROUS, evaluation only: start a local network in a child process
    /// and flood it as an attacker would (from 127.0.0.2) while an honest
    /// pair keeps talking; per attack, print honest delivery, latency and
    /// the servers' memory. Exits 0 only if every honest message arrived and
    /// every attack really ran.
    DangerousFlood {
        /// Attacks to run, in order (default: all, the baseline first).
        #[arg(long, value_enum, value_delimiter = ',')]
        attack: Vec<umbra::flood::Attack>,
        /// Seconds per attack.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// End with the report as one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Run a client for people: the web chat page at http://127.0.0.1:1978/
    /// and a local WebSocket API for other programs (docs/api.md). Its data
    /// (encrypted store, history, API token, daemon.toml) lives in
    /// --data-dir. The passphrase comes from UMBRA_PASSPHRASE, from
    /// --passphrase-file, or from a prompt; never from the command line.
    Daemon(DaemonArgs),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Evaluate the network's properties by simulation.
    #[command(subcommand)]
    Eval(EvalCmd),
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Simulate a whole network of real clients (the SDK's `ClientState`,
    /// real Sphinx packets at every hop) on a virtual clock and attack it as
    /// a global passive adversary: how well can it name the sender of a
    /// message?
    Anonymity {
        /// Clients.
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Mix nodes per layer.
        #[arg(long, default_value_t = 2)]
        per_layer: usize,
        /// Target messages to attack.
        #[arg(long, default_value_t = 5000)]
        targets: usize,
        /// Client payload stream rate λ_P (packets/s); default from the network defaults.
        #[arg(long)]
        lambda_p: Option<f64>,
        /// Client loop rate λ_L (packets/s).
        #[arg(long)]
        lambda_l: Option<f64>,
        /// Mix node loop rate λ_M (packets/s).
        #[arg(long)]
        lambda_m: Option<f64>,
        /// Mean per-hop delay 1/μ, milliseconds.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Real messages per client per second.
        #[arg(long, default_value_t = 0.5)]
        real_rate: f64,
        /// Simulated seconds after the warm-up, at most (by default: long
        /// enough for --targets target messages).
        #[arg(long)]
        duration_s: Option<f64>,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// DANGEROUS, evaluation only: no cover traffic.
        #[arg(long)]
        dangerous_no_cover: bool,
        /// DANGEROUS, evaluation only: no mixing delay.
        #[arg(long)]
        dangerous_zero_delay: bool,
        /// The long-term attack: numbers K of linked stores combined.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
        long_term_k: Vec<usize>,
        /// The long-term attack: trials per K.
        #[arg(long, default_value_t = 1000)]
        long_term_trials: usize,
        /// A stronger adversary: it tracks what each mix holds and takes
        /// away what each output carried, and labels mix loops by their links.
        #[arg(long)]
        discount: bool,
        /// End with one JSON line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GatewayCmd {
    /// Write a commented example config for a gateway.
    Init {
        #[command(flatten)]
        init: InitArgs,
        #[command(flatten)]
        authorities: AuthorityArgs,
    },
    /// Print the gateway's identity key (creating it on first use), for the
    /// authorities' operators to admit.
    Key(RunArgs),
    /// Check a config file and the key files it names without starting,
    /// binding or creating anything: exit 0 and `ok: FILE`, or exit 1 with
    /// each problem on its own line, naming the file and the key.
    Check(RunArgs),
    /// Start the gateway until SIGTERM or Ctrl-C.
    Run(NodeRunArgs),
}

#[derive(Args)]
struct InitArgs {
    /// Where to write the commented example config.
    #[arg(long, short, default_value = "umbra.toml")]
    config: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The TOML config file (see `init`).
    #[arg(long, short)]
    config: PathBuf,
}

/// `run` for mix nodes and gateways.
#[derive(Args)]
struct NodeRunArgs {
    #[command(flatten)]
    run: RunArgs,
    /// DANGEROUS, evaluation only: send no loop cover (overrides the config's
    /// `dangerous_no_cover`). Logs a warning.
    #[arg(long)]
    dangerous_no_cover: bool,
    /// DANGEROUS, evaluation only: forward packets without their mixing delay
    /// (overrides the config's `dangerous_zero_delay`). Logs a warning.
    #[arg(long)]
    dangerous_zero_delay: bool,
}

#[derive(Subcommand)]
enum DirectoryCmd {
    /// Write a commented example config (every key at its default).
    Init(InitArgs),
    /// Check a config file and the key files it names without starting,
    /// binding or creating anything: exit 0 and `ok: FILE`, or exit 1 with
    /// each problem on its own line, naming the file and the key.
    Check(RunArgs),
    /// Start the authority; creates its key (mode 0600) on first run and prints it.
    Run(RunArgs),
    /// Print the authority's public key (creating the key on first use), for node configs.
    Key(RunArgs),
    /// Admit a node: only nodes on the allowlist can register. The running
    /// authority picks the change up by itself.
    Admit {
        #[command(flatten)]
        run: RunArgs,
        /// The node's identity key, 64 hex digits (`umbra mixnode key` or
        /// `umbra gateway key` on the node's host prints it).
        identity: String,
        /// The role the node is admitted for.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Revoke a node's admission: it leaves this authority's vote at its
    /// next round.
    Revoke {
        #[command(flatten)]
        run: RunArgs,
        /// The node's identity key, 64 hex digits.
        identity: String,
    },
    /// List the admitted nodes.
    Admitted(RunArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// A mix node.
    Mix,
    /// A gateway.
    Gateway,
}

impl From<RoleArg> for protocol::topology::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Mix => Self::Mix,
            RoleArg::Gateway => Self::Gateway,
        }
    }
}

#[derive(Args)]
struct DaemonArgs {
    /// Where the daemon keeps its data (default: $XDG_DATA_HOME/umbra, or
    /// ~/.local/share/umbra).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A directory authority's public key (hex), as `umbra testnet` or
    /// `umbra directory key` prints it; repeat for each. Saved in
    /// daemon.toml: later starts need not repeat it.
    #[arg(long = "authority-key")]
    authority_keys: Vec<String>,
    /// The base URL of each authority, in the same order as the keys.
    #[arg(long = "directory-url")]
    directory_urls: Vec<String>,
    /// Signatures a topology needs (k of the authorities).
    #[arg(long)]
    threshold: Option<usize>,
    /// Address of the page and API (default 127.0.0.1:1978; loopback only).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Read the passphrase from this file (its first line).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// How often to fetch the dropboxes, ms (default: the SDK's).
    #[arg(long)]
    fetch_interval_ms: Option<u64>,
    /// DANGEROUS: allow --listen beyond loopback (anyone who reaches the
    /// port and holds the token drives the client).
    #[arg(long)]
    dangerous_listen_non_loopback: bool,
}

/// The directory authorities a node's `init` writes into its config.
#[derive(Args)]
struct AuthorityArgs {
    /// A directory authority's public key (hex), as `umbra directory key`
    /// prints it. Repeat it for each authority of the network.
    #[arg(long = "authority-key", required = true)]
    keys: Vec<String>,
    /// The base URL of each authority, in the same order as the keys.
    #[arg(long = "directory-url", default_values_t = ["http://127.0.0.1:8000".to_string()])]
    urls: Vec<String>,
    /// Signatures a topology needs (k of the authorities given).
    #[arg(long, default_value_t = 1)]
    threshold: usize,
}

impl AuthorityArgs {
    fn refs(&self) -> Result<Vec<net::dirclient::AuthorityRef>> {
        if self.keys.len() != self.urls.len() {
            return Err(format!(
                "{} --authority-key but {} --directory-url: give one URL per key",
                self.keys.len(),
                self.urls.len()
            )
            .into());
        }
        let refs: Vec<net::dirclient::AuthorityRef> = self
            .keys
            .iter()
            .zip(&self.urls)
            .map(|(k, u)| net::dirclient::AuthorityRef {
                url: u.clone(),
                key: k.trim().to_string(),
            })
            .collect();
        net::dirclient::Authorities::new(&refs, self.threshold).map_err(|e| {
            format!("--authority-key/--threshold: {e} (keys as `umbra directory key` prints them)")
        })?;
        Ok(refs)
    }
}

#[derive(Subcommand)]
enum MixnodeCmd {
    /// Write a commented example config for a mix node.
    Init {
        #[command(flatten)]
        init: InitArgs,
        #[command(flatten)]
        authorities: AuthorityArgs,
    },
    /// Print the mix node's identity key (creating it on first use), for the
    /// authorities' operators to admit.
    Key(RunArgs),
    /// Check a config file and the key files it names without starting,
    /// binding or creating anything: exit 0 and `ok: FILE`, or exit 1 with
    /// each problem on its own line, naming the file and the key.
    Check(RunArgs),

    /// Start the mix node: generates its identity on first run, registers with the
    /// directory and routes packets until SIGTERM or Ctrl-C.
    Run(NodeRunArgs),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Raw Sphinx unwrap rate beside one mix node's forwarding rate over QUIC
    /// on loopback, on the same cores, measured in the same run (the load
    /// generator on a core of its own), at production settings:
    /// the node's default config, delays drawn at the network's default mean,
    /// 1500-byte MTU, several peers. A run disturbed by outside load, idle cores
    /// or drops is marked invalid, prints no ratio and exits 3.
    Mixnode {
        /// Packets in each measurement [default: 200 per ms of mean delay, at least 80000 (160000 at 800 ms), node rounds more if the first raw run shows the machine needs them for ten mean delays of steady window; 10000 with --easy].
        #[arg(long)]
        packets: Option<usize>,
        /// Mean per-hop delay the packets ask for, ms [default: the network's, 800; 0 with --easy].
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Jumbo datagrams on the node's links (off in production) [default with --easy].
        #[arg(long)]
        jumbo: bool,
        /// Peers sending to the node, and as many it forwards to [default: 3; 1 with --easy].
        #[arg(long)]
        peers: Option<usize>,
        /// The old easy setting, a ceiling: zero delay, jumbo datagrams, one
        /// peer, the load generator on the node's cores.
        #[arg(long)]
        easy: bool,
        /// Insist that the load generator (senders, receivers) have one
        /// core in eight to itself, with the node and the raw unwrap on the
        /// rest, as on a machine of the node's own [default: so where the
        /// process has two whole CPUs or more, else shared, with the reason].
        #[arg(long, conflicts_with = "shared_cores")]
        own_cores: bool,
        /// Run the load generator on the node's cores: the node's rate then
        /// carries the generator's QUIC too [default with --easy].
        #[arg(long)]
        shared_cores: bool,
        /// Then run this many seconds at 80 % of the measured rate and report
        /// resident memory at the start and end (packets are cycled: the node
        /// is told to let replays through, benchmarks only).
        #[arg(long, default_value_t = 0)]
        soak_secs: u64,
        /// End with one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// One gateway's dropbox storage on this disk: stores and fetches per
    /// second and the commit time a store's ack waits for, at batch sizes 1,
    /// 16 and 256 (the storage thread puts up to 256 queued requests in one
    /// durable transaction).
    Store {
        /// Messages stored, then fetched and deleted, at each batch size.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Dropboxes they are spread over.
        #[arg(long, default_value_t = 1_000)]
        boxes: usize,
        /// Directory for the database (a temporary one inside it, removed
        /// after): put it on the disk a gateway would use, not tmpfs.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// End with one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// What an idle client costs (share of a core, bytes/s, store writes)
    /// at the default cover rates, with one identity and with several side
    /// by side, what its store writes per message, and how long a message
    /// takes to deliver, against `umbra testnet` started as a separate
    /// process.
    Client {
        /// Seconds to measure the idle clients.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Size of the message timed, bytes.
        #[arg(long, default_value_t = 1024 * 1024)]
        message_size: usize,
        /// Identities the third client hosts (measured beside two clients
        /// hosting one).
        #[arg(long, default_value_t = 5)]
        identities: usize,
        /// End with one JSON line.
        #[arg(long)]
        json: bool,
    },
    /// What one gateway spends on N idle clients at the default cover rates:
    /// starts a directory, 6 mix nodes and one gateway as separate processes
    /// (network defaults), connects N clients from this process, all
    /// entering at that gateway, and reads the gateway process's CPU and
    /// memory, and its traffic, after a warm-up. A run on a saturated
    /// machine, or whose clients fell behind their rates, is marked not
    /// valid.
    Gateway {
        /// Idle clients (each with one contact whose boxes it fetches).
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Seconds measured.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Seconds between the last client connecting and the measurement.
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        /// End with one JSON line: "clients", "seconds" (measured);
        /// "gateway_cpu_cores" (gateway process, utime+stime over the
        /// window), "gateway_idle_cpu_cores" (before any client),
        /// "clients_per_gateway_core"; "gateway_rss_start_mib" (before
        /// clients), "gateway_rss_window_start_mib", "gateway_rss_end_mib",
        /// "rss_per_client_kib" ((end - start) / clients: at small N mostly
        /// the replay cache's first pages), "rss_marginal_per_client_kib"
        /// (what the second half of the clients added, per client); the clients'
        /// loops in the window: "loops_sent", "loops_returned" (on time),
        /// "loops_late", "loops_lost"; per second at the gateway:
        /// "fetches_per_s" (answered), "deliveries_per_s" (replies to
        /// clients), "downlink_frames_per_s", "packets_in_per_s" (=
        /// "client_packets_in_per_s" + "mix_packets_in_per_s");
        /// "gateway_dropped"; this process: "client_cpu_cores",
        /// "client_rss_per_client_kib", "client_send_share" (packets sent /
        /// what the rates ask for); "network_cpu_cores" (directory and mix
        /// nodes), "other_cpu_cores" (the machine's other work),
        /// "machine_idle_share", "machine_cores";
        /// "client_pps" (λ_P + λ_L), "downlink_pps" (λ_D); "valid" (false if
        /// the machine was under 10 % idle, the clients sent under 90 % of
        /// their packets, no loop came back, or the gateway's CPU time could
        /// not be read) and "invalid_reasons".
        #[arg(long)]
        json: bool,
    },
}

/// `umbra daemon`: daemon.toml and the flags (which are saved into it),
/// the passphrase, then serve until Ctrl-C.
async fn run_daemon(a: DaemonArgs) -> Result<()> {
    let dir = match a.data_dir {
        Some(d) => d,
        None => std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .ok_or("no --data-dir, and neither XDG_DATA_HOME nor HOME is set")?
            .join("umbra"),
    };
    let file = dir.join("daemon.toml");
    let mut f = daemon::DaemonFile::load(&file)?;
    let mut changed = false;
    if !a.authority_keys.is_empty() {
        if a.directory_urls.len() != a.authority_keys.len() {
            return Err(format!(
                "--directory-url: give one per --authority-key ({} keys, {} URLs)",
                a.authority_keys.len(),
                a.directory_urls.len()
            )
            .into());
        }
        f.authorities = a
            .authority_keys
            .iter()
            .zip(&a.directory_urls)
            .map(|(key, url)| daemon::config::Authority {
                url: url.clone(),
                key: key.clone(),
            })
            .collect();
        changed = true;
    }
    if let Some(t) = a.threshold {
        f.threshold = t;
        changed = true;
    }
    if let Some(l) = a.listen {
        f.listen = l;
        changed = true;
    }
    if let Some(ms) = a.fetch_interval_ms {
        f.fetch_interval_ms = Some(ms);
        changed = true;
    }
    if a.dangerous_listen_non_loopback && !f.dangerous_listen_non_loopback {
        f.dangerous_listen_non_loopback = true;
        changed = true;
    }
    let cfg = f.clone().into_config(dir.clone(), &file)?;
    net::identity::create_private_dir(&dir)?;
    if changed {
        f.save(&file)?;
    }
    let first = !dir.join("client.umbra").exists();
    let pass = read_passphrase(a.passphrase_file.as_deref(), first)?;
    let d = daemon::Daemon::start(cfg, pass.as_bytes()).await?;
    println!("Umbra daemon running (Ctrl-C stops it).");
    println!("  your identity: {}", hex::encode(d.id().0));
    // The token only to a terminal: a service's stdout goes to its journal.
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("  open the chat page: {}", d.page_url());
    } else {
        println!(
            "  open the chat page: http://{}/#token=<the token in {}>",
            d.addr(),
            d.token_path().display()
        );
    }
    println!(
        "  API: ws://{}/v1/ws (token in {})",
        d.addr(),
        d.token_path().display()
    );
    shutdown_signal().await;
    d.stop().await;
    Ok(())
}

/// The store's passphrase: UMBRA_PASSPHRASE, the file's first line, or a
/// prompt (twice for a new store).
fn read_passphrase(file: Option<&std::path::Path>, first: bool) -> Result<String> {
    let p = if let Ok(p) = std::env::var("UMBRA_PASSPHRASE") {
        p
    } else if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("--passphrase-file {}: {e}", f.display()))?;
        text.lines().next().unwrap_or("").to_string()
    } else {
        prompt_passphrase(first)?
    };
    if p.is_empty() {
        return Err("an empty passphrase protects nothing: choose one".into());
    }
    Ok(p)
}

/// Asks on the terminal (twice for a new store).
fn prompt_passphrase(first: bool) -> Result<String> {
    let p = rpassword::prompt_password(if first {
        "New passphrase for this client's store: "
    } else {
        "Passphrase: "
    })
    .map_err(|e| {
        format!(
            "no passphrase: set UMBRA_PASSPHRASE, pass --passphrase-file, or run on a terminal              ({e})"
        )
    })?;
    if first && rpassword::prompt_password("Again: ")? != p {
        return Err("the passphrases differ; nothing was created".into());
    }
    Ok(p)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}

/// Logs go to stderr: plain text without colour codes unless stderr is a
/// terminal (so files and journald get clean lines), or JSON lines.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,quinn=error,quinn_udp=error,rustls=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The public half of the key `file` in `data_dir` (created on first use),
/// hex; errors name the config file.
fn identity_of(config: &std::path::Path, data_dir: &std::path::Path, file: &str) -> Result<String> {
    net::identity::create_private_dir(data_dir)
        .map_err(|e| format!("config file {}: key `data_dir`: {e}", config.display()))?;
    let key = net::identity::load_or_create_identity(&data_dir.join(file))
        .map_err(|e| format!("config file {}: {e}", config.display()))?;
    Ok(hex::encode(key.verifying_key().to_bytes()))
}

/// Prints what `umbra <role> check` found: warnings, then either `ok` and
/// the notes, or each problem (the error makes the exit status 1).
fn report_check(
    config: &std::path::Path,
    role: &str,
    f: net::check::Findings,
    id: Option<[u8; 32]>,
) -> Result<()> {
    let file = config.display();
    for w in &f.warnings {
        eprintln!("warning: config file {file}: {w}");
    }
    if !f.problems.is_empty() {
        for p in &f.problems {
            eprintln!("config file {file}: {p}");
        }
        return Err(format!(
            "{} problem{} in {file}",
            f.problems.len(),
            if f.problems.len() == 1 { "" } else { "s" }
        )
        .into());
    }
    match id {
        Some(id) => println!("ok: {file} ({role}, identity {})", hex::encode(id)),
        None => println!("ok: {file} ({role})"),
    }
    for n in &f.notes {
        println!("  {n}");
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Directory(DirectoryCmd::Check(a)) => {
            let cfg: DirectoryConfig = config::load(&a.config)?;
            let mut f = net::check::Findings::default();
            let me = cfg.check(&mut f);
            report_check(&a.config, "directory authority", f, me)?;
        }
        Command::Mixnode(MixnodeCmd::Check(a)) => {
            let cfg: MixnodeConfig = config::load(&a.config)?;
            let mut f = net::check::Findings::default();
            let id = cfg.check(&mut f);
            report_check(&a.config, "mix node", f, id)?;
        }
        Command::Gateway(GatewayCmd::Check(a)) => {
            let cfg: gateway::GatewayConfig = config::load(&a.config)?;
            let mut f = net::check::Findings::default();
            let id = cfg.check(&mut f);
            report_check(&a.config, "gateway", f, id)?;
        }
        Command::Directory(DirectoryCmd::Init(a)) => {
            config::write_new(&a.config, &DirectoryConfig::example(), a.force)?;
            println!(
                "wrote {}; start it with: umbra directory run --config {}",
                a.config.display(),
                a.config.display()
            );
        }
        Command::Directory(DirectoryCmd::Key(a)) => {
            let cfg: DirectoryConfig = config::load(&a.config)?;
            println!(
                "{}",
                identity_of(&a.config, &cfg.data_dir, "authority.key")?
            );
        }
        Command::Directory(DirectoryCmd::Admit {
            run,
            identity,
            role,
        }) => {
            let cfg: DirectoryConfig = config::load(&run.config)?;
            let file = |e: directory::Error| format!("config file {}: {e}", run.config.display());
            let id = directory::parse_identity(&identity).map_err(file)?;
            directory::Admission::load(&cfg.admission_path())
                .and_then(|mut a| a.admit(id, role.into()))
                .map_err(file)?;
            println!(
                "admitted {} as a {} node (in {})",
                hex::encode(id),
                match role {
                    RoleArg::Mix => "mix",
                    RoleArg::Gateway => "gateway",
                },
                cfg.admission_path().display()
            );
        }
        Command::Directory(DirectoryCmd::Revoke { run, identity }) => {
            let cfg: DirectoryConfig = config::load(&run.config)?;
            let file = |e: directory::Error| format!("config file {}: {e}", run.config.display());
            let id = directory::parse_identity(&identity).map_err(file)?;
            if directory::Admission::load(&cfg.admission_path())
                .and_then(|mut a| a.revoke(&id))
                .map_err(file)?
            {
                println!("revoked {}", hex::encode(id));
            } else {
                return Err(format!("{} was not admitted", hex::encode(id)).into());
            }
        }
        Command::Directory(DirectoryCmd::Admitted(a)) => {
            let cfg: DirectoryConfig = config::load(&a.config)?;
            let list = directory::Admission::load(&cfg.admission_path())
                .map_err(|e| format!("config file {}: {e}", a.config.display()))?;
            for (id, role, note) in list.entries() {
                let role = match role {
                    protocol::topology::Role::Mix => "mix",
                    protocol::topology::Role::Gateway => "gateway",
                };
                println!("{} {role} {note}", hex::encode(id));
            }
            eprintln!("{} admitted", list.len());
        }
        Command::Directory(DirectoryCmd::Run(a)) => {
            let cfg: DirectoryConfig = config::load(&a.config)?;
            let dir = directory::Directory::open(cfg.clone())
                .map_err(|e| format!("config file {}: {e}", a.config.display()))?;
            println!("authority key: {}", hex::encode(dir.public_key()));
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .map_err(|e| {
                    format!(
                        "config file {}: key `listen` = {}: {e}",
                        a.config.display(),
                        cfg.listen
                    )
                })?;
            dir.serve(listener, shutdown_signal()).await?;
        }
        Command::Mixnode(MixnodeCmd::Init { init, authorities }) => {
            let text = mixnode::example_config(&authorities.refs()?, authorities.threshold);
            // Refuse to write a config that would not load.
            let _: MixnodeConfig = config::parse(&init.config, &text)?;
            config::write_new(&init.config, &text, init.force)?;
            println!(
                "wrote {}; start it with: umbra mixnode run --config {}",
                init.config.display(),
                init.config.display()
            );
        }
        Command::Mixnode(MixnodeCmd::Key(a)) => {
            let cfg: MixnodeConfig = config::load(&a.config)?;
            println!("{}", identity_of(&a.config, &cfg.data_dir, "identity.key")?);
        }
        Command::Mixnode(MixnodeCmd::Run(n)) => {
            let a = &n.run;
            let mut cfg: MixnodeConfig = config::load(&a.config)?;
            cfg.dangerous_no_cover |= n.dangerous_no_cover;
            cfg.dangerous_zero_delay |= n.dangerous_zero_delay;
            mixnode::run(cfg, shutdown_signal())
                .await
                .map_err(|e| format!("config file {}: {e}", a.config.display()))?;
        }
        Command::Gateway(GatewayCmd::Init { init, authorities }) => {
            let text = gateway::GatewayConfig::example(&authorities.refs()?, authorities.threshold);
            let _: gateway::GatewayConfig = config::parse(&init.config, &text)?;
            config::write_new(&init.config, &text, init.force)?;
            println!(
                "wrote {}; start it with: umbra gateway run --config {}",
                init.config.display(),
                init.config.display()
            );
        }
        Command::Gateway(GatewayCmd::Key(a)) => {
            let cfg: gateway::GatewayConfig = config::load(&a.config)?;
            println!(
                "{}",
                identity_of(&a.config, &cfg.node.data_dir, "identity.key")?
            );
        }
        Command::Gateway(GatewayCmd::Run(n)) => {
            let a = &n.run;
            let mut cfg: gateway::GatewayConfig = config::load(&a.config)?;
            cfg.node.dangerous_no_cover |= n.dangerous_no_cover;
            cfg.node.dangerous_zero_delay |= n.dangerous_zero_delay;
            gateway::run(cfg, shutdown_signal())
                .await
                .map_err(|e| format!("config file {}: {e}", a.config.display()))?;
        }
        Command::Demo {
            messages,
            delay_ms,
            link_loss,
            burst_loss,
            burst_good_to_bad,
            burst_bad_to_good,
            burst_loss_good,
            burst_loss_bad,
            partition_secs,
            message_size,
            no_batch_acks,
            lambda_p,
            authorities,
            threshold,
            authorities_down,
            epoch_secs,
            group,
            json,
            authority_keys,
            directory_urls,
        } => {
            if message_size.is_some_and(|n| n > client_sdk::MAX_BODY_LEN) {
                return Err(format!(
                    "--message-size must be at most {} bytes",
                    client_sdk::MAX_BODY_LEN
                )
                .into());
            }
            if !(0.0..1.0).contains(&link_loss) {
                return Err("--link-loss must be in [0, 1)".into());
            }
            let burst = if burst_loss {
                let d = net::faults::BurstLoss::default();
                let b = net::faults::BurstLoss {
                    good_to_bad: burst_good_to_bad.unwrap_or(d.good_to_bad),
                    bad_to_good: burst_bad_to_good.unwrap_or(d.bad_to_good),
                    loss_good: burst_loss_good.unwrap_or(d.loss_good),
                    loss_bad: burst_loss_bad.unwrap_or(d.loss_bad),
                };
                b.check().map_err(|e| format!("--burst-*: {e}"))?;
                Some(b)
            } else {
                None
            };
            let partition = match partition_secs {
                Some(s) if !(s > 0.0 && s < 86_400.0) => {
                    return Err("--partition-secs must be above 0 and below a day".into());
                }
                s => s.map(std::time::Duration::from_secs_f64),
            };
            // The fault-injecting sockets also count what they do; a
            // partition needs them even without other faults.
            if link_loss > 0.0 || burst.is_some() || partition.is_some() {
                net::faults::dangerous_set_link_faults(Some(net::faults::LinkFaults {
                    loss: link_loss,
                    seed: 1,
                    ..Default::default()
                }));
            }
            net::faults::dangerous_set_burst_loss(burst);
            if epoch_secs < 5 {
                return Err("--epoch-secs must be at least 5".into());
            }
            if authorities_down >= authorities {
                return Err("--authorities-down must leave at least one authority running".into());
            }
            let opts = umbra::demo::DemoOptions {
                messages,
                delay_mean_ms: delay_ms,
                message_size,
                lambda_payload: lambda_p,
                authorities,
                threshold,
                authorities_down,
                partition,
                epoch_secs,
                batch_acks: !no_batch_acks,
                ..Default::default()
            };
            if let Some(n) = group {
                let r = umbra::group_demo::run(opts, n, |line| eprintln!("{line}")).await?;
                println!(
                    "group of {}: {} of {} deliveries ({} messages × {} other members) exactly once and intact; {} missing, {} duplicates, {} corrupted; joined in {:.1} s; latency p50 {:.0} ms, p99 {:.0} ms; {:.1} s",
                    r.members,
                    r.delivered,
                    r.expected,
                    r.sent,
                    r.members - 1,
                    r.missing,
                    r.duplicates,
                    r.corrupted,
                    r.join_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.seconds
                );
                if json {
                    println!("{}", serde_json::to_string(&r)?);
                }
                if !r.ok() {
                    return Err("a group message was missing, duplicated or corrupted".into());
                }
                return Ok(());
            }
            let r = if authority_keys.is_empty() {
                umbra::demo::run(opts, |line| eprintln!("{line}")).await?
            } else {
                let refs = AuthorityArgs {
                    keys: authority_keys,
                    urls: directory_urls,
                    threshold,
                }
                .refs()?;
                umbra::demo::run_on(opts, refs, threshold, |line| eprintln!("{line}")).await?
            };
            println!(
                "{} of {} messages delivered intact ({} reported failed but delivered); {} reported failed, {} lost, {} duplicates, {} corrupted; latency p50 {} ms, p99 {} ms; {} s ({})",
                r.delivered,
                r.sent,
                r.failed_but_delivered,
                r.failed,
                r.lost,
                r.duplicates,
                r.corrupted,
                r.p50_ms,
                r.p99_ms,
                r.seconds,
                r.ended,
            );
            if let Some(i) = &r.injector {
                println!("{}", i.summary());
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
            if !r.ok() {
                return Err("a message was lost, duplicated or corrupted".into());
            }
        }
        Command::Daemon(a) => run_daemon(a).await?,
        Command::Testnet {
            per_layer,
            gateways,
            authorities,
            threshold,
            production_http_limits,
        } => {
            let net = umbra::testnet::MixNetwork::start_with(umbra::testnet::NetworkOptions {
                per_layer,
                gateways,
                authorities,
                threshold,
                directory_http: production_http_limits.then(directory::HttpLimits::default),
                ..Default::default()
            })
            .await?;
            println!("Umbra testnet running on loopback (Ctrl-C stops it).");
            println!(
                "  directory authorities: {}; a topology needs `threshold` of their signatures:",
                net.directory.refs.len()
            );
            println!("  threshold = {}", net.directory.threshold);
            for a in &net.directory.refs {
                println!("  authority = {} {}", a.url, a.key);
            }
            for (i, g) in net.gateways.iter().enumerate() {
                println!(
                    "  gateway {i}: client address {} identity {}",
                    g.client_addr,
                    hex::encode(g.node().identity)
                );
            }
            for m in &net.mixnodes {
                println!("  metrics = http://{}/metrics", m.metrics_addr);
            }
            for g in &net.gateways {
                println!("  metrics = http://{}/metrics", g.node().metrics_addr);
            }
            println!(
                "Point an SDK client at it with ClientConfig::with_authorities(the urls and keys above, {}).",
                net.directory.threshold
            );
            shutdown_signal().await;
            net.stop().await;
        }
        Command::DangerousFlood {
            attack,
            seconds,
            json,
        } => {
            tracing::warn!("dangerous-flood attacks a local network: evaluation only");
            let mut opts = umbra::flood::FloodOptions {
                umbra: std::env::current_exe()?,
                seconds,
                ..Default::default()
            };
            if !attack.is_empty() {
                opts.attacks = attack;
            }
            let report = umbra::flood::run(opts, |m| eprintln!("{m}")).await?;
            print!("{}", report.table());
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
            if !report.ok() {
                return Err("an honest message was lost or an attack did not run".into());
            }
        }
        Command::Eval(EvalCmd::Anonymity {
            clients,
            per_layer,
            targets,
            lambda_p,
            lambda_l,
            lambda_m,
            delay_ms,
            real_rate,
            duration_s,
            seed,
            dangerous_no_cover,
            dangerous_zero_delay,
            long_term_k,
            long_term_trials,
            discount,
            json,
        }) => {
            if dangerous_no_cover || dangerous_zero_delay {
                tracing::warn!(
                    dangerous_no_cover,
                    dangerous_zero_delay,
                    "evaluation with anonymity-weakening settings: never use these in a real network"
                );
            }
            let mut params = protocol::topology::NetworkParams::default();
            params.lambda_payload = lambda_p.unwrap_or(params.lambda_payload);
            params.lambda_loop = lambda_l.unwrap_or(params.lambda_loop);
            params.lambda_mix_loop = lambda_m.unwrap_or(params.lambda_mix_loop);
            params.mix_delay_mean_ms = delay_ms.unwrap_or(params.mix_delay_mean_ms);
            let opts = umbra::eval::EvalOptions {
                clients,
                per_layer,
                targets,
                params,
                real_rate,
                duration_s,
                seed,
                dangerous_no_cover,
                dangerous_zero_delay,
                long_term_k,
                long_term_trials,
                discount,
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let r = tokio::task::spawn_blocking(move || umbra::eval::run(&opts)).await?;
            println!(
                "clients {}  targets {}  simulated {:.0} s in {:.1} s\nsender entropy {:.3} bits of {:.3} ({:.1} %)\ntop-1 accuracy {:.4} [{:.4}, {:.4}] vs chance {:.4} ({:.2}x; clustered interval [{:.2}, {:.2}]x)\nPoisson send times: {:.0} % of clients pass KS; a burst client: D={:.3} (critical {:.3})\nall packet kinds the same size: {}\na client sends {:.1} packets/s; mean latency to the dropbox {:.2} s",
                r.clients,
                r.targets,
                r.simulated_s,
                started.elapsed().as_secs_f64(),
                r.entropy_bits,
                r.max_entropy_bits,
                100.0 * r.entropy_bits / r.max_entropy_bits,
                r.top1_accuracy,
                r.top1_ci95[0],
                r.top1_ci95[1],
                r.chance,
                r.top1_accuracy / r.chance,
                r.top1_ci95_clustered[0] / r.chance,
                r.top1_ci95_clustered[1] / r.chance,
                100.0 * r.ks_pass_share,
                r.ks_burst[0],
                r.ks_burst[1],
                r.same_size,
                r.client_send_pps,
                r.mean_latency_s
            );
            for k in &r.kinds {
                println!(
                    "targets {:>7}: {:>6}  top-1 {:.4} [{:.4}, {:.4}] ({:.2}x chance; clustered [{:.2}, {:.2}]x)  entropy {:.3} bits\n                 calibration: mean p(true) {:.5} vs mean sum p^2 {:.5} (z {:+.2}, {:+.1} %), mean p(top) {:.5} vs top-1 {:.4}: {}",
                    k.kind,
                    k.targets,
                    k.top1_accuracy,
                    k.top1_ci95[0],
                    k.top1_ci95[1],
                    k.top1_accuracy / r.chance,
                    k.top1_ci95_clustered[0] / r.chance,
                    k.top1_ci95_clustered[1] / r.chance,
                    k.entropy_bits,
                    k.mean_p_true,
                    k.mean_sum_p2,
                    k.calibration_z,
                    100.0 * k.calibration_rel,
                    k.mean_p_max,
                    k.top1_accuracy,
                    if k.calibrated {
                        "calibrated"
                    } else {
                        "NOT CALIBRATED"
                    }
                );
            }
            for l in r.long_term.iter().chain(&r.long_term_box) {
                println!(
                    "long-term ({}): K = {:>4} linked: sender identified {:.3} [{:.3}, {:.3}] of {} trials, [{:.3}, {:.3}] counting senders (pool {:.0} to draw from; {})",
                    l.kind,
                    l.k,
                    l.identified,
                    l.ci95[0],
                    l.ci95[1],
                    l.trials,
                    l.ci95_senders[0],
                    l.ci95_senders[1],
                    l.pool,
                    if l.independent {
                        format!("{} different stores each, from {} senders", l.k, l.senders)
                    } else {
                        "too few senders had K: draws repeat stores".to_string()
                    }
                );
            }
            println!(
                "largest box: {} stores (one gateway links at most a box's)",
                r.largest_box
            );
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "clients": r.clients,
                        "targets": r.targets,
                        "entropy_bits": r.entropy_bits,
                        "max_entropy_bits": r.max_entropy_bits,
                        "top1_accuracy": r.top1_accuracy,
                        "top1_ci95": r.top1_ci95,
                        "top1_ci95_clustered": r.top1_ci95_clustered,
                        "chance": r.chance,
                        "calibrated": r.calibrated,
                        "kinds": r.kinds,
                        "long_term": r.long_term,
                        "long_term_box": r.long_term_box,
                        "largest_box": r.largest_box,
                        "adversary": r.adversary,
                    })
                );
            }
            if !r.ok() {
                return Err(format!(
                    "the attack's posteriors are not calibrated (mean p(true sender) and mean sum p^2 differ by more than {} standard errors + {} %): its figures cannot be trusted",
                    umbra::eval::CALIBRATION_Z,
                    100.0 * umbra::eval::CALIBRATION_REL
                )
                .into());
            }
        }
        Command::Bench(BenchCmd::Client {
            seconds,
            message_size,
            identities,
            json,
        }) => {
            let exe = std::env::current_exe()?;
            let r = umbra::bench::client(&exe, seconds, message_size, identities, |l| {
                eprintln!("{l}")
            })
            .await?;
            let same = |i: usize| (r.many_over_one[i] - 1.0).abs() <= r.noise_3sigma[i];
            println!(
                "idle client: {:.2} % of one core, up {:.0} B/s, down {:.0} B/s, store writes {:.0} B/s while catching up, {:.0} B/s settled (over {:.0} s)\n\
                 {} identities on one client: up {:.0} B/s ({:.3}x), down {:.0} B/s ({:.3}x); Poisson noise (3 sd) ±{:.3} / ±{:.3}: {}\n\
                 store: {:.0} bytes written per short message (sender and recipient)\n\
                 {} bytes delivered in {:.1} s; {:.0} bytes written to the stores for it",
                100.0 * r.idle_cpu_share,
                r.idle_up_bytes_per_s,
                r.idle_down_bytes_per_s,
                r.catch_up_store_bytes_per_s,
                r.idle_store_bytes_per_s,
                r.idle_seconds,
                r.identities,
                r.many_up_bytes_per_s,
                r.many_over_one[0],
                r.many_down_bytes_per_s,
                r.many_over_one[1],
                r.noise_3sigma[0],
                r.noise_3sigma[1],
                if same(0) && same(1) {
                    "the same within noise"
                } else {
                    "DIFFERENT beyond noise"
                },
                r.store_bytes_per_short_message,
                r.message_bytes,
                r.delivery_seconds,
                r.store_bytes_for_message,
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench(BenchCmd::Gateway {
            clients,
            seconds,
            warmup,
            json,
        }) => {
            let opts = umbra::bench::GatewayOptions {
                exe: std::env::current_exe()?,
                clients,
                seconds,
                warmup,
            };
            // Stopped by a signal, the network's processes are stopped too
            // (dropping the run stops them).
            let r = tokio::select! {
                r = umbra::bench::gateway(&opts, |l| eprintln!("{l}")) => r?,
                _ = shutdown_signal() => return Err("interrupted".into()),
            };
            println!(
                "{} idle clients (λ_P + λ_L = {} packets/s each, downlink {} frames/s) against one gateway, measured {:.0} s\n\
                 gateway: {:.3} cores ({:.3} before any client): {:.0} clients per gateway core\n\
                 gateway memory: {:.1} MiB before clients, {:.1} MiB at the window's start, {:.1} MiB at its end: {:.1} KiB per client ({:.1} KiB for each of the second half)\n\
                 gateway traffic: {:.0} packets/s in ({:.0} from clients, {:.0} from mix nodes), {:.1} fetches/s answered, {:.1} replies/s to clients, {:.0} downlink frames/s, {} dropped\n\
                 loops: {} sent, {} back on time, {} late, {} lost\n\
                 client process: {:.3} cores ({:.2} % of a core per client), {:.0} KiB per client, sent {:.0} % of the packets its rates ask for\n\
                 mix nodes and directory: {:.3} cores; other work on the machine: {:.3} cores; idle {:.0} % of {} cores\n\
                 {}",
                r.clients,
                r.client_pps,
                r.downlink_pps,
                r.seconds,
                r.gateway_cpu_cores,
                r.gateway_idle_cpu_cores,
                r.clients_per_gateway_core,
                r.gateway_rss_start_mib,
                r.gateway_rss_window_start_mib,
                r.gateway_rss_end_mib,
                r.rss_per_client_kib,
                r.rss_marginal_per_client_kib,
                r.packets_in_per_s,
                r.client_packets_in_per_s,
                r.mix_packets_in_per_s,
                r.fetches_per_s,
                r.deliveries_per_s,
                r.downlink_frames_per_s,
                r.gateway_dropped,
                r.loops_sent,
                r.loops_returned,
                r.loops_late,
                r.loops_lost,
                r.client_cpu_cores,
                100.0 * r.client_cpu_cores / r.clients as f64,
                r.client_rss_per_client_kib,
                100.0 * r.client_send_share,
                r.network_cpu_cores,
                r.other_cpu_cores,
                100.0 * r.machine_idle_share,
                r.machine_cores,
                if r.valid {
                    "valid".to_string()
                } else {
                    format!("NOT VALID: {}", r.invalid_reasons.join("; "))
                },
            );
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench(BenchCmd::Store {
            messages,
            boxes,
            dir,
            json,
        }) => {
            let tmp = tempfile::Builder::new()
                .prefix("umbra-bench-store-")
                .tempdir_in(&dir)
                .map_err(|e| format!("cannot make a directory in {}: {e}", dir.display()))?;
            // Private, as a gateway's data directory is.
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700))?;
            }
            let opts = gateway::StoreBenchOptions {
                messages,
                boxes,
                now_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as u64,
                ..Default::default()
            };
            let cfg = gateway::GatewayConfig::default();
            let r = tokio::task::spawn_blocking(move || {
                gateway::store_bench(tmp.path(), &cfg, &opts).map_err(|e| e.to_string())
            })
            .await??;
            println!(
                "{messages} stores of {} bytes over {boxes} dropboxes, then fetches of {} messages each until empty (default gateway limits, fsync on every commit):",
                protocol::messages::MAX_ACKED_STORED_LEN,
                protocol::messages::FETCH_SURBS
            );
            for b in &r {
                println!(
                    "batch {:>3}: {:>7.0} stores/s (commit p50 {:.2} ms, p99 {:.2} ms); {:>7.0} fetches/s (commit p50 {:.2} ms, p99 {:.2} ms); {} left",
                    b.batch,
                    b.stores_per_s,
                    b.store_commit_p50_ms,
                    b.store_commit_p99_ms,
                    b.fetches_per_s,
                    b.fetch_commit_p50_ms,
                    b.fetch_commit_p99_ms,
                    b.left
                );
            }
            if json {
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::Bench(BenchCmd::Mixnode {
            packets,
            delay_ms,
            jumbo,
            peers,
            easy,
            own_cores,
            shared_cores,
            soak_secs,
            json,
        }) => {
            let mut opts = if easy {
                umbra::bench::MixnodeOptions::easy()
            } else {
                umbra::bench::MixnodeOptions::default()
            };
            opts.delay_ms = delay_ms.unwrap_or(opts.delay_ms);
            // Enough for ten mean delays of steady window at the delay asked.
            let enough = if easy {
                opts.packets
            } else {
                umbra::bench::packets_for(opts.delay_ms)
            };
            opts.packets = packets.unwrap_or(enough);
            // Asked for a number: exactly that many.
            opts.fit_rounds &= packets.is_none();
            opts.jumbo |= jumbo;
            opts.peers = peers.unwrap_or(opts.peers);
            opts.soak_secs = soak_secs;
            if own_cores {
                opts.placement = umbra::bench::Placement::Own;
            } else if shared_cores {
                opts.placement = umbra::bench::Placement::Shared;
            }
            opts.progress = !json;
            let r = umbra::bench::mixnode(opts).await?;
            print_mixnode_bench(&r, json)?;
            if !r.valid {
                return Err(BenchInvalid.into());
            }
        }
    }
    Ok(())
}

/// `umbra bench mixnode` measured a run it cannot vouch for (see its
/// reasons, printed above): exit status 3.
#[derive(Debug)]
struct BenchInvalid;

impl std::fmt::Display for BenchInvalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the run is not valid: no ratio may be quoted from it")
    }
}

impl std::error::Error for BenchInvalid {}

/// Prints `umbra bench mixnode`'s figures; a ratio only for a valid run.
fn print_mixnode_bench(r: &umbra::bench::MixnodeBench, json: bool) -> Result<()> {
    if let Some(s) = &r.soak {
        println!(
            "soak: {:.0} s at {:.0} packets/s sent, {:.0} forwarded, {} dropped by the node; RSS {:.1} MiB at the start, {:.1} MiB at the end (max {:.1})",
            s.secs,
            s.rate_pps,
            s.forwarded_pps,
            s.dropped,
            s.rss_start_mib,
            s.rss_end_mib,
            s.rss_max_mib
        );
    }
    println!(
        "settings: mean delay {} ms, jumbo datagrams {}, {} peers each side, {} packets per node round, {} cores{}",
        r.delay_ms,
        if r.jumbo { "on" } else { "off" },
        r.peers,
        r.packets,
        r.cores,
        if r.generator_cores > 0 {
            format!(
                " for the node and the raw unwrap, {} for the load generator alone",
                r.generator_cores
            )
        } else {
            format!(
                " shared by the node, the raw unwrap and the load generator ({})",
                r.shared_because.as_deref().unwrap_or("asked for")
            )
        }
    );
    println!(
        "checks: other processes {:.2} cores at most (limit {}), raw runs {:.0} % idle at most (limit {:.0} %), {} dropped, node round {:.0} % idle{}",
        r.outside_load_cores,
        umbra::bench::MAX_OUTSIDE_CORES,
        r.raw_idle_share * 100.0,
        umbra::bench::MAX_RAW_IDLE * 100.0,
        r.dropped,
        r.node_idle_share * 100.0,
        if r.generator_cores > 0 {
            format!(
                " (the node's cores), the generator's own {:.0} % busy",
                r.generator_busy_share * 100.0
            )
        } else {
            String::new()
        }
    );
    if r.valid {
        let rounds: Vec<String> = r.rounds.iter().map(|x| format!("{:.3}", x.ratio)).collect();
        println!(
            "ratio by round: {} (the median round follows)",
            rounds.join(", ")
        );
    }
    println!(
        "raw sphinx unwrap: {:.0} packets/s on {} cores\nmix node over QUIC: {:.0} packets/s (steady; whole run {:.0})",
        r.raw_unwrap_pps, r.cores, r.mixnode_pps, r.mixnode_pps_whole_run
    );
    if r.valid {
        println!("ratio: {:.3}  (valid)", r.ratio);
    } else {
        println!(
            "ratio: none, the run is NOT VALID: {}",
            r.invalid_reasons.join("; ")
        );
    }
    println!(
        "packets held by the node at most: {}\nsender → node: {:.2} datagrams per packet, path MTU {} bytes\nQUIC alone, no mix node: {:.0} frames/s, {:.1} µs CPU per frame (sender and receiver)\nmean peel time in the node: {:.0} µs (wall)\nCPU per packet: node workers {:.0} µs (raw unwrap {:.0} µs on CPU, {:.0} µs wall × cores), node QUIC/tokio {:.1} µs, bench senders+receivers {:.1} µs\nwhile forwarding: node workers {:.0} % of all the cores, node QUIC/tokio {:.0} %, bench senders+receivers {:.0} %, idle or others' {:.0} %\nthreads put on a CPU per packet: node workers {:.2}, node QUIC/tokio {:.2}, bench senders+receivers {:.2}\nnode efficiency (raw unwrap CPU / node CPU, per packet): {:.3}",
        r.held_max,
        r.datagrams_per_packet,
        r.path_mtu,
        r.link_pps,
        r.link_us_per_frame,
        r.peel_us,
        r.cpu_us_per_packet.workers,
        r.raw_cpu_us_per_packet,
        r.raw_us_per_packet,
        r.cpu_us_per_packet.node_io,
        r.cpu_us_per_packet.bench,
        r.cpu_share.workers * 100.0,
        r.cpu_share.node_io * 100.0,
        r.cpu_share.bench * 100.0,
        (1.0 - r.cpu_share.workers - r.cpu_share.node_io - r.cpu_share.bench) * 100.0,
        r.runs_per_packet.workers,
        r.runs_per_packet.node_io,
        r.runs_per_packet.bench,
        r.node_efficiency,
    );
    for l in &r.latency {
        println!(
            "latency at {:.0} % load ({:.0} packets/s, {} of {} arrived): p50 {:.1} ms, p99 {:.1} ms; the sampled delays alone p50 {:.1} ms, p99 {:.1} ms; the node adds p50 {:.2} ms, p99 {:.2} ms",
            l.load * 100.0,
            l.rate_pps,
            l.arrived,
            l.packets,
            l.p50_ms,
            l.p99_ms,
            l.delay_p50_ms,
            l.delay_p99_ms,
            l.added_p50_ms,
            l.added_p99_ms
        );
    }
    if json {
        let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
        println!(
            "{}",
            serde_json::json!({
                "raw_unwrap_pps": r.raw_unwrap_pps.round(),
                "mixnode_pps": r.mixnode_pps.round(),
                "ratio": r.valid.then(|| round3(r.ratio)),
                "cores": r.cores,
                "generator_cores": r.generator_cores,
                "shared_because": r.shared_because,
                "delay_ms": r.delay_ms,
                "jumbo": r.jumbo,
                "peers": r.peers,
                "valid": r.valid,
                "invalid_reasons": r.invalid_reasons,
                "outside_load_cores": round3(r.outside_load_cores),
                "raw_idle_share": round3(r.raw_idle_share),
                "node_idle_share": round3(r.node_idle_share),
                "generator_busy_share": round3(r.generator_busy_share),
                "dropped": r.dropped,
                "latency": r.latency.iter().map(|l| serde_json::json!({
                    "load": l.load,
                    "added_p50_ms": round3(l.added_p50_ms),
                    "added_p99_ms": round3(l.added_p99_ms),
                    "p50_ms": round3(l.p50_ms),
                    "p99_ms": round3(l.p99_ms),
                })).collect::<Vec<_>>(),
            })
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // DANGEROUS, tests only: a long or lossy path for this process's QUIC
    // sockets (the netns testnet, where the kernel has no netem). Warns.
    match net::faults::LinkFaults::from_env() {
        Ok(Some(f)) => net::faults::dangerous_set_link_faults(Some(f)),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    // A node's runtime does its I/O: its threads are SCHED_BATCH, so their
    // many short wake-ups wait for a free core, or for the running thread
    // to block or end its slice, instead of preempting the Sphinx workers
    // (which make themselves batch too: node::sched). So are the mix node
    // benchmark's (its load generator would be elsewhere in production).
    let io_role = matches!(
        cli.command,
        Command::Mixnode(MixnodeCmd::Run(_))
            | Command::Gateway(GatewayCmd::Run(_))
            | Command::Bench(BenchCmd::Mixnode { .. })
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if io_role {
        node::sched::io_thread();
        builder.on_thread_start(node::sched::io_thread);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<BenchInvalid>().is_some() => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
