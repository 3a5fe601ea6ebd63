//! The flags of the commands that start a fleet of their own on this
//! machine: `run` (a coordinator and N workers for one job) and `chaos`
//! (the same under injected faults).
//!
//! Not here: starting the fleet or driving its jobs (`commands::run`,
//! `commands::chaos`), the flags of a fleet's own processes (`fleet`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The YAML job spec.
    pub file: PathBuf,
    /// Spec keys changed for this run, `key.path=value` each (values are
    /// YAML: `training.max_steps=20 lora.target_modules=[q_proj,v_proj]`;
    /// `key=` clears one). Checked as the spec is; relative paths are from
    /// the current directory.
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Worker processes to start (default: the most the spec asks for).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Print the job's events as NDJSON instead of progress bars.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Disturbed jobs to run (after one undisturbed job).
    #[arg(long)]
    pub runs: u32,
    /// Worker processes in the fleet (each job runs 2 ranks).
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    /// Seeds the fault schedule: the same seed draws the same faults at the
    /// same fractions of the undisturbed job's duration.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds of silence after which the coordinator counts a worker lost
    /// (its --lost-after); frozen workers stay frozen longer than this.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub detection_bound: f64,
    /// Faults injected into each disturbed job.
    #[arg(long, default_value_t = 2)]
    pub faults_per_job: u32,
    /// training.max_steps of every job.
    #[arg(long, default_value_t = 40)]
    pub steps: u64,
    /// The job spec the chaos jobs are made from (its workers, steps,
    /// checkpoints and output are replaced).
    #[arg(long, default_value = "configs/quickstart.yaml", value_name = "FILE")]
    pub spec: PathBuf,
    /// Keep logs, state, checkpoints and adapters in this folder instead of
    /// a temporary one (which is kept anyway when the run fails).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// The coordinator's base wait before restarting a failed job (its
    /// --restart-backoff), doubling with each failure of the job.
    #[arg(long, default_value_t = 0.5, value_name = "SECONDS")]
    pub restart_backoff: f64,
    /// Run every process on a host of its own: network namespaces with
    /// their own addresses, hostnames, /dev/shm and boot ids, joined by a
    /// bridge, checkpoints on a SeaweedFS server on a host of its own
    /// (needs root, `ip`, and SeaweedFS: $LORAFLEET_WEED or
    /// .venv-s3/bin/weed). Enables the `partition` fault.
    #[arg(long)]
    pub hosts: bool,
    /// The kinds of fault drawn (default: kill and freeze, and partition
    /// with --hosts).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "KIND,...")]
    pub faults: Vec<FaultKindArg>,
    /// Print one JSON object {"runs", "faults", "succeeded",
    /// "max_deviation", "worst_extra_s", ...} on stdout; the lines people
    /// read go to stderr.
    #[arg(long)]
    pub json: bool,
}

/// The kinds of fault a chaos run may draw, as `--faults` names them.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKindArg {
    Kill,
    Freeze,
    Partition,
}
