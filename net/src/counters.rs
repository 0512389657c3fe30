//! The counters the link layer keeps. Servers (feature `server`) use
//! Prometheus's own types and export them; a client has no metrics
//! endpoint, so it gets these plain atomics with the same methods and
//! does not pull in Prometheus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A counter's name and help text (kept for the same call shape as
/// Prometheus's `Opts`).
#[derive(Debug, Clone)]
pub struct Opts {
    _name: String,
}

impl Opts {
    /// Options for a counter.
    pub fn new(name: impl Into<String>, _help: impl Into<String>) -> Self {
        Self { _name: name.into() }
    }
}

/// Construction never fails; the error type keeps Prometheus's signature.
#[derive(Debug)]
pub struct Invalid;

/// A counter that only goes up.
#[derive(Debug, Clone, Default)]
pub struct IntCounter(Arc<AtomicU64>);

impl IntCounter {
    /// A counter at zero.
    pub fn new(_name: impl Into<String>, _help: impl Into<String>) -> Result<Self, Invalid> {
        Ok(Self::default())
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct IntGauge(Arc<AtomicI64>);

impl IntGauge {
    /// A gauge at zero.
    pub fn new(_name: impl Into<String>, _help: impl Into<String>) -> Result<Self, Invalid> {
        Ok(Self::default())
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Subtracts `n`.
    pub fn sub(&self, n: i64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters by one label (a handful of fixed reasons).
#[derive(Debug, Clone, Default)]
pub struct IntCounterVec(Arc<Mutex<HashMap<String, IntCounter>>>);

impl IntCounterVec {
    /// An empty family.
    pub fn new(_opts: Opts, _labels: &[&str]) -> Result<Self, Invalid> {
        Ok(Self::default())
    }
    /// The counter for this label value, created at zero.
    pub fn with_label_values(&self, values: &[&str]) -> IntCounter {
        let key = values.join("\u{0}");
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_counters_are_shared_per_label() {
        let v = IntCounterVec::new(Opts::new("x", "y"), &["reason"]).unwrap();
        v.with_label_values(&["a"]).inc();
        v.with_label_values(&["a"]).inc_by(2);
        v.with_label_values(&["b"]).inc();
        assert_eq!(v.with_label_values(&["a"]).get(), 3);
        assert_eq!(v.with_label_values(&["b"]).get(), 1);
        let g = IntGauge::new("g", "h").unwrap();
        g.inc();
        g.inc();
        g.sub(3);
        assert_eq!(g.get(), -1);
    }
}
