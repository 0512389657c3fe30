#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

use node::{Handler, Node, NodeOptions};
use protocol::topology::Role;
use std::future::Future;
use std::sync::Arc;

pub use node::Error;

/// Configuration of a mix node (`umbra mixnode run --config FILE`): the
/// settings every Sphinx node has, and nothing more.
pub type MixnodeConfig = node::NodeConfig;

/// A running mix node.
pub type Mixnode = Node;

/// The mix role: nothing beyond peeling and forwarding (final-hop packets
/// and non-Sphinx frames are dropped and counted, as [`Handler`]'s defaults do).
pub struct MixHandler;
impl Handler for MixHandler {}

/// A commented example config, as `umbra mixnode init` writes it.
pub fn example_config(authorities: &[net::dirclient::AuthorityRef], threshold: usize) -> String {
    let d = MixnodeConfig::default();
    format!(
        r#"# Umbra mix node configuration.
# Every key but the authorities is optional; the values shown are the defaults.

# UDP address of the QUIC endpoint that receives and sends packets.
listen = "{listen}"
# Address published to the directory, if other nodes must dial another one:
# an IP address or a DNS name, resolved each time the node registers.
# public_address = "203.0.113.7:9000"
# public_address = "mix1.example.org:9000"
# Prometheus metrics at http://<metrics_listen>/metrics, with /healthz
# (alive) and /readyz (ready to mix: 200, else 503 naming the failed check).
metrics_listen = "{metrics}"
# Signatures a topology needs: k of the authorities listed at the end.
authority_threshold = {threshold}
# The identity key (identity.key, mode 0600). Sphinx keys never touch disk.
data_dir = "{data}"
{packet_path}
{authorities}"#,
        listen = d.listen,
        metrics = d.metrics_listen,
        data = d.data_dir.display(),
        packet_path = d.packet_path_example(),
        authorities = node::authorities_example(authorities),
    )
}

/// Starts a mix node: binds, makes fresh Sphinx keys, registers with the
/// directory and starts routing. Returns once the sockets are bound.
pub async fn start(cfg: MixnodeConfig) -> Result<Mixnode, Error> {
    node::start_node(cfg, NodeOptions::new(Role::Mix, Arc::new(MixHandler))).await
}

/// Runs a mix node until `shutdown` completes.
pub async fn run(cfg: MixnodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let node = start(cfg).await?;
    shutdown.await;
    node.shutdown().await;
    Ok(())
}
