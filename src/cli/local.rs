//! The flags of the commands that work on this machine alone: `train`
//! (and how one rank joins a ring), `validate`, `init-model`, `generate`,
//! `export` and `completions`.
//!
//! Not here: what the commands do (`commands::*`), the benchmarks
//! (`bench`), anything that calls a coordinator (`fleet`, `jobs`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The YAML job spec.
    pub file: PathBuf,
    /// Spec keys changed for this run, `key.path=value` each (values are
    /// YAML: `training.max_steps=20 lora.target_modules=[q_proj,v_proj]`;
    /// `key=` clears one). Checked as the spec is; relative paths are from
    /// the current directory.
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
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

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The YAML job spec.
    pub file: PathBuf,
    /// Spec keys changed for this run, `key.path=value` each (values are
    /// YAML: `training.max_steps=20 lora.target_modules=[q_proj,v_proj]`;
    /// `key=` clears one). Checked as the spec is; relative paths are from
    /// the current directory.
    #[arg(value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
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
    /// SmolLM2-135M's shape: hidden 576, 30 layers, 9/3 heads, vocab 49152, tied
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
    /// SmolLM2-360M's shape: hidden 960, 32 layers, 15/5 heads, vocab 49152, tied
    #[value(name = "smollm2-360m")]
    Smollm2_360m,
    /// Llama-3.2-1B's shape: hidden 2048, 16 layers, 32/8 heads, vocab 128256, tied
    #[value(name = "llama-1b-shape")]
    Llama1bShape,
}

impl PresetArg {
    pub fn preset(self) -> trainer::model::Preset {
        use trainer::model::Preset;
        match self {
            PresetArg::Tiny => Preset::Tiny,
            PresetArg::Small => Preset::Small,
            PresetArg::TinyGqa => Preset::TinyGqa,
            PresetArg::Smollm2_135m => Preset::Smollm2_135m,
            PresetArg::Smollm2_360m => Preset::Smollm2_360m,
            PresetArg::Llama1bShape => Preset::Llama1bShape,
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

/// `lorafleet completions SHELL`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
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
    /// What to write: a Hugging Face model folder, or one llama.cpp GGUF
    /// file.
    #[arg(long, value_enum, default_value = "hf")]
    pub format: ExportFormat,
    /// How a GGUF file stores its matrices (default f16; norms are always
    /// f32, and a q8_0 matrix whose rows are not whole blocks of 32 is f16).
    #[arg(long, value_enum, value_name = "TYPE")]
    pub quant: Option<QuantArg>,
    /// Output folder (hf), or the .gguf file (gguf).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

impl ExportArgs {
    /// How the GGUF file stores its matrices, or `None` for a HF folder;
    /// an error names a `--quant` given without `--format gguf`.
    pub fn gguf_tensor_type(&self) -> Result<Option<trainer::model::gguf::GgufTensorType>, String> {
        match (self.format, self.quant) {
            (ExportFormat::Hf, None) => Ok(None),
            (ExportFormat::Hf, Some(_)) => {
                Err("--quant applies to --format gguf; a HF folder is written in f32".into())
            }
            (ExportFormat::Gguf, quant) => Ok(Some(quant.unwrap_or(QuantArg::F16).tensor_type())),
        }
    }
}

/// `export --format`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// config.json, model.safetensors and the tokenizer files.
    Hf,
    /// A GGUF v3 file llama.cpp loads.
    Gguf,
}

/// `export --quant`.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum QuantArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl QuantArg {
    pub fn tensor_type(self) -> trainer::model::gguf::GgufTensorType {
        use trainer::model::gguf::GgufTensorType;
        match self {
            QuantArg::F32 => GgufTensorType::F32,
            QuantArg::F16 => GgufTensorType::F16,
            QuantArg::Q8_0 => GgufTensorType::Q8_0,
        }
    }
}
