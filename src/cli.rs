//! The command-line grammar (clap derive). Names here are a contract that
//! scripts rely on (DESIGN.md §5): add freely, rename nothing.

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
    /// Continue from the state saved in the output folder, if there is one.
    #[arg(long)]
    pub resume: bool,
    /// Stop once this many steps are done, saving the state (continue later
    /// with --resume).
    #[arg(long, value_name = "STEP")]
    pub stop_after: Option<usize>,
    /// Print the final summary as one JSON object.
    #[arg(long)]
    pub json: bool,
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
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: PresetArg,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup_steps: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long)]
    pub json: bool,
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
