//! The flags of `lorafleet bench`: one workload per subcommand, and the
//! hidden flags a benchmark gives the rank processes it starts.
//!
//! Not here: running a workload (`commands::bench`, `bench_fleet`,
//! `bench_checkpoint`).

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::{LinkArgs, PresetArg};

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
    Fleet(BenchFleetArgs),
    /// Checkpointing: step-time overhead of background checkpoints, and upload throughput.
    Checkpoint(BenchCheckpointArgs),
    /// Matrix products on every thread (f32, or `--dtype` weights): the peak `bench train`'s matmul_gflops is held to.
    Sgemm(BenchSgemmArgs),
}

#[derive(Args, Debug)]
pub struct BenchSgemmArgs {
    /// Threads, each multiplying its own matrices (as training's shares do).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed runs per shape (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The weight's type: f32, bf16 (activations rounded to bf16, f32 sums,
    /// as the fused step multiplies a bf16 model's weights) or f16 (widened).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
    pub dtype: String,
    #[arg(long)]
    pub json: bool,
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
    /// Rows per step (default: 8 for tiny, 4 for small, 2 for the real shapes).
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: Option<u32>,
    /// Tokens per row (default: 128 for tiny, 256 for small, 512 for the real shapes).
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(2..=131072))]
    pub seq: Option<u32>,
    /// The frozen base weights' type (LoRA, gradients and AdamW stay f32);
    /// default: f32 on the CPU, bf16 on a GPU.
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    /// Keep only each layer's input and run its forward pass again in the
    /// backward pass (a spec's `training.gradient_checkpointing`).
    #[arg(long)]
    pub gradient_checkpointing: bool,
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

/// The hidden flags a benchmark launcher gives each rank process it starts.
#[derive(Args, Debug, Clone)]
pub struct BenchRankArgs {
    #[arg(long, hide = true, requires = "peers")]
    pub rank: Option<usize>,
    #[arg(long, hide = true, value_delimiter = ',')]
    pub peers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct BenchFleetArgs {
    /// The job measured for time to first step (run on --workers workers).
    #[arg(long, default_value = "configs/quickstart.yaml")]
    pub spec: PathBuf,
    /// Workers of the time-to-first-step fleet.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Jobs timed to their first step (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Queued jobs of the load measurement.
    #[arg(long, default_value_t = 1000)]
    pub jobs: usize,
    /// Simulated workers of the load measurement.
    #[arg(long, default_value_t = 200)]
    pub sim_workers: usize,
    /// Seconds the load is measured over (each window, with --http-clients).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// HTTP/1.1 keep-alive connections that, in every other window of the
    /// load measurement, send `GET /v1/fine_tuning/jobs?limit=20` as the
    /// tenant (0: no HTTP load, one window).
    #[arg(long, default_value_t = 0)]
    pub http_clients: usize,
    /// Job list requests per second, all --http-clients together.
    #[arg(long, default_value_t = 20.0, value_name = "PER_SECOND")]
    pub http_rate: f64,
    /// `GET /metrics` scrapes per second during the HTTP windows, on a
    /// connection of their own (0: none).
    #[arg(long, default_value_t = 1.0, value_name = "PER_SECOND")]
    pub scrape_rate: f64,
    /// Windows without and with HTTP load, alternating (with --http-clients).
    #[arg(long, default_value_t = 3)]
    pub http_rounds: usize,
    /// One JSON object: {"submit_to_first_step_s", "coordinator_cpu_share", ...}.
    #[arg(long)]
    pub json: bool,
}
