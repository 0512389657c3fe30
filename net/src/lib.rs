#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod dirclient;
pub mod faults;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod tls;

mod error;
mod udp;
pub use error::Error;

/// Installs the ring crypto provider as rustls' process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
