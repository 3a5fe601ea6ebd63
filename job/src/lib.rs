//! A lorafleet job, apart from any fleet.
//!
//! It owns the YAML job spec ([`spec`]: its shape, defaults, validation and
//! error locations) and the closed set of events a job emits ([`event`]). It does not own scheduling, storage of job state or
//! the gRPC API (those are `coordinator`'s), nor tensors (`trainer`'s); see
//! docs/ARCHITECTURE.md.
//!
//! **Architecture invariant:** dependencies point one way,
//! `lorafleet → coordinator → job → trainer`.

pub mod convert;
pub mod event;
pub mod recipe;
pub mod spec;

pub use event::JobEvent;
pub use spec::{JobSpec, SpecError, SpecProblem};
