//! What the agent asks of the program that trains: [`RankLauncher`] builds
//! the command of one rank, and the rank keeps the contract below. The
//! binary implements it (`lorafleet train --events ...`); the agent never
//! spells out another program's flags.
//!
//! The contract of a rank process: it prints one [`job::JobEvent`] per
//! line on stdout (other lines are ignored); it reads the attempt's ring
//! secret from `trainer::collective::SECRET_ENV`; it exits 0 when done,
//! with [`job::recipe::PREEMPTED_EXIT_CODE`] when it stopped after a
//! checkpoint because it got SIGTERM, and otherwise with anything else.
//!
//! Not here: starting, watching or stopping the process (`rank`).

use std::fmt;
use std::path::Path;

/// One rank of an assignment, as the launcher needs it.
#[derive(Clone, Debug)]
pub struct RankLaunch<'a> {
    /// The job spec, written for this rank with its inputs' local paths.
    pub spec_file: &'a Path,
    pub job_id: &'a str,
    pub tenant: &'a str,
    pub attempt: u32,
    pub rank: u32,
    pub world: u32,
    /// `host:port` of every rank in rank order (this one's included).
    pub peers: &'a [String],
    /// Continue from the job's newest verified checkpoint.
    pub resume: bool,
}

/// Builds the command that runs a rank. The agent adds the environment
/// (the ring secret; no coordinator credentials), the pipes and the
/// kill-on-exit hook.
pub trait RankLauncher: Send + Sync + fmt::Debug {
    fn command(&self, launch: &RankLaunch<'_>) -> tokio::process::Command;

    /// What the command is called in errors (e.g. the program's path).
    fn describe(&self) -> String;
}
