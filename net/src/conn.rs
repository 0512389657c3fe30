//! The connection a frame came on, as code above the link layer sees it:
//! who is at the other end, and a way to answer on the same connection,
//! without QUIC types in its interfaces.

use crate::Error;
use protocol::NodeId;
use std::net::SocketAddr;

/// A handle on one live connection (cheap to clone; the connection stays
/// open while the link layer or a handle holds it).
#[derive(Clone, Debug)]
pub struct PeerConn(quinn::Connection);

impl PeerConn {
    /// Wraps a link-layer connection.
    pub fn new(conn: &quinn::Connection) -> Self {
        Self(conn.clone())
    }

    /// An id no other live connection of this process has (it may be
    /// reused once this one is gone).
    pub fn id(&self) -> usize {
        self.0.stable_id()
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// The peer's node identity, from its certificate; `None` for peers
    /// that present none (clients).
    pub fn peer_identity(&self) -> Option<NodeId> {
        crate::tls::peer_identity(&self.0)
    }

    /// Opens a stream to the peer, for frames the peer reads in order
    /// (waits while the peer grants no stream: bound it with a timeout).
    /// Fails if the connection is gone (the peer's or the network's fault).
    pub async fn open_uni(&self) -> Result<UniStream, Error> {
        self.0
            .open_uni()
            .await
            .map(UniStream)
            .map_err(|e| Error::Connect(e.to_string()))
    }

    /// Completes when the connection is closed, by either side or a timeout.
    pub async fn closed(&self) {
        let _ = self.0.closed().await;
    }

    /// Closes the connection with an application error code and reason.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.0.close(code.into(), reason);
    }
}

/// A stream to a peer opened with [`PeerConn::open_uni`].
#[derive(Debug)]
pub struct UniStream(quinn::SendStream);

impl UniStream {
    /// Writes all of `buf` (waits for the peer's flow control: bound it
    /// with a timeout). Fails if the peer stopped the stream or the
    /// connection is gone.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), Error> {
        self.0
            .write_all(buf)
            .await
            .map_err(|e| Error::Connect(e.to_string()))
    }
}
