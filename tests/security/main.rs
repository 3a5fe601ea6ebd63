//! The attack suite: each test does what a hostile tenant, worker, ring
//! peer or file would do against real `lorafleet` processes, and asserts
//! that it is refused with the documented error and that nothing is read
//! or written outside what the attacker may touch. docs/SECURITY.md lists
//! the attacks and where each boundary is checked.

#[path = "../common/mod.rs"]
mod common;

mod inputs;
mod lab;
mod outputs;
mod records;
mod ring;
mod tenants;
mod workers;
