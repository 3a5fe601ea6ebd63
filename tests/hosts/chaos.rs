//! `lorafleet chaos --hosts`: the chaos fleet on a network lab, with the
//! `partition` fault. One disturbed job with one partition, judged by
//! chaos itself (exit 0: succeeded, the undisturbed adapter, extra time
//! within its allowance), and `--faults partition` refused without a lab.

use std::process::Command;
use std::time::Duration;

use testkit::netlab::Lab;

use crate::common::fleet::text;

/// The chaos run gets this long; it takes about a minute.
const CHAOS_LIMIT: Duration = Duration::from_secs(300);

#[test]
fn a_partition_needs_hosts() {
    let out = crate::common::lorafleet(&["chaos", "--runs", "1", "--faults", "partition"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--faults partition needs --hosts"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn chaos_on_hosts_survives_a_partition() {
    if let Err(why) = Lab::available() {
        eprintln!("skipped: chaos --hosts needs a network lab, and {why}");
        return;
    }
    let _turn = crate::one_lab_at_a_time();
    let keep = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .current_dir(crate::common::repo(""))
        .args(["chaos", "--hosts", "--runs", "1", "--faults-per-job", "1"])
        .args([
            "--faults",
            "partition",
            "--steps",
            "20",
            "--detection-bound",
            "3",
        ])
        .args(["--seed", "7", "--json", "--keep"])
        .arg(keep.path())
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let (stdout, stderr) = (read(Box::new(stdout)), read(Box::new(stderr)));
    let deadline = std::time::Instant::now() + CHAOS_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            // SIGINT: chaos stops its fleet and lab on it.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
            panic!("chaos --hosts ran past {CHAOS_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "chaos --hosts: {status}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["succeeded"], 1, "{report}");
    assert_eq!(
        report["jobs"][0]["faults"][0]["kind"], "partition",
        "{report}"
    );
    assert!(
        report["max_deviation"].as_f64().unwrap() <= 1e-4,
        "{report}"
    );
}
