//! Data-parallel training across real rank processes on 127.0.0.1:
//! N ranks give the 1-rank result, the same N gives the same bits, and a
//! rank killed with SIGKILL brings the others down with a clear error
//! within the ring's timeout.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{
    SECRET, adapter, free_peers, lorafleet, losses, max_relative_difference, spawn_rank, spec_in,
};

/// A 20-step quickstart on one thread per rank, writing to `dir/out-<tag>`.
fn short_quickstart(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let out = dir.join(format!("out-{tag}"));
    let spec = spec_in(dir, "quickstart.yaml", |t| {
        t.replace("max_steps: 150", "max_steps: 20")
            .replace("threads_per_worker: 2", "threads_per_worker: 1")
            .replace("eval_every: 25", "eval_every: 10")
            .replace(
                &format!("{}/quickstart/final", dir.join("runs").display()),
                out.to_str().unwrap(),
            )
    });
    let renamed = dir.join(format!("quickstart-{tag}.yaml"));
    std::fs::rename(&spec, &renamed).unwrap();
    (renamed, out)
}

fn train(dir: &Path, tag: &str, world: usize) -> PathBuf {
    let (spec, out) = short_quickstart(dir, tag);
    let spec = spec.to_str().unwrap();
    if world == 1 {
        let o = lorafleet(&["train", spec]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        return out;
    }
    let peers = free_peers(world);
    let ranks: Vec<Child> = (0..world)
        .map(|r| spawn_rank(&["train", spec], r, world, &peers))
        .collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{tag} rank {r}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    out
}

#[test]
fn two_and_four_ranks_train_the_one_rank_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let one = train(tmp.path(), "w1", 1);
    let two = train(tmp.path(), "w2", 2);
    let two_again = train(tmp.path(), "w2b", 2);
    let four = train(tmp.path(), "w4", 4);

    let reference = adapter(&one);
    let reference_losses = losses(&one);
    assert_eq!(reference_losses.len(), 20);
    for (tag, out) in [("2 ranks", &two), ("4 ranks", &four)] {
        let dev = max_relative_difference(&adapter(out), &reference);
        assert!(dev <= 1e-4, "{tag}: adapter deviates by {dev:e}");
        for (step, (a, b)) in losses(out).iter().zip(&reference_losses).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs(),
                "{tag} step {}: loss {a} vs {b}",
                step + 1
            );
        }
    }
    // The same world size repeats bit for bit.
    assert_eq!(
        std::fs::read(two.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(two_again.join("adapter_model.safetensors")).unwrap()
    );
    let bits = |d: &Path| losses(d).iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&two), bits(&two_again));
}

#[test]
fn a_rank_killed_mid_all_reduce_fails_the_others_within_the_timeout() {
    break_one_rank_mid_all_reduce("tcp", Fault::Kill);
}

#[test]
fn a_rank_killed_mid_all_reduce_over_shared_memory_fails_the_others_too() {
    break_one_rank_mid_all_reduce("shm", Fault::Kill);
}

#[test]
fn a_rank_frozen_mid_all_reduce_fails_the_others_within_the_timeout() {
    break_one_rank_mid_all_reduce("tcp", Fault::Freeze);
}

#[test]
fn a_rank_frozen_mid_all_reduce_over_shared_memory_fails_the_others_too() {
    break_one_rank_mid_all_reduce("shm", Fault::Freeze);
}

/// A child killed when this goes out of scope, even a stopped one, even
/// when the test fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What happens to rank 1.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL: its connections close.
    Kill,
    /// SIGSTOP: its connections stay open and it says nothing.
    Freeze,
}

/// Kills or freezes rank 1 of a busy 3-rank ring: ranks 0 and 2 must both
/// fail within the timeout and name rank 1, whichever of them notices first.
fn break_one_rank_mid_all_reduce(transport: &str, fault: Fault) {
    let world = 3;
    let timeout_s = 5;
    let peers = free_peers(world);
    let args = [
        "bench",
        "allreduce",
        "--sizes",
        "16M",
        "--iters",
        "100000",
        "--ring-timeout",
        "5",
        "--transport",
        transport,
    ];
    let mut ranks: Vec<Child> = (0..world)
        .map(|r| {
            Command::new(env!("CARGO_BIN_EXE_lorafleet"))
                .args(args)
                .args(["--rank", &r.to_string(), "--peers", &peers])
                .env("LORAFLEET_RING_SECRET", SECRET)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Let the ring form and get busy, then SIGKILL rank 1.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        ranks.iter_mut().all(|c| c.try_wait().unwrap().is_none()),
        "the ring did not start"
    );
    let killed_at = Instant::now();
    if fault == Fault::Freeze {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(ranks[1].id() as libc::pid_t, libc::SIGSTOP) };
    } else {
        ranks[1].kill().unwrap();
        ranks[1].wait().unwrap();
    }
    let _broken = KillOnDrop(ranks.remove(1));

    for (r, child) in [0, 2].into_iter().zip(ranks) {
        let o: Output = wait_bounded(child, Duration::from_secs(timeout_s + 5));
        let took = killed_at.elapsed();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "rank {r} did not notice");
        assert!(
            took <= Duration::from_secs(timeout_s + 1),
            "rank {r} took {took:?}: {err}"
        );
        // A frozen rank looks like a slow one: a rank waiting on a
        // neighbour that itself waits on rank 1 may time out first and
        // name that neighbour; either way it says who went silent.
        let named =
            err.contains("rank 1") || (fault == Fault::Freeze && err.contains("did not answer"));
        assert!(named, "rank {r} does not name the silent rank: {err}");
    }
}

/// Waits for `child`, killing it (and failing) past `limit`.
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("a rank hung for {limit:?} after its peer died");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_rank_without_the_secret_or_with_another_spec_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, _) = short_quickstart(tmp.path(), "s");
    let o = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args([
            "train",
            spec.to_str().unwrap(),
            "--rank",
            "0",
            "--world",
            "2",
        ])
        .args(["--peers", &free_peers(2)])
        .env_remove("LORAFLEET_RING_SECRET")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("LORAFLEET_RING_SECRET"));

    // Two ranks on different specs stop before training.
    let (other, _) = short_quickstart(tmp.path(), "t");
    let text = std::fs::read_to_string(&other)
        .unwrap()
        .replace("seed: 42", "seed: 43");
    std::fs::write(&other, text).unwrap();
    let peers = free_peers(2);
    let a = spawn_rank(&["train", spec.to_str().unwrap()], 0, 2, &peers);
    let b = spawn_rank(&["train", other.to_str().unwrap()], 1, 2, &peers);
    for child in [a, b] {
        let o = wait_bounded(child, Duration::from_secs(60));
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("disagree on the job spec"), "{err}");
    }
}
