//! `umbra`: one binary for every role.

use clap::{Args, Parser, Subcommand};
use directory::DirectoryConfig;
use mixnode::MixnodeConfig;
use std::path::PathBuf;
use std::process::ExitCode;
use umbra::config;

#[derive(Parser)]
#[command(
    name = "umbra",
    version,
    about = "Umbra: a mix network for metadata-private messaging"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCmd),
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

#[derive(Subcommand)]
enum DirectoryCmd {
    /// Write a commented example config (every key at its default).
    Init(InitArgs),
    /// Start the authority; creates its key (mode 0600) on first run and prints it.
    Run(RunArgs),
}

#[derive(Subcommand)]
enum MixnodeCmd {
    /// Write a commented example config for a mix node.
    Init {
        #[command(flatten)]
        init: InitArgs,
        /// The directory authority's public key (hex), as `umbra directory run` prints it.
        #[arg(long)]
        authority_key: String,
        /// The directory authority's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        directory_url: String,
    },
    /// Start the mix node: generates its identity on first run, registers with the
    /// directory and routes packets until SIGTERM or Ctrl-C.
    Run(RunArgs),
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Raw Sphinx unwrap rate on all cores beside one mix node's forwarding rate
    /// over QUIC on loopback (zero delays), measured in the same run.
    Mixnode {
        /// Packets in each measurement.
        #[arg(long, default_value_t = 10_000)]
        packets: usize,
        /// End with one JSON line.
        #[arg(long)]
        json: bool,
    },
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Directory(DirectoryCmd::Init(a)) => {
            config::write_new(&a.config, &DirectoryConfig::example(), a.force)?;
            println!(
                "wrote {}; start it with: umbra directory run --config {}",
                a.config.display(),
                a.config.display()
            );
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
        Command::Mixnode(MixnodeCmd::Init {
            init,
            authority_key,
            directory_url,
        }) => {
            let text = MixnodeConfig::example(&authority_key)
                .replace("http://127.0.0.1:8000", &directory_url);
            // Refuse to write a config that would not load.
            let parsed: MixnodeConfig = config::parse(&init.config, &text)?;
            if hex::decode(&parsed.authority_key).map(|k| k.len()) != Ok(32) {
                return Err(
                    "--authority-key must be 64 hex digits (as `umbra directory run` prints it)"
                        .into(),
                );
            }
            config::write_new(&init.config, &text, init.force)?;
            println!(
                "wrote {}; start it with: umbra mixnode run --config {}",
                init.config.display(),
                init.config.display()
            );
        }
        Command::Mixnode(MixnodeCmd::Run(a)) => {
            let cfg: MixnodeConfig = config::load(&a.config)?;
            mixnode::run(cfg, shutdown_signal())
                .await
                .map_err(|e| format!("config file {}: {e}", a.config.display()))?;
        }
        Command::Bench(BenchCmd::Mixnode { packets, json }) => {
            let r = umbra::bench::mixnode(packets, !json).await?;
            println!(
                "raw sphinx unwrap: {:.0} packets/s on {} cores\nmix node over QUIC: {:.0} packets/s\nratio: {:.3}  ({} packets, {} dropped)",
                r.raw_unwrap_pps, r.cores, r.mixnode_pps, r.ratio, r.packets, r.dropped
            );
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "raw_unwrap_pps": r.raw_unwrap_pps.round(),
                        "mixnode_pps": r.mixnode_pps.round(),
                        "ratio": (r.ratio * 1000.0).round() / 1000.0,
                        "cores": r.cores,
                    })
                );
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
