//! Hostile ring peers: idle and garbage connections to a rank's ring port,
//! and a rank of another attempt, must not keep the real peers from
//! joining.

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::fleet::text;
use crate::common::{free_peers, spawn_rank, spec_in};

/// Waits for `child`, killing it (and failing the test) past `limit`.
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("a rank was still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn idle_connections_to_a_ring_port_do_not_stop_a_two_rank_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = spec_in(dir, "quickstart.yaml", |t| {
        t.replace("max_steps: 150", "max_steps: 3")
            .replace("threads_per_worker: 2", "threads_per_worker: 1")
            .replace("eval_every: 25", "eval_every: 3")
    });
    let spec = spec.to_str().unwrap();
    let peers = free_peers(2);
    let rank0_port = peers.split(',').next().unwrap().to_string();
    let rank0 = spawn_rank(&["train", spec, "--ring-timeout", "20"], 0, 2, &peers);
    // Twelve callers connect to rank 0's ring port and say nothing, one
    // sends garbage; all before rank 1 starts, and all stay open.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = Vec::new();
    while held.len() < 13 {
        match TcpStream::connect(&rank0_port) {
            Ok(c) => held.push(c),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("rank 0 never listened: {e}"),
        }
    }
    held[12].write_all(&[0xde; 300]).unwrap();
    // A rank 1 of another attempt calls too, and is refused.
    let stranger_peers = format!("{rank0_port},{}", free_peers(1));
    let stranger = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(["bench", "allreduce", "--sizes", "4K", "--iters", "1"])
        .args(["--ring-timeout", "10", "--rank", "1", "--peers"])
        .arg(&stranger_peers)
        .env("LORAFLEET_RING_SECRET", "another attempt's secret, 32 ch!")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(stranger, Duration::from_secs(60));
    assert!(!out.status.success(), "a wrong secret joined");
    assert!(
        text(&out.stderr).contains("secret"),
        "{}",
        text(&out.stderr)
    );

    let rank1 = spawn_rank(&["train", spec, "--ring-timeout", "20"], 1, 2, &peers);
    let mut stderr = Vec::new();
    for (rank, child) in [rank0, rank1].into_iter().enumerate() {
        let out = wait_bounded(child, Duration::from_secs(120));
        assert!(out.status.success(), "rank {rank}: {}", text(&out.stderr));
        stderr.push(text(&out.stderr));
    }
    drop(held);
    assert!(
        dir.join("runs/quickstart/final/adapter_model.safetensors")
            .is_file()
    );
    // Rank 0 logged why it refused the garbage and the wrong secret.
    for why in [
        "not a lorafleet ring peer",
        "does not know this attempt's secret",
    ] {
        assert!(stderr[0].contains(why), "{why}: {}", stderr[0]);
    }
}
