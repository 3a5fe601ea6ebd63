//! Hostile inputs: absurd numbers in specs and model configs. Each is one
//! clear error naming the field and its bound (exit 2), before anything is
//! allocated, stored or sent. And readers that go away: a command whose
//! output pipe closes under it ends quietly (SIGPIPE), whether it was
//! printing a line, returning a write error, or printing its error.

use std::io::BufRead;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::fleet::{Fleet, short_spec, submit, text};
use crate::common::{lorafleet, spec_in};

/// `init-model --preset tiny` into `dir/model`.
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    let out = lorafleet(&[
        "init-model",
        "--preset",
        "tiny",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    model
}

#[test]
fn an_absurd_layer_count_in_config_json_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let config_path = model.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["num_hidden_layers"] = serde_json::json!(1u64 << 30);
    std::fs::write(&config_path, config.to_string()).unwrap();

    let expected = "num_hidden_layers is 1073741824, over the limit of 1024";
    let out = lorafleet(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(expected),
        "{}",
        text(&out.stderr)
    );
    // A spec training on it says the same at validate.
    let spec = spec_in(tmp.path(), "quickstart.yaml", |t| {
        t.replace("  preset: tiny", &format!("  path: {}", model.display()))
    });
    let out = lorafleet(&["validate", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(expected),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_step_count_past_the_bound_is_refused_at_validate_and_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_in(tmp.path(), "quickstart.yaml", |t| {
        t.replace("max_steps: 150", "max_steps: 18446744073709551615")
    });
    let spec = spec.to_str().unwrap();
    let expected = "training.max_steps: must be at most 1000000000, got 18446744073709551615";
    let out = lorafleet(&["validate", spec]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(expected),
        "{}",
        text(&out.stderr)
    );

    let fleet = Fleet::serve(
        &tmp.path().join("state.db"),
        "127.0.0.1:0",
        None,
        "bounds-token",
    );
    let out = fleet.cli(Some(&fleet.token), &["submit", spec]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(expected),
        "{}",
        text(&out.stderr)
    );
    // Sent anyway, the coordinator refuses it the same way (not INTERNAL).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let conn = crate::lab::connect(&runtime, &fleet.url, &fleet.token);
    let request = crate::lab::submit_request(&std::fs::read_to_string(spec).unwrap(), tmp.path());
    let refused = runtime.block_on(conn.jobs().submit(request)).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains(expected),
        "{}",
        refused.message()
    );
}

/// Runs `lorafleet ARGS` with its stdout or its stderr (`which`: 1 or 2) a
/// pipe whose reader is already gone, so its first write there fails.
fn with_closed(which: u32, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut command = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
    command
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    if which == 1 {
        command.stdout(writer).stderr(Stdio::piped());
    } else {
        command.stdout(Stdio::piped()).stderr(writer);
    }
    command.output().unwrap()
}

fn assert_ended_by_sigpipe(out: &Output, what: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{what}: {stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{what}: {:?} {stderr}",
        out.status
    );
}

#[test]
fn jobs_into_a_reader_that_stops_after_one_line_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "head-token");
    let spec = short_spec(dir, "head", 1, &dir.join("out"));
    for _ in 0..3 {
        submit(&fleet, &spec);
    }
    for args in [["jobs"].as_slice(), &["jobs", "--json"]] {
        // `lorafleet jobs | head -1`.
        let mut child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
            .args(args)
            .env("LORAFLEET_COORDINATOR", &fleet.url)
            .env("LORAFLEET_TOKEN", &fleet.token)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.trim().is_empty(), "{args:?} printed nothing");
        let out = child.wait_with_output().unwrap();
        let stderr = text(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        // All of it may have fit in the pipe before the reader left.
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
        // Its reader gone before its first line, it ends by the signal.
        let env = [
            ("LORAFLEET_COORDINATOR", fleet.url.as_str()),
            ("LORAFLEET_TOKEN", fleet.token.as_str()),
        ];
        assert_ended_by_sigpipe(&with_closed(1, args, &env), &format!("{args:?}"));
    }
}

#[test]
fn a_write_error_or_an_error_message_into_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    // `generate` returns its write error (`writeln!(..)?`) rather than
    // panicking in `println!`: the same quiet end.
    for json in [false, true] {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt-ids",
            "1,2",
            "--max-new-tokens",
            "2",
        ];
        if json {
            args.push("--json");
        }
        assert_ended_by_sigpipe(&with_closed(1, &args, &[]), &format!("{args:?}"));
    }
    // A bad spec whose error message has nowhere to go: no panic (exit
    // 101), the signal.
    let spec = spec_in(tmp.path(), "quickstart.yaml", |t| {
        t.replace("max_steps: 150", "max_steps: 18446744073709551615")
    });
    let out = with_closed(2, &["validate", spec.to_str().unwrap()], &[]);
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

#[test]
fn printing_commands_end_quietly_when_their_reader_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "pipe-token");
    // Queued jobs (no worker) give `status`, `logs` and `checkpoints`
    // something to print.
    let spec = short_spec(dir, "pipe", 1, &dir.join("out"));
    let job = submit(&fleet, &spec);
    let env = [
        ("LORAFLEET_COORDINATOR", fleet.url.as_str()),
        ("LORAFLEET_TOKEN", fleet.token.as_str()),
    ];
    for args in [
        vec!["status", job.as_str()],
        vec!["logs", job.as_str()],
        vec!["workers"],
        vec!["checkpoints", job.as_str()],
        vec!["validate", spec.to_str().unwrap()],
    ] {
        assert_ended_by_sigpipe(&with_closed(1, &args, &env), &format!("{args:?}"));
    }
}
