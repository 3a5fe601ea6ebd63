//! The command-line grammar (clap derive): [`Cli`] and its [`Command`]s
//! here, each command's flags in a submodule by kind (`local`, `bench`,
//! `fleet`, `jobs`, `local_fleet`), all re-exported so that `crate::cli::XxxArgs` names
//! them. Names here are a contract that scripts rely on (docs/ARCHITECTURE.md):
//! add freely, rename nothing.
//!
//! **Architecture invariant:** flags only. Nothing here calls a command;
//! commands import their flags from here, never the other way round.

mod bench;
mod fleet;
mod jobs;
mod local;
mod local_fleet;

use clap::{Parser, Subcommand};

pub use bench::{
    BenchAllreduceArgs, BenchArgs, BenchCheckpointArgs, BenchFleetArgs, BenchForwardArgs,
    BenchSgemmArgs, BenchTrainArgs, BenchWorkload,
};
pub use fleet::{ServeArgs, WorkerArgs};
pub use jobs::{
    CancelArgs, CheckpointsArgs, DownloadArgs, DrainArgs, JobsArgs, LogsArgs, RemoteArgs,
    ResumeArgs, StatusArgs, SubmitArgs, WorkersArgs,
};
pub use local::{
    CompletionsArgs, ExportArgs, GenerateArgs, InitModelArgs, LinkArgs, PresetArg, RingArgs,
    TrainArgs, ValidateArgs,
};
pub use local_fleet::{ChaosArgs, FaultKindArg, RunArgs};

#[derive(Parser, Debug)]
#[command(
    name = "lorafleet",
    version,
    about = "LoRA fine-tuning of Llama-family models on a fleet of workers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a job spec's fine-tune in this process.
    Train(TrainArgs),
    /// Check a job spec and its datasets without training.
    Validate(ValidateArgs),
    /// Write a randomly initialised Llama as a Hugging Face model folder.
    InitModel(InitModelArgs),
    /// Generate text with a model (a HF folder or a .gguf file).
    Generate(GenerateArgs),
    /// Measure a workload and print its figures.
    Bench(BenchArgs),
    /// Write a full HF model folder with a LoRA adapter merged into the base weights.
    Export(ExportArgs),
    /// Run a job spec on an embedded fleet: a local coordinator and N worker processes.
    ///
    /// A coordinator that stops while the job runs is started again on its
    /// address and state file (up to 3 times); the job's events continue as
    /// with `logs -f` (reconnecting for up to 120 s).
    Run(RunArgs),
    /// Start a coordinator.
    Serve(ServeArgs),
    /// Join a coordinator's fleet as a worker and train what it assigns.
    Worker(WorkerArgs),
    /// Queue a job spec on a coordinator (its local datasets are uploaded).
    Submit(SubmitArgs),
    /// List your jobs on the coordinator, newest first.
    Jobs(JobsArgs),
    /// Show one job's status, progress and error.
    Status(StatusArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Queue a failed or cancelled job again, from its latest checkpoint.
    Resume(ResumeArgs),
    /// List a job's checkpoints.
    Checkpoints(CheckpointsArgs),
    /// List the workers that joined the coordinator.
    Workers(WorkersArgs),
    /// Let a worker finish its job and take no new one (an operator's call).
    Drain(DrainArgs),
    /// Let a draining worker take jobs again (an operator's call).
    Undrain(DrainArgs),
    /// Print a job's events; with -f, follow them until the job ends.
    Logs(LogsArgs),
    /// Download a checkpoint's files into a folder.
    Download(DownloadArgs),
    /// Run jobs on a local fleet while workers are killed and frozen, and
    /// check they succeed with the undisturbed adapter in bounded time.
    Chaos(ChaosArgs),
    /// Print a shell completion script for lorafleet
    /// (`source <(lorafleet completions bash)`).
    Completions(CompletionsArgs),
}

impl Command {
    /// Where the coordinator is and who asks, for the commands that call
    /// one as a tenant (the client config file may fill them in).
    pub fn remote_mut(&mut self) -> Option<&mut RemoteArgs> {
        match self {
            Command::Submit(args) => Some(&mut args.remote),
            Command::Jobs(args) => Some(&mut args.remote),
            Command::Status(args) | Command::Cancel(args) | Command::Resume(args) => {
                Some(&mut args.remote)
            }
            Command::Checkpoints(args) => Some(&mut args.remote),
            Command::Workers(args) => Some(&mut args.remote),
            Command::Drain(args) | Command::Undrain(args) => Some(&mut args.remote),
            Command::Logs(args) => Some(&mut args.remote),
            Command::Download(args) => Some(&mut args.remote),
            Command::Train(_)
            | Command::Validate(_)
            | Command::InitModel(_)
            | Command::Generate(_)
            | Command::Bench(_)
            | Command::Export(_)
            | Command::Run(_)
            | Command::Serve(_)
            | Command::Worker(_)
            | Command::Chaos(_)
            | Command::Completions(_) => None,
        }
    }
}
