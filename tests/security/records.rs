//! Oversized dataset records: one long JSONL line gives a clear
//! `FILE:LINE` error or is cut before tokenizing, and memory stays within
//! the documented bound (docs/SECURITY.md): peak RSS of `validate` at most
//! 64 MiB + 10 × the largest record, records being at most 16 MB.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::fleet::{Fleet, text};
use crate::common::{repo, spec_in};

const MIB: u64 = 1 << 20;

/// The quickstart's training data followed by `count` completion records
/// whose completions are `bytes` long.
fn dataset_with_long_records(dir: &Path, name: &str, count: usize, bytes: usize) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    file.write_all(&std::fs::read(repo("examples/data/quickstart-train.jsonl")).unwrap())
        .unwrap();
    let long = "word ".repeat(bytes / 5);
    for _ in 0..count {
        writeln!(file, r#"{{"prompt": "Reverse: ", "completion": "{long}"}}"#).unwrap();
    }
    file.flush().unwrap();
    path
}

/// The quickstart spec training on `data`.
fn spec_for(dir: &Path, data: &Path) -> PathBuf {
    let original = repo("examples/data/quickstart-train.jsonl");
    let spec = spec_in(dir, "quickstart.yaml", |t| {
        t.replace(original.to_str().unwrap(), data.to_str().unwrap())
    });
    let renamed = dir.join(format!(
        "{}.yaml",
        data.file_stem().unwrap().to_str().unwrap()
    ));
    std::fs::rename(spec, &renamed).unwrap();
    renamed
}

/// Runs `lorafleet ARGS`; its exit code, stderr and peak RSS in bytes.
// The child is reaped by `wait4`, which also gives its resource usage.
#[allow(clippy::zombie_processes)]
fn measured(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, u64) {
    let stderr = tempfile::tempfile().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just spawned; `status` and `usage` are ours.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let mut stderr = stderr;
    use std::io::{Read, Seek};
    stderr.rewind().unwrap();
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    (code, err, usage.ru_maxrss as u64 * 1024)
}

#[test]
fn a_long_record_is_cut_before_tokenizing_within_the_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (name, count, bytes) in [
        ("one-4mb.jsonl", 1, 4_000_000),
        ("ten-15mb.jsonl", 10, 15_000_000),
    ] {
        let data = dataset_with_long_records(dir, name, count, bytes);
        let spec = spec_for(dir, &data);
        let (code, stderr, rss) = measured(&["validate", spec.to_str().unwrap()], &[]);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        let bound = 64 * MIB + 10 * bytes as u64;
        assert!(
            rss <= bound,
            "{name}: peak RSS {} MiB, over {} MiB",
            rss / MIB,
            bound / MIB
        );
    }
}

#[test]
fn a_record_over_the_limit_is_refused_by_validate_submit_and_the_coordinator() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dataset_with_long_records(dir, "huge.jsonl", 1, 100_000_000);
    let spec = spec_for(dir, &data);
    let line = 2001; // after the quickstart's 2000 records
    let expected = format!(
        "{}:{line}: record is 100.0 MB, over the 16 MB limit",
        data.display()
    );
    let (code, stderr, rss) = measured(&["validate", spec.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    let bound = 64 * MIB + 10 * 16_000_000;
    assert!(
        rss <= bound,
        "peak RSS {} MiB, over {} MiB",
        rss / MIB,
        bound / MIB
    );

    // `submit` refuses it before uploading a byte.
    let fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "records-token");
    let (code, stderr, _) = measured(
        &["submit", spec.to_str().unwrap()],
        &[
            ("LORAFLEET_COORDINATOR", &fleet.url),
            ("LORAFLEET_TOKEN", &fleet.token),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    let uploads = dir.join("state.db.d/datasets");
    let stored: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        stored
            .iter()
            .all(|t| std::fs::read_dir(t).unwrap().next().is_none()),
        "{stored:?}"
    );

    // A client that uploads it anyway is refused at submit by the
    // coordinator, which reads it with the same limit.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let conn = crate::lab::connect(&runtime, &fleet.url, &fleet.token);
    let refused = runtime.block_on(async {
        let bytes = std::fs::read(&data).unwrap();
        let chunks: Vec<_> = bytes
            .chunks(coordinator::api::CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| coordinator::api::DatasetChunk {
                file_name: if i == 0 {
                    "huge.jsonl".into()
                } else {
                    String::new()
                },
                data: c.to_vec(),
            })
            .collect();
        drop(bytes);
        let stored = conn
            .jobs()
            .upload_dataset(tokio_stream::iter(chunks))
            .await
            .unwrap()
            .into_inner();
        let mut request = crate::lab::submit_request(&std::fs::read_to_string(&spec).unwrap(), dir);
        request.datasets.insert("dataset.train".into(), stored.url);
        conn.jobs().submit(request).await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains(&format!(
            ":{line}: record is 100.0 MB, over the 16 MB limit"
        )),
        "{}",
        text(refused.message().as_bytes())
    );
}
