//! Closed pipes: every command that prints ends quietly when its reader
//! goes away (`lorafleet jobs | head -1`), as `ls` and `grep` do.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use crate::common::fleet::{Fleet, short_spec, submit, text};

#[test]
fn printing_commands_end_quietly_when_their_reader_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "pipe-token");
    // Queued jobs (no worker) give `jobs`, `status` and `logs` lines to print.
    let spec = short_spec(dir, "pipe", 1, &dir.join("out"));
    let job = submit(&fleet, &spec);
    submit(&fleet, &spec);
    let spec_arg = spec.to_str().unwrap();
    for args in [
        vec!["jobs"],
        vec!["jobs", "--json"],
        vec!["status", job.as_str()],
        vec!["logs", job.as_str()],
        vec!["workers"],
        vec!["checkpoints", job.as_str()],
        vec!["validate", spec_arg],
        vec!["init-model", "--help"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
            .args(&args)
            .env("LORAFLEET_COORDINATOR", &fleet.url)
            .env("LORAFLEET_TOKEN", &fleet.token)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command prints anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
    }
}
