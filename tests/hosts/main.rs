//! lorafleet across separate hosts: a coordinator, an S3 server and three
//! workers, each in a network namespace of its own with its own hostname,
//! `/dev/shm` and boot id (testkit's `netlab`), no folder shared with the
//! coordinator. The tests run a real 2-rank job there and check that it
//! ends with the 1-process adapter, that the ring speaks TCP between the
//! hosts, and that network partitions (a worker cut off, two ring workers
//! cut from each other, the coordinator cut from every worker, a short
//! cut) end with the same adapter in bounded extra time; and that
//! `lorafleet chaos --hosts` survives a partition.
//!
//! Each test builds its own lab and tears it down; the tests take turns
//! (one lab at a time: the machine is small and the timings matter). They
//! skip, saying why, where the machine cannot build a lab (not root, no
//! `ip netns`). `LORAFLEET_HOSTS_LINK=1` also runs the link measurement
//! of docs/PERFORMANCE.md (`link`).

#[path = "../common/mod.rs"]
mod common;

mod chaos;
mod fleet;
mod job;
mod link;
mod multi_host;
mod partitions;
mod wire;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Held by each test for its whole run: one lab at a time.
pub fn one_lab_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}
