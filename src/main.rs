//! The `lorafleet` binary: parse the command line, run one command, turn the
//! outcome into an exit code. Commands live in [`commands`], one module each;
//! this file knows nothing about tensors or jobs.

mod cli;
mod client_config;
mod commands;
mod connection;
mod output;
mod progress;
mod ring;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command};

/// Exit codes shared by every command (README.md, "A fleet").
pub mod exit {
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    /// `train` stopped at a step boundary when asked (SIGTERM), after
    /// committing a checkpoint; `--resume` continues it.
    pub const PREEMPTED: u8 = job::recipe::PREEMPTED_EXIT_CODE as u8;
    pub const INTERRUPTED: u8 = 130;
}

fn main() -> ExitCode {
    keep_freed_memory();
    end_quietly_on_closed_output();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = client_config::fill(&mut cli.command, &matches).and_then(|()| run(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `writeln!(stdout, ..)?` into a closed pipe (`lorafleet logs
            // JOB | head -1`): quiet, as below. Only when this process's
            // own output has lost its reader: a broken socket or child
            // pipe is a failure like any other.
            let broken_pipe = err.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe && (reader_gone(libc::STDOUT_FILENO) || reader_gone(libc::STDERR_FILENO))
            {
                end_by_sigpipe();
            }
            eprintln!("lorafleet: {err:#}");
            ExitCode::from(commands::exit_code(&err))
        }
    }
}

/// Runs one command.
fn run(command: Command) -> anyhow::Result<()> {
    match command {
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
        Command::Completions(args) => commands::completions::run(args),
    }
}

/// A command whose reader went away (`lorafleet jobs | head -1`) ends the
/// way `ls` or `grep` do: killed by SIGPIPE, without a panic or an error
/// message (shells say nothing about it).
///
/// Rust sets SIGPIPE to ignored, so printing to a closed pipe panics
/// (`failed printing to stdout: Broken pipe`); this hook turns that panic,
/// on any thread, back into the signal. SIGPIPE itself stays ignored
/// rather than restored at start: then only this process's own stdout
/// and stderr end it, while a write to a closed socket or child pipe
/// (the coordinator's clients, a worker's rank processes, ring peers)
/// stays an `EPIPE` error that the caller handles. Long-running commands
/// are no exception: `serve` and `worker` log through `tracing`, which
/// drops what it cannot write, and `train` drops event lines nobody
/// reads; a `worker` whose own stderr is gone ends at the next rank line
/// it forwards there, and the coordinator moves its jobs as for any lost
/// worker.
fn end_quietly_on_closed_output() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            end_by_sigpipe();
        }
        default_hook(info);
    }));
}

/// Ends the process as a write to a pipe without a reader does by default.
fn end_by_sigpipe() -> ! {
    // SAFETY: restoring SIGPIPE's default action and raising it ends the
    // process (the signal is delivered to this thread before `raise`
    // returns); `_exit` only runs should it not.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
        libc::_exit(128 + libc::SIGPIPE)
    }
}

/// Whether `fd` is a pipe or socket whose reading end is closed (poll
/// reports an error condition on it). False for terminals, files, and
/// pipes that still have a reader.
fn reader_gone(fd: libc::c_int) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready == 1 && poll.revents & (libc::POLLERR | libc::POLLHUP) != 0
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

#[cfg(test)]
mod tests {
    use super::reader_gone;

    #[test]
    fn a_pipe_without_its_reader_is_told_from_one_with_it() {
        let mut fds = [0; 2];
        // SAFETY: a two-element array for pipe's two ends.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let [read, write] = fds;
        assert!(!reader_gone(write));
        // SAFETY: closing the ends this test opened, once each.
        unsafe { libc::close(read) };
        assert!(reader_gone(write));
        unsafe { libc::close(write) };
        // A file is never a closed pipe.
        let file = tempfile::tempfile().unwrap();
        assert!(!reader_gone(std::os::fd::AsRawFd::as_raw_fd(&file)));
    }
}
