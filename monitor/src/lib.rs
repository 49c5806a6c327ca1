//! connmon: a kernel-level TCP connection monitor.
//!
//! Data flows one way: kernel hooks (`monitor-ebpf`) → ring buffer → [`source`] (decode)
//! → [`table`] (per-destination state) → [`policy`] (detectors, ejection) → [`sinks`].

pub mod agent;
pub mod assets;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
mod invalid;
mod layering;
mod log_limit;
mod persist;
pub mod policy;
mod privileges;
pub mod protocol;
mod service;
pub mod sinks;
pub mod source;
mod stats;
mod table;

/// The socket server's old path (`crate::server`), kept for code written against it.
pub use sinks::socket as server;
