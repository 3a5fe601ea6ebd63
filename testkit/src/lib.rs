//! Dev-only helpers for lorafleet's tests: a real SeaweedFS S3 server
//! ([`SeaweedFs`], see [`seaweedfs`]) and network labs of hosts in network
//! namespaces ([`netlab`]).
//!
//! Not here: lorafleet's own storage layer, which only ever sees an
//! `object_store::ObjectStore` or the environment.

pub mod netlab;
pub mod seaweedfs;
mod weed_process;

pub use seaweedfs::SeaweedFs;
