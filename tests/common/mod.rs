//! Running the built `lorafleet` binary, shared by the tests of the binary.

#![allow(dead_code)]

pub mod fleet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The ring secret the tests' rank processes share.
pub const SECRET: &str = "a test attempt secret, 32 chars!";

/// Runs `lorafleet ARGS` to completion, without backtraces in its errors.
pub fn lorafleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the binary runs")
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `configs/<name>` rewritten into `dir` with absolute data paths and its
/// output inside `dir`; `edit` may change the text further.
pub fn spec_in(dir: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo("configs").join(name)).unwrap();
    let data = repo("examples/data");
    let text = text
        .replace("../examples/data", data.to_str().unwrap())
        .replace("../runs", dir.join("runs").to_str().unwrap());
    let path = dir.join(name);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// The tensors of `dir/adapter_model.safetensors` (f32), by name.
pub fn adapter(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// The per-step training losses of `dir/metrics.jsonl`.
pub fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// The largest per-tensor ‖a − b‖ / ‖b‖.
pub fn max_relative_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            let diff: f64 = va
                .iter()
                .zip(vb)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum();
            let norm: f64 = va.iter().map(|x| (*x as f64).powi(2)).sum();
            (diff / norm.max(1e-30)).sqrt()
        })
        .fold(0.0, f64::max)
}

/// Addresses on 127.0.0.1 that were free a moment ago.
pub fn free_peers(world: usize) -> String {
    let listeners: Vec<_> = (0..world)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    addrs.join(",")
}

/// Starts `lorafleet ARGS --rank R --world N --peers P` with the secret
/// in its environment and its output piped.
pub fn spawn_rank(args: &[&str], rank: usize, world: usize, peers: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(args)
        .args(["--rank", &rank.to_string(), "--world", &world.to_string()])
        .args(["--peers", peers])
        .env("LORAFLEET_RING_SECRET", SECRET)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs")
}
