//! Oversized dataset records: one long JSONL line gives a clear
//! `FILE:LINE` error or is cut before tokenizing, and the peak RSS of
//! `validate` stays within the documented bound (docs/SECURITY.md,
//! [`bound`]), measured with `wait4`'s `ru_maxrss`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::fleet::{Fleet, text};
use crate::common::{repo, spec_in};

const MIB: u64 = 1 << 20;

/// The documented bound on the peak RSS of `lorafleet validate`, beyond
/// the 5 bytes each kept token costs: 80 MiB, plus 8 × the largest record
/// (reading, parsing and cutting it), plus 512 bytes for each byte of text
/// tokenized at once (at least 256 KiB; one sample's text, cut to
/// [`tokenized_budget`], twice that for a chat): half for tokenizing, half
/// for what threads may keep of it once freed.
fn bound(largest_record: u64, tokenized_at_once: u64) -> u64 {
    80 * MIB + 8 * largest_record + 512 * tokenized_at_once.max(256 << 10)
}

/// The bytes of one text that are tokenized at `max_seq_len`
/// (`trainer::data::format::tokenized_text_budget`).
fn tokenized_budget(max_seq_len: u64) -> u64 {
    max_seq_len * 128 + (64 << 10)
}

/// A dataset file: `lines`, one a line.
fn dataset(dir: &Path, name: &str, lines: impl IntoIterator<Item = String>) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
    file.flush().unwrap();
    path
}

/// The quickstart's training data followed by `count` completion records
/// whose completions are `bytes` long.
fn dataset_with_long_records(dir: &Path, name: &str, count: usize, bytes: usize) -> PathBuf {
    let quickstart = std::fs::read_to_string(repo("examples/data/quickstart-train.jsonl")).unwrap();
    let long = "word ".repeat(bytes / 5);
    let records =
        (0..count).map(|_| format!(r#"{{"prompt": "Reverse: ", "completion": "{long}"}}"#));
    dataset(
        dir,
        name,
        quickstart.lines().map(str::to_string).chain(records),
    )
}

/// The quickstart spec training on `data` with `max_seq_len`.
fn spec_for(dir: &Path, data: &Path, max_seq_len: u64) -> PathBuf {
    let original = repo("examples/data/quickstart-train.jsonl");
    let spec = spec_in(dir, "quickstart.yaml", |t| {
        t.replace(original.to_str().unwrap(), data.to_str().unwrap())
            .replace("max_seq_len: 128", &format!("max_seq_len: {max_seq_len}"))
    });
    let renamed = dir.join(format!(
        "{}.yaml",
        data.file_stem().unwrap().to_str().unwrap()
    ));
    std::fs::rename(spec, &renamed).unwrap();
    renamed
}

/// Runs `lorafleet ARGS`; its exit code, stderr and peak RSS in bytes.
///
/// The peak is the child's `VmHWM` (/proc/PID/status), read every 5 ms
/// until it exits: its own memory from `exec` on. (`wait4`'s `ru_maxrss`
/// would also count this test process's own peak, which a child spawned
/// with `vfork` inherits at `exec`, and the other tests of this binary run
/// in the same process.)
fn measured(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, u64) {
    let stderr = tempfile::tempfile().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let status = loop {
        // Read before reaping: once reaped, the file is gone.
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line
                .trim_start_matches("VmHWM:")
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap();
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let mut stderr = stderr;
    use std::io::{Read, Seek};
    stderr.rewind().unwrap();
    let mut err = String::new();
    stderr.read_to_string(&mut err).unwrap();
    (status.code(), err, peak_kib * 1024)
}

#[test]
fn long_records_are_cut_before_tokenizing_within_the_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let chat = |turns: &[(&str, &str)]| -> String {
        let messages: Vec<_> = turns
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        serde_json::json!({ "messages": messages }).to_string()
    };
    let short_chats = || (0..20).map(|_| chat(&[("user", "hi"), ("assistant", "hello")]));
    let short_texts = || (0..20).map(|_| r#"{"text": "a short text"}"#.to_string());
    let word_text =
        |bytes: usize| serde_json::json!({"text": "word ".repeat(bytes / 5)}).to_string();
    // (file, max_seq_len, whether its records are chats)
    let cases = [
        (
            dataset_with_long_records(dir, "one-4mb.jsonl", 1, 4_000_000),
            128,
            false,
        ),
        (
            dataset_with_long_records(dir, "ten-15mb.jsonl", 10, 15_000_000),
            128,
            false,
        ),
        // A 15 MB conversation of 350,000 short turns: cut by its rendering.
        (
            dataset(
                dir,
                "chat-15mb.jsonl",
                short_chats().chain([chat(
                    &[("user", "question"), ("assistant", "an answer")].repeat(175_000),
                )]),
            ),
            128,
            true,
        ),
        // Records under the budget (kept whole), more than are tokenized at once.
        (
            dataset(
                dir,
                "texts-300kb.jsonl",
                short_texts().chain((0..14).map(|_| word_text(300_000))),
            ),
            2048,
            false,
        ),
    ];
    for (data, max_seq_len, is_chat) in cases {
        let name = data.file_name().unwrap().to_string_lossy().into_owned();
        let largest = std::fs::read_to_string(&data)
            .unwrap()
            .lines()
            .map(str::len)
            .max()
            .unwrap() as u64;
        let tokenized = largest.min(tokenized_budget(max_seq_len)) * if is_chat { 2 } else { 1 };
        let spec = spec_for(dir, &data, max_seq_len);
        let bound = bound(largest, tokenized);
        // The bound does not grow with the threads that tokenize.
        for threads in [None, Some("16")] {
            let env: Vec<(&str, &str)> = threads
                .map(|n| ("RAYON_NUM_THREADS", n))
                .into_iter()
                .collect();
            let (code, stderr, rss) = measured(&["validate", spec.to_str().unwrap()], &env);
            assert_eq!(code, Some(0), "{name}: {stderr}");
            let threads = threads.unwrap_or("default");
            eprintln!(
                "{name}, {threads} threads: peak RSS {} MiB (bound {} MiB)",
                rss / MIB,
                bound / MIB
            );
            assert!(
                rss <= bound,
                "{name}, {threads} threads: peak RSS {} MiB, over {} MiB",
                rss / MIB,
                bound / MIB
            );
        }
    }
}

#[test]
fn a_record_over_the_limit_is_refused_by_validate_submit_and_the_coordinator() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dataset_with_long_records(dir, "huge.jsonl", 1, 100_000_000);
    let spec = spec_for(dir, &data, 128);
    let line = 2001; // after the quickstart's 2000 records
    let expected = format!(
        "{}:{line}: record is 100.0 MB, over the 16 MB limit",
        data.display()
    );
    let (code, stderr, rss) = measured(&["validate", spec.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    // The record is counted up to the limit, never kept.
    let bound = bound(16_000_000, tokenized_budget(128));
    eprintln!(
        "huge.jsonl: peak RSS {} MiB (bound {} MiB)",
        rss / MIB,
        bound / MIB
    );
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
                ..Default::default()
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
