//! lorafleet's control plane.
//!
//! It holds the coordinator's state in SQLite
//! ([`store`]: tenants, jobs and their status machine, attempts, workers,
//! events, checkpoints; a restart loses nothing) and gang placement
//! ([`scheduler`]: pure decisions from a snapshot of waiting jobs and
//! workers) inside the control loop's pure rounds ([`plan`]: holds,
//! placements, elastic growth, restarts and fences), the gRPC API
//! ([`api`], and [`client`] to call it), the coordinator process that
//! wires them together ([`server`]) and the worker side ([`agent`]); see
//! docs/ARCHITECTURE.md.
//!
//! **Architecture invariant:** dependencies point one way,
//! `lorafleet → coordinator → job → trainer`; no tensor type crosses into this
//! crate's public API.

pub mod agent;
pub mod api;
pub mod client;
pub mod local_fleet;
pub mod plan;
pub mod scheduler;
pub mod server;
pub mod store;

/// The version workers and clients must share with the coordinator.
pub const PROTOCOL_VERSION: &str = env!("CARGO_PKG_VERSION");
