#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod bench;
pub mod config;
pub mod demo;
pub mod eval;
pub mod flood;
pub mod group_demo;
pub mod sim;
pub mod testnet;
