//! The command-line grammar (clap derive). Names here are a contract that
//! scripts rely on (docs/ARCHITECTURE.md): add freely, rename nothing.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Run(crate::commands::run::RunArgs),
    /// Start a coordinator.
    Serve(crate::commands::fleet::ServeArgs),
    /// Join a coordinator's fleet as a worker and train what it assigns.
    Worker(crate::commands::fleet::WorkerArgs),
    /// Queue a job spec on a coordinator (its local datasets are uploaded).
    Submit(crate::commands::submit::SubmitArgs),
    /// List your jobs on the coordinator, newest first.
    Jobs(crate::commands::jobs::JobsArgs),
    /// Show one job's status, progress and error.
    Status(crate::commands::jobs::StatusArgs),
    /// Cancel a job.
    Cancel(crate::commands::jobs::CancelArgs),
    /// Queue a failed or cancelled job again, from its latest checkpoint.
    Resume(crate::commands::jobs::ResumeArgs),
    /// List a job's checkpoints.
    Checkpoints(crate::commands::jobs::CheckpointsArgs),
    /// List the workers that joined the coordinator.
    Workers(crate::commands::jobs::WorkersArgs),
    /// Let a worker finish its job and take no new one (an operator's call).
    Drain(crate::commands::jobs::DrainArgs),
    /// Let a draining worker take jobs again (an operator's call).
    Undrain(crate::commands::jobs::DrainArgs),
    /// Print a job's events; with -f, follow them until the job ends.
    Logs(crate::commands::logs::LogsArgs),
    /// Download a checkpoint's files into a folder.
    Download(crate::commands::download::DownloadArgs),
    /// Run jobs on a local fleet while workers are killed and frozen, and
    /// check they succeed with the undisturbed adapter in bounded time.
    Chaos(crate::commands::chaos::ChaosArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The PEFT adapter folder.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The base model (HF folder or .gguf file) the adapter was trained on.
    #[arg(long)]
    pub model: PathBuf,
    /// Merge the adapter into the weights (the only export there is: an
    /// adapter folder is already in PEFT's format).
    #[arg(long)]
    pub merged: bool,
    /// Output folder.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The YAML job spec.
    pub file: PathBuf,
    /// Continue from the newest checkpoint of this job that verifies (in
    /// checkpoint.storage), if there is one. Without it, a run starts at
    /// step 0 and removes the checkpoints an earlier run of the job left.
    #[arg(long)]
    pub resume: bool,
    /// Stop once this many steps are done, saving the state (continue later
    /// with --resume).
    #[arg(long, value_name = "STEP")]
    pub stop_after: Option<usize>,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Print progress as one JSON event per line on stdout (what a worker
    /// agent reads from the ranks it starts).
    #[arg(long, hide = true)]
    pub events: bool,
    /// The job's id: checkpoints go to {checkpoint.storage}/{tenant}/{job}
    /// (default: the spec's name).
    #[arg(long, value_name = "ID")]
    pub job_id: Option<String>,
    /// The job's tenant in that path (default: local).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// The fleet attempt this run is (a worker's rank): written into the
    /// manifests of the checkpoints it commits.
    #[arg(long, hide = true, value_name = "N")]
    pub attempt: Option<u32>,
    /// Leave the final adapter in the checkpoints only (what workers do);
    /// output.dir is not written.
    #[arg(long, hide = true)]
    pub no_output: bool,
    #[command(flatten)]
    pub ring: RingArgs,
}

/// How one process joins a data-parallel job's ring.
#[derive(Args, Debug, Clone)]
pub struct RingArgs {
    /// This process's rank, 0-based (with --world and --peers; the
    /// attempt's secret comes from LORAFLEET_RING_SECRET).
    #[arg(long, requires_all = ["world", "peers"])]
    pub rank: Option<usize>,
    /// The number of ranks in the job.
    #[arg(long, requires = "rank")]
    pub world: Option<usize>,
    /// host:port of every rank in rank order, this one's included (it
    /// listens there).
    #[arg(long, value_delimiter = ',', requires = "rank")]
    pub peers: Vec<String>,
    #[command(flatten)]
    pub link: LinkArgs,
}

/// How ring links behave.
#[derive(Args, Debug, Clone)]
pub struct LinkArgs {
    /// Seconds a collective may wait on a peer before the job fails.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub ring_timeout: f64,
    /// How ranks exchange data: shared memory on one host and TCP between
    /// hosts (auto), or one of them everywhere.
    #[arg(long, value_enum, default_value = "auto")]
    pub transport: TransportArg,
    /// KiB per pipelined piece of a transfer.
    #[arg(long, default_value_t = 512, value_name = "KIB")]
    pub ring_chunk_kib: usize,
    /// Ranks that all share one host pass data around the ring's links
    /// instead of meeting in one shared mapping (slower; for comparison).
    #[arg(long)]
    pub no_shared_group: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum TransportArg {
    Auto,
    Tcp,
    Shm,
}

impl TransportArg {
    pub fn transport(self) -> trainer::collective::Transport {
        use trainer::collective::Transport;
        match self {
            TransportArg::Auto => Transport::Auto,
            TransportArg::Tcp => Transport::Tcp,
            TransportArg::Shm => Transport::Shm,
        }
    }
}

/// The hidden flags a benchmark launcher gives each rank process it starts.
#[derive(Args, Debug, Clone)]
pub struct BenchRankArgs {
    #[arg(long, hide = true, requires = "peers")]
    pub rank: Option<usize>,
    #[arg(long, hide = true, value_delimiter = ',')]
    pub peers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The YAML job spec.
    pub file: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// Model sizes of `init-model` and `bench`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum PresetArg {
    /// hidden 256, 4 layers, 4 heads, intermediate 688, vocab 1024
    Tiny,
    /// hidden 512, 8 layers, 8 heads, intermediate 1376, vocab 32000
    Small,
    /// tiny with grouped-query attention (2 KV heads)
    TinyGqa,
}

impl PresetArg {
    pub fn preset(self) -> trainer::model::Preset {
        use trainer::model::Preset;
        match self {
            PresetArg::Tiny => Preset::Tiny,
            PresetArg::Small => Preset::Small,
            PresetArg::TinyGqa => Preset::TinyGqa,
        }
    }
}

#[derive(Args, Debug)]
pub struct InitModelArgs {
    #[arg(long, value_enum)]
    pub preset: PresetArg,
    /// Seed of the random weights: the same seed gives the same model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share the input embedding with the output head.
    #[arg(long)]
    pub tie_embeddings: bool,
    /// Output folder (created if missing).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["prompt", "chat", "prompt_ids"]))]
pub struct GenerateArgs {
    /// A Hugging Face model folder or a llama.cpp .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Plain-text prompt, continued as is.
    #[arg(long)]
    pub prompt: Option<String>,
    /// A user message, wrapped in the model's chat template.
    #[arg(long)]
    pub chat: Option<String>,
    /// The prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating past an end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object: {"prompt_ids", "output_ids", "text"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub workload: BenchWorkload,
}

#[derive(Subcommand, Debug)]
pub enum BenchWorkload {
    /// Inference: full forward pass tokens/s and greedy decode tokens/s.
    Forward(BenchForwardArgs),
    /// Training: LoRA step tokens/s and peak memory on the reference workload.
    Train(BenchTrainArgs),
    /// All-reduce bandwidth of N rank processes on 127.0.0.1 (nccl-tests' algbw and busbw).
    Allreduce(BenchAllreduceArgs),
    /// Control plane: submit to first training step, and coordinator CPU under load.
    Fleet(crate::commands::bench_fleet::BenchFleetArgs),
    /// Checkpointing: step-time overhead of background checkpoints, and upload throughput.
    Checkpoint(BenchCheckpointArgs),
}

#[derive(Args, Debug)]
pub struct BenchCheckpointArgs {
    /// Where checkpoints go: a local folder or a storage URL (s3://bucket/prefix,
    /// gs://, az://, file://); everything is written under {storage}/bench/ and
    /// deleted after.
    #[arg(long, value_name = "URL")]
    pub storage: String,
    /// Training steps per timed run (the quickstart job, tiny preset).
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
    /// A checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub every: usize,
    /// MiB of the file whose upload is timed.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub size_mib: usize,
    /// Rounds of both variants, in alternating order (the medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// The job spec trained for the step-time figure.
    #[arg(long, default_value = "configs/quickstart.yaml", value_name = "FILE")]
    pub spec: PathBuf,
    /// NDJSON: one object per figure.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchAllreduceArgs {
    /// Rank processes to start.
    #[arg(long, default_value_t = 2)]
    pub world: usize,
    /// Buffer sizes in bytes, with K, M or G for KiB, MiB, GiB.
    #[arg(long, value_delimiter = ',', default_value = "1M,16M,64M,256M")]
    pub sizes: Vec<String>,
    /// Timed iterations per size (default: about 1 GiB moved, 5 to 50).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Also measure memcpy and one loopback TCP stream on 256 MiB, for scale.
    #[arg(long)]
    pub baselines: bool,
    /// Sum on GPUs with NCCL, set up over the ring (a `cuda` build; rank r
    /// runs on GPU r; --world 1 is allowed).
    #[arg(long)]
    pub nccl: bool,
    /// NDJSON: one object per size.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub link: LinkArgs,
    #[command(flatten)]
    pub child: BenchRankArgs,
}

/// How `bench train` computes gradients.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum EngineArg {
    /// the fused CPU step (the graph on other backends)
    Fused,
    /// burn's autodiff graph, the reference
    Graph,
}

impl EngineArg {
    pub fn engine(self) -> trainer::train::grad::Engine {
        use trainer::train::grad::Engine;
        match self {
            EngineArg::Fused => Engine::Fused,
            EngineArg::Graph => Engine::Graph,
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: PresetArg,
    /// How gradients are computed.
    #[arg(long, value_enum, default_value = "fused")]
    pub engine: EngineArg,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup_steps: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Data-parallel rank processes on this host, each with --threads threads.
    #[arg(long, default_value_t = 1)]
    pub world: usize,
    /// With --world above 1: rounds of (1 process, then the ranks); the
    /// medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub link: LinkArgs,
    #[command(flatten)]
    pub child: BenchRankArgs,
}

#[derive(Args, Debug)]
pub struct BenchForwardArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: PresetArg,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[arg(long)]
    pub json: bool,
}
