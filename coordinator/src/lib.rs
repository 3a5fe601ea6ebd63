//! lorafleet's control plane.
//!
//! Today it holds the YAML job spec ([`spec`]): its shape, defaults,
//! validation and error locations. The rest of the control plane (the gRPC
//! API, the SQLite store, gang scheduling, the server and the worker agent)
//! will live here too; see docs/ARCHITECTURE.md.
//!
//! **Architecture invariant:** dependencies point one way,
//! `lorafleet → coordinator → trainer`; no tensor type crosses into this
//! crate's public API.

pub mod spec;

pub use spec::{JobSpec, SpecError, SpecProblem};

/// The version workers and clients must share with the coordinator.
pub const PROTOCOL_VERSION: &str = env!("CARGO_PKG_VERSION");
