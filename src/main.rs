//! The `lorafleet` binary: parse the command line, run one command, turn the
//! outcome into an exit code. Commands live in [`commands`], one module each;
//! this file knows nothing about tensors or jobs.

mod cli;
mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// Exit codes shared by every command (DESIGN.md §5).
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    /// `train` stopped at a step boundary when asked (SIGTERM), after
    /// committing a checkpoint; `--resume` continues it.
    pub const PREEMPTED: u8 = coordinator::agent::PREEMPTED_EXIT_CODE as u8;
    pub const INTERRUPTED: u8 = 130;
}

fn main() -> ExitCode {
    keep_freed_memory();
    end_quietly_on_closed_output();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => commands::train::run(args),
        Command::Validate(args) => commands::validate::run(args),
        Command::InitModel(args) => commands::init_model::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Serve(args) => commands::fleet::run_serve(args),
        Command::Worker(args) => commands::fleet::run_worker(args),
        Command::Submit(args) => commands::submit::run_submit(args),
        Command::Jobs(args) => commands::jobs::run_jobs(args),
        Command::Status(args) => commands::jobs::run_status(args),
        Command::Cancel(args) => commands::jobs::run_cancel(args),
        Command::Resume(args) => commands::jobs::run_resume(args),
        Command::Checkpoints(args) => commands::jobs::run_checkpoints(args),
        Command::Workers(args) => commands::jobs::run_workers(args),
        Command::Drain(args) => commands::jobs::run_drain(args),
        Command::Undrain(args) => commands::jobs::run_undrain(args),
        Command::Logs(args) => commands::logs::run_logs(args),
        Command::Download(args) => commands::download::run_download(args),
        Command::Chaos(args) => commands::chaos::run(args),
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

/// A command whose reader went away (`lorafleet jobs | head -1`) ends the
/// way `ls` or `grep` do: killed by SIGPIPE, without a panic or an error
/// message. Rust ignores SIGPIPE, so printing to a closed pipe panics
/// (`failed printing to stdout: Broken pipe`); this hook turns that panic
/// back into the signal. Sockets never raise SIGPIPE (the standard
/// library sends with `MSG_NOSIGNAL`), so servers and workers are not
/// affected. Errors returned as `io::ErrorKind::BrokenPipe` end the
/// process with success in `main`.
fn end_quietly_on_closed_output() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            // SAFETY: restoring SIGPIPE's default action and raising it
            // ends the process; nothing else is touched.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default_hook(info);
    }));
}

/// A training step frees and allocates the same activation buffers again
/// and again. glibc serves buffers past its mmap threshold (128 KiB at
/// first) with fresh mappings, each page faulted in and zeroed by the
/// kernel on every step; raising the threshold and the trim threshold
/// keeps them in the heap for the next step instead.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
