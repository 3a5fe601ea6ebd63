//! A lorafleet job, apart from any fleet.
//!
//! It owns the YAML job spec ([`spec`]: its shape, defaults, validation and
//! error locations). It does not own scheduling, storage of job state or
//! the gRPC API (those are `coordinator`'s), nor tensors (`trainer`'s); see
//! docs/ARCHITECTURE.md.
//!
//! **Architecture invariant:** dependencies point one way,
//! `lorafleet → coordinator → job → trainer`.

pub mod spec;

pub use spec::{JobSpec, SpecError, SpecProblem};
