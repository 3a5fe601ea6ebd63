//! Running the built `lorafleet` binary, shared by the tests of the binary.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs `lorafleet ARGS` to completion, without backtraces in its errors.
pub fn lorafleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the binary runs")
}
