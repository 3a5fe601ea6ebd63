//! The `lorafleet` binary: parse the command line, run one command, turn the
//! outcome into an exit code. Commands live in [`commands`], one module each;
//! this file knows nothing about tensors or jobs.

mod cli;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// A training step allocates and frees tensors of megabytes; the system
/// allocator maps and unmaps each one, and the kernel zeroes every page
/// again. mimalloc reuses them (see [`keep_freed_memory`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc to keep freed memory for reuse instead of returning it to
/// the kernel after a delay: a step frees and reallocates the same sizes
/// every few milliseconds, and pages handed back come back zeroed, at a
/// cost of up to 10% of a step.
fn keep_freed_memory() {
    // `mi_option_purge_delay` in the mimalloc 3 that libmimalloc-sys 0.1.49
    // vendors; checked against its defaults (1000 ms in mimalloc 3, 10 ms
    // in 2) before use, so a renumbered option is left alone.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    unsafe {
        if matches!(libmimalloc_sys::mi_option_get(PURGE_DELAY), 10 | 1000) {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// Exit codes shared by every command (DESIGN.md §5).
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::InitModel(args) => commands::init_model::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Export(args) => commands::export::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (`lorafleet ... | head`) is not a failure.
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("lorafleet: {err:#}");
            ExitCode::from(commands::exit_code(&err))
        }
    }
}
