//! A 2-rank job across hosts: it succeeds, ends with the 1-process
//! adapter, and its ring runs over TCP between the two worker hosts (no
//! shared memory: each host has its own boot id and `/dev/shm`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::common::fleet::text;
use crate::fleet::{COORD, HostFleet, worker_name};
use crate::job::{TOLERANCE, deviation_from_reference, prepare_inputs, run_job, story};
use crate::wire::{established, processes_beside, shm_files};

#[test]
fn a_two_rank_job_across_hosts_trains_the_one_process_adapter_over_tcp() {
    let _turn = crate::one_lab_at_a_time();
    let Some(fleet) = HostFleet::start(3) else {
        return;
    };
    let inputs = prepare_inputs(&fleet);
    let worker_ips: Vec<(String, Ipv4Addr)> = (1..=3)
        .map(|i| {
            let name = worker_name(i);
            let ip = fleet.lab.host(&name).ip().parse().unwrap();
            (name, ip)
        })
        .collect();
    // Between polls: which worker hosts run a rank, the TCP connections
    // between worker hosts, and any file in a rank host's /dev/shm.
    let mut ring_links = BTreeSet::new();
    let mut rank_hosts = BTreeSet::new();
    let mut shm_seen = Vec::new();
    let watch = run_job(&fleet, &inputs, "across-hosts", 2, |_| {
        for (name, _) in &worker_ips {
            let worker = fleet.worker_pid(name);
            let ranks = processes_beside(worker, "train");
            if ranks.is_empty() {
                continue;
            }
            rank_hosts.insert(name.clone());
            shm_seen.extend(
                shm_files(ranks[0])
                    .into_iter()
                    .map(|f| format!("{name}: {f}")),
            );
            for (local, remote) in established(worker) {
                let is_worker = |ip: Ipv4Addr| worker_ips.iter().any(|(_, w)| *w == ip);
                if is_worker(local.0) && is_worker(remote.0) && local.0 != remote.0 {
                    ring_links.insert((local.0, remote.0));
                }
            }
        }
    });
    assert_eq!(
        watch.status,
        "succeeded",
        "{watch:?}\n{}",
        fleet.log_tails()
    );
    assert_eq!(watch.attempt, 1, "{watch:?}\n{}", story(&fleet, &watch.id));
    assert_eq!(rank_hosts.len(), 2, "ranks ran on {rank_hosts:?}");
    assert!(
        !ring_links.is_empty(),
        "no TCP connection between the rank hosts {rank_hosts:?} was seen\n{}",
        fleet.log_tails()
    );
    assert!(
        shm_seen.is_empty(),
        "the ranks used shared memory: {shm_seen:?}"
    );
    // No shared folder: a worker host sees nothing of the coordinator's
    // state and uploads (nor of the submitter's files beside them).
    let coordinator_folder = fleet.lab.host(COORD).private_dir();
    assert!(coordinator_folder.join("state").is_dir());
    let worker = fleet.lab.host("w1");
    let mut ls = worker.command("ls");
    ls.arg("-A").arg(coordinator_folder);
    let seen = fleet.lab.host("w1").output(ls, Duration::from_secs(10));
    assert!(seen.status.success(), "{}", text(&seen.stderr));
    assert!(
        seen.stdout.is_empty(),
        "a worker sees the coordinator's folder: {}",
        text(&seen.stdout)
    );
    let deviation = deviation_from_reference(&fleet, &watch.id);
    assert!(
        deviation <= TOLERANCE,
        "the adapter deviates {deviation:e} from one process's"
    );
    eprintln!(
        "across hosts: {:.1} s, ring links {ring_links:?}, deviation {deviation:e}",
        watch.wall.as_secs_f64()
    );
}
