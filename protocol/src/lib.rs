#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod clock;
pub mod cover;
pub mod dropbox;
pub mod epoch;
pub mod frame;
pub mod keys;
pub mod messages;
pub mod packet;
pub mod reliable;
pub mod replay;
pub mod topology;

mod error;
pub use error::{Error, Fault};

/// Identity of a node: its long-term ed25519 public key. It is also the
/// 32-byte Sphinx node address that names the node as a next hop.
pub type NodeId = [u8; 32];
