//! lorafleet's control plane.
//!
//! This crate will own everything between a user's job spec and the workers
//! that train it: the YAML job spec and its validation (`spec`), the gRPC API
//! (`api`), the SQLite store (`store`), gang scheduling (`scheduler`), the
//! server that wires them together (`server`) and the worker agent that
//! drives the trainer (`agent`); see docs/ARCHITECTURE.md. None of these
//! exist yet: today the binary's local commands use `trainer` directly.
//!
//! **Architecture invariant:** dependencies point one way,
//! `lorafleet → coordinator → trainer`; no tensor type crosses into this
//! crate's public API.

/// The version workers and clients must share with the coordinator.
pub const PROTOCOL_VERSION: &str = env!("CARGO_PKG_VERSION");
