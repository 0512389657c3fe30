use thiserror::Error;

/// Whose fault an error is: decides whether a node logs, counts or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The remote party sent something malformed or unauthorised.
    Peer,
    /// Our own configuration or arguments are wrong.
    Config,
    /// Something failed locally (a bug, or an exhausted resource).
    Local,
}

/// Every error of the protocol core.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A link frame had the wrong length, version or kind (peer's fault).
    #[error("malformed frame: {0}")]
    MalformedFrame(&'static str),
    /// A Sphinx packet failed to parse, authenticate or unwrap (peer's fault).
    #[error("invalid sphinx packet: {0}")]
    InvalidPacket(String),
    /// The packet's replay tag was already seen under this epoch key (peer's fault).
    #[error("replayed packet")]
    Replay,
    /// No Sphinx key is held for the epoch the frame names (peer's or a stale topology).
    #[error("no sphinx key for epoch {0}")]
    UnknownEpoch(u64),
    /// A signature did not verify, or was made by a key we do not trust (peer's fault).
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// A signed document parsed but failed a rule (stale epoch, wrong layers, …).
    #[error("document rejected: {0}")]
    Rejected(String),
    /// A document could not be decoded (peer's fault).
    #[error("undecodable document: {0}")]
    Decode(String),
    /// A caller passed arguments that cannot work (local or config fault).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Whose fault this error is.
    pub fn fault(&self) -> Fault {
        match self {
            Error::InvalidArgument(_) => Fault::Config,
            _ => Fault::Peer,
        }
    }
}
