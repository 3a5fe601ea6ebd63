//! Running the built `lorafleet` binary, shared by the tests of the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
