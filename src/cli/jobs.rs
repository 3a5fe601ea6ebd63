//! The flags of the commands that call a coordinator: where it is and
//! who asks ([`RemoteArgs`], flattened into each), `submit`, `jobs`,
//! `status`, `cancel`, `resume`, `checkpoints`, `workers`, `drain`,
//! `undrain`, `logs` and `download`.
//!
//! Not here: connecting with them (`connection`), or what the commands do
//! (`commands::{submit, jobs, logs, download}`).

use std::path::PathBuf;

use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use coordinator::client::JobStatus;

/// Where the coordinator is, who is asking, and whom to trust. Each
/// comes from its flag, else its environment variable, else the client
/// config file (`coordinator:`, `token:`, `ca:` in
/// ~/.config/lorafleet/config.yaml, or the file LORAFLEET_CONFIG names).
#[derive(Args, Debug, Clone)]
pub struct RemoteArgs {
    /// The coordinator's address: http://host:port, or https://host:port
    /// for one serving TLS (also `coordinator:` in the config file).
    #[arg(
        long,
        env = "LORAFLEET_COORDINATOR",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    pub coordinator: String,
    /// The tenant token sent with every call (also `token:` in the config
    /// file, which must then be private).
    #[arg(long, env = "LORAFLEET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The PEM CA bundle that signed the coordinator's TLS certificate:
    /// the only roots trusted (default: the public ones). With it, a bare
    /// host:port means https:// and an http:// address is refused, so the
    /// token never goes out in clear.
    #[arg(long, env = "LORAFLEET_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The YAML job spec.
    pub file: PathBuf,
    /// Spec keys changed for this run, `key.path=value` each (values are
    /// YAML: `training.max_steps=20 lora.target_modules=[q_proj,v_proj]`;
    /// `key=` clears one). Checked as the spec is; relative paths are from
    /// the current directory.
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Follow the job until it ends (exit 1 if it fails or is cancelled),
    /// riding out a coordinator restart as `logs -f` does: retried 0.5 s,
    /// then 1, 2, 4 and every 5 s after, for up to 120 s (then exit 3).
    #[arg(long)]
    pub wait: bool,
    /// Print the job object (and with --wait, the events as NDJSON).
    #[arg(long)]
    pub json: bool,
    /// model.path is a local path every worker can read as it is (a shared
    /// mount): send the path, not the model. Without it, a local model is
    /// uploaded (a GGUF file, or a Hugging Face folder's .json,
    /// .safetensors, .jinja, .txt and tokenizer.model files).
    #[arg(long)]
    pub shared_model: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet jobs`: the tenant's jobs, newest first.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// The most jobs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// List the jobs after this id (the last id of the previous page).
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
    /// Only jobs in these states (repeat the flag or give a comma list:
    /// `--status running,queued`).
    #[arg(
        long = "status",
        value_name = "STATUS",
        value_delimiter = ',',
        value_parser = status_parser(),
    )]
    pub statuses: Vec<JobStatus>,
    /// Print {"data": [jobs], "has_more"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet status JOB`, `cancel JOB` and `resume JOB`: one job, shown
/// as it is after the call.
#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job's id.
    pub job: String,
    /// Print the job as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet status JOB`.
pub type StatusArgs = JobArgs;
/// `lorafleet cancel JOB`.
pub type CancelArgs = JobArgs;
/// `lorafleet resume JOB`.
pub type ResumeArgs = JobArgs;

/// `lorafleet checkpoints JOB`.
#[derive(Args, Debug)]
pub struct CheckpointsArgs {
    /// The job's id.
    pub job: String,
    /// The most checkpoints to list (default: all).
    #[arg(long)]
    pub limit: Option<u32>,
    /// List the checkpoints after this step (the last step of the
    /// previous page).
    #[arg(long, value_name = "STEP")]
    pub after: Option<u64>,
    /// Print {"data": [{"step", "url", "metrics", "committed_at"}],
    /// "has_more"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet workers`.
#[derive(Args, Debug)]
pub struct WorkersArgs {
    /// The most workers to list (default: all).
    #[arg(long)]
    pub limit: Option<u32>,
    /// List the workers after this id (the last id of the previous page).
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
    /// Print {"data": [workers], "has_more"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet drain WORKER` and `lorafleet undrain WORKER`.
#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The worker's id.
    pub worker: String,
    /// Print the worker as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet logs JOB`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The job's id.
    pub job: String,
    /// Keep watching until the job ends; exit 1 if it failed or was
    /// cancelled. A coordinator that goes away (restart, crash, network)
    /// is tried again 0.5 s, then 1, 2, 4 and every 5 s after, for up to
    /// 120 s (then exit 3); the events continue where they stopped, none
    /// twice.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// NDJSON: one event {"id", "created_at", "level", "type", "message",
    /// "data"} a line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet download JOB`.
#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The job's id.
    pub job: String,
    /// Which checkpoint: a step number, `latest` or `best`.
    #[arg(long, default_value = "latest", value_parser = parse_step, value_name = "N|latest|best")]
    pub step: String,
    /// The folder to write the checkpoint's files into (replaced if it
    /// exists).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Write the base model with the adapter merged in (a HF model folder,
    /// as `export --merged` writes) instead of the adapter. The base model
    /// is the one the checkpoint's job.yaml names: a preset, or a path that
    /// must exist on this machine.
    #[arg(long)]
    pub merged: bool,
    /// Print {"job", "step", "dir", "files": [{"path", "bytes", "sha256"}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// A `--status` value: a job state's name (clap lists them, and
/// suggests the closest to a misspelt one).
fn status_parser() -> impl TypedValueParser<Value = JobStatus> {
    PossibleValuesParser::new(JobStatus::ALL.map(JobStatus::name)).map(|name| {
        JobStatus::parse(&name).expect("only the names of job states are possible values")
    })
}

/// A `--step` value: a step number, `latest` or `best` (clap reports the
/// error as a usage error).
pub fn parse_step(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text == "latest" || text == "best" || text.parse::<u64>().is_ok() {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a checkpoint: give a step number, `latest` or `best`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbers_or_latest_or_best() {
        assert_eq!(parse_step("latest").unwrap(), "latest");
        assert_eq!(parse_step("best").unwrap(), "best");
        assert_eq!(parse_step("120").unwrap(), "120");
        assert!(parse_step("newest").is_err());
        assert!(parse_step("-1").is_err());
    }
}
