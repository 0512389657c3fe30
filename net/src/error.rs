use thiserror::Error;

/// Errors of the networking layer. Each variant says whose fault it is.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// TLS or QUIC configuration could not be built (local fault: a bug or a bad key).
    #[error("tls setup failed: {0}")]
    Tls(String),
    /// A socket could not be bound (config fault: address in use or not ours).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting to a peer failed (peer's or the network's fault).
    #[error("connection to peer failed: {0}")]
    Connect(String),
    /// Every authority answered with a document whose signatures do not
    /// satisfy the configured authority keys and threshold: almost surely
    /// our configuration's fault (wrong keys or threshold).
    #[error("untrusted topology: {0}")]
    Untrusted(String),
    /// A key file is unreadable or malformed (config fault).
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// Local I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
