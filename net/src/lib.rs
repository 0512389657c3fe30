#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod addr;
pub mod check;
pub mod conn;
#[cfg(not(feature = "server"))]
pub mod counters;
pub mod dirclient;
pub mod faults;
#[cfg(feature = "server")]
pub mod health;
pub mod identity;
pub mod link;
#[cfg(feature = "server")]
pub mod metrics;
pub mod tls;

mod error;
mod udp;
pub use addr::HostPort;
pub use error::Error;

/// Milliseconds since the Unix epoch, from the system clock: the one place
/// the servers and the client read the wall clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Installs the ring crypto provider as rustls' process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
