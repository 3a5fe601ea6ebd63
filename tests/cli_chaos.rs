//! `lorafleet chaos`: a job on a local fleet survives a killed and a
//! frozen worker, finishes with the undisturbed job's adapter within its
//! time allowance, and nothing the run started outlives it.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the whole run may take before it is stopped and the test fails.
const LIMIT: Duration = Duration::from_secs(400);

#[test]
fn a_job_survives_killed_and_frozen_workers_and_nothing_outlives_the_run() {
    let marker = format!("chaos-{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args([
            "chaos",
            "--runs",
            "1",
            "--seed",
            "7",
            "--detection-bound",
            "3",
        ])
        .args(["--faults-per-job", "2", "--steps", "30", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LORAFLEET_TEST_MARKER", &marker)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let finished = wait_at_most(&mut child, LIMIT);
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let Some(status) = finished else {
        panic!("chaos ran past {LIMIT:?} and was stopped; its stderr:\n{stderr}");
    };
    assert!(status.success(), "chaos exited with {status}:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}\n{stderr}"));
    for key in [
        "runs",
        "faults",
        "succeeded",
        "max_deviation",
        "worst_extra_s",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {report}\n{stderr}");
    }
    assert_eq!(report["runs"], 1, "{report}");
    assert_eq!(report["succeeded"], report["runs"], "{report}\n{stderr}");
    assert!(
        report["faults"].as_u64().unwrap() >= 2,
        "{report}\n{stderr}"
    );
    let deviation = report["max_deviation"].as_f64().unwrap();
    assert!(deviation <= 1e-4, "{report}\n{stderr}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes started by chaos outlived it: {:?}",
            processes_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits for `child` up to `limit`; past it, SIGTERM (so it stops what it
/// started), then SIGKILL after 15 s, and `None`.
fn wait_at_most(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: signalling a child we started and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Processes whose environment holds `LORAFLEET_TEST_MARKER=marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let me = std::process::id();
    let needle = format!("LORAFLEET_TEST_MARKER={marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}
