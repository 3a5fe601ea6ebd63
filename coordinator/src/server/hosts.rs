//! Which hosts the fleet spans, and what follows from it: a worker's ring
//! address must be one other hosts can reach, and a local folder is
//! storage only while every worker shares the coordinator's host.
//!
//! A host is told by its kernel boot id (`/proc/sys/kernel/random/boot_id`),
//! which every worker sends at `Register`. Not here: how a worker finds its
//! address (`agent`), the ring itself (`trainer::collective`).

use std::net::SocketAddr;

use tonic::Status;

use job::spec::{JobSpec, PathOrUrl};

use super::Coordinator;

/// This host's kernel boot id ("" when unknown).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Refuses a ring address other hosts cannot use: unspecified (`0.0.0.0`),
/// or loopback while the worker connected from another address.
pub(super) fn check_ring_addr(
    worker: &str,
    ring_addr: &str,
    peer: Option<SocketAddr>,
) -> Result<(), Status> {
    let ring: SocketAddr = ring_addr.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "ring_addr {ring_addr:?} is not a host:port address"
        ))
    })?;
    if ring.ip().is_unspecified() || ring.port() == 0 {
        return Err(Status::invalid_argument(format!(
            "worker {worker} advertises ring address {ring}, which no peer can connect to: give --ring-host an address of this host (or leave it out to use the one that reaches the coordinator)"
        )));
    }
    if let Some(peer) = peer
        && ring.ip().is_loopback()
        && !peer.ip().is_loopback()
    {
        return Err(Status::invalid_argument(format!(
            "worker {worker} advertises ring address {ring}, but it connected from {}: ranks on other hosts cannot reach a loopback address. Start it without --ring-host (it then uses the address it reaches the coordinator from) or with --ring-host set to an address other hosts can reach",
            peer.ip()
        )));
    }
    Ok(())
}

impl Coordinator {
    /// Refuses a local-folder `checkpoint.storage` while some connected
    /// worker runs on another host: its ranks would write checkpoints the
    /// coordinator (and the job's next attempt) cannot read.
    pub(super) fn check_storage_reach(&self, spec: &JobSpec) -> Result<(), Status> {
        let storage = &spec.checkpoint.storage;
        let local = match storage {
            PathOrUrl::Path(_) => true,
            PathOrUrl::Url(url) => url.starts_with("file:"),
        };
        if !local {
            return Ok(());
        }
        let here = boot_id();
        let fleet = self.fleet();
        let mut elsewhere: Vec<String> = fleet
            .boot_ids
            .iter()
            .filter(|(id, boot)| {
                fleet.links.contains_key(*id) && !boot.is_empty() && **boot != here
            })
            .map(|(id, _)| id.to_string())
            .collect();
        if elsewhere.is_empty() {
            return Ok(());
        }
        elsewhere.sort();
        Err(Status::invalid_argument(format!(
            "checkpoint.storage: {storage} is a folder on the coordinator's host, but worker(s) {} run on other hosts and cannot write there: use object storage (s3://, gs:// or az://) for a fleet across hosts",
            elsewhere.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_loopback_ring_address_is_refused_from_another_host() {
        let err = check_ring_addr("w1", "127.0.0.1:4000", addr("10.1.0.5:5000")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("connected from 10.1.0.5"),
            "{}",
            err.message()
        );
        check_ring_addr("w1", "127.0.0.1:4000", addr("127.0.0.1:5000")).unwrap();
        check_ring_addr("w1", "10.1.0.5:4000", addr("10.1.0.5:5000")).unwrap();
        check_ring_addr("w1", "[::1]:4000", addr("[::1]:5000")).unwrap();
        assert!(check_ring_addr("w1", "[::1]:4000", addr("10.1.0.5:5000")).is_err());
    }

    #[test]
    fn an_unspecified_ring_address_is_refused() {
        assert!(check_ring_addr("w1", "0.0.0.0:4000", None).is_err());
        assert!(check_ring_addr("w1", "10.0.0.1:0", None).is_err());
        assert!(check_ring_addr("w1", "somewhere", None).is_err());
    }
}
