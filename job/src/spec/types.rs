//! The typed job spec: what a valid `job.yaml` turns into.
//!
//! Every optional key has a default, written down in [`defaults`]; the reader
//! in `validate.rs` fills them in, so a [`JobSpec`] is always complete.
//! Serializing a [`JobSpec`] (see [`JobSpec::to_yaml`](super::JobSpec::to_yaml))
//! writes the canonical key names, with every default spelled out.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};
use trainer::model::Preset;

/// The default of every optional key.
pub mod defaults {
    /// `dataset.format`.
    pub const FORMAT: super::DatasetFormat = super::DatasetFormat::Auto;
    /// `dataset.max_seq_len`, in tokens.
    pub const MAX_SEQ_LEN: u32 = 512;
    /// `dataset.packing`.
    pub const PACKING: bool = false;
    /// `dataset.train_on_inputs`.
    pub const TRAIN_ON_INPUTS: bool = false;
    /// `lora.r`.
    pub const R: u32 = 8;
    /// `lora.alpha`.
    pub const ALPHA: f64 = 16.0;
    /// `lora.dropout`.
    pub const DROPOUT: f64 = 0.0;
    /// `lora.target_modules` (PEFT's default for Llama).
    pub const TARGET_MODULES: &[super::TargetModule] =
        &[super::TargetModule::QProj, super::TargetModule::VProj];
    /// `lora.use_rslora`.
    pub const USE_RSLORA: bool = false;
    /// `training.micro_batch_size`.
    pub const MICRO_BATCH_SIZE: u32 = 4;
    /// `training.learning_rate`.
    pub const LEARNING_RATE: f64 = 2.0e-4;
    /// `training.schedule`.
    pub const SCHEDULE: super::Schedule = super::Schedule::Cosine;
    /// `training.warmup_steps` when neither `warmup_steps` nor `warmup_ratio` is given.
    pub const WARMUP_STEPS: u64 = 0;
    /// `training.weight_decay`.
    pub const WEIGHT_DECAY: f64 = 0.0;
    /// `training.max_grad_norm` (0 turns clipping off).
    pub const MAX_GRAD_NORM: f64 = 1.0;
    /// `training.gradient_checkpointing`.
    pub const GRADIENT_CHECKPOINTING: bool = false;
    /// `training.eval_every` (0: no periodic evaluation).
    pub const EVAL_EVERY: u64 = 0;
    /// `training.seed`.
    pub const SEED: u64 = 42;
    /// `training.adam_beta1`.
    pub const ADAM_BETA1: f64 = 0.9;
    /// `training.adam_beta2`.
    pub const ADAM_BETA2: f64 = 0.999;
    /// `training.adam_epsilon`.
    pub const ADAM_EPSILON: f64 = 1e-8;
    /// `resources.workers`.
    pub const WORKERS: u32 = 1;
    /// `resources.backend`.
    pub const BACKEND: super::Backend = super::Backend::Cpu;
    /// `resources.threads_per_worker`.
    pub const THREADS_PER_WORKER: u32 = 1;
    /// `resources.priority`.
    pub const PRIORITY: i32 = 0;
    /// `checkpoint.every_steps` (0: only the final checkpoint).
    pub const EVERY_STEPS: u64 = 100;
    /// `checkpoint.keep_last`.
    pub const KEEP_LAST: u32 = 3;
    /// `checkpoint.keep_best`.
    pub const KEEP_BEST: bool = false;
    /// `checkpoint.storage`, relative to the spec file's folder.
    pub const STORAGE: &str = "runs";
    /// `checkpoint.max_failures`.
    pub const MAX_FAILURES: u32 = 3;
}

/// URL schemes kept as written in path-valued keys (the ones `object_store`
/// understands, plus `http(s)`); any other `scheme://` is an error.
pub const URL_SCHEMES: &[&str] = &[
    "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "file", "memory", "http", "https",
];

/// A parsed job spec. Field names are the YAML keys, but for
/// `model_dtype`, which is `model.dtype` (beside [`ModelSpec`], which
/// names where the weights come from).
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// Free text; the job id is assigned at submit.
    pub name: String,
    pub model: ModelSpec,
    /// `model.dtype`: the precision the frozen base weights are kept in;
    /// `None` (not given): f32 on the CPU, the accelerator's default
    /// (`trainer::device::frozen_dtype`) on a GPU.
    pub model_dtype: Option<ModelDType>,
    pub dataset: DatasetSpec,
    pub lora: LoraSpec,
    pub training: TrainingSpec,
    pub resources: ResourcesSpec,
    pub checkpoint: CheckpointSpec,
    pub output: OutputSpec,
}

/// Field by field as derived, with `model_dtype` written as `model.dtype`
/// (and left out when not given, like every optional key without a
/// default).
impl Serialize for JobSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        #[derive(Serialize)]
        struct Model<'a> {
            #[serde(flatten)]
            source: &'a ModelSpec,
            #[serde(skip_serializing_if = "Option::is_none")]
            dtype: Option<ModelDType>,
        }

        let mut s = serializer.serialize_struct("JobSpec", 8)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field(
            "model",
            &Model {
                source: &self.model,
                dtype: self.model_dtype,
            },
        )?;
        s.serialize_field("dataset", &self.dataset)?;
        s.serialize_field("lora", &self.lora)?;
        s.serialize_field("training", &self.training)?;
        s.serialize_field("resources", &self.resources)?;
        s.serialize_field("checkpoint", &self.checkpoint)?;
        s.serialize_field("output", &self.output)?;
        s.end()
    }
}

/// A local path, already resolved against the spec file's folder, or a URL
/// kept exactly as written (one of [`URL_SCHEMES`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathOrUrl {
    Path(PathBuf),
    Url(String),
}

impl PathOrUrl {
    /// The local path, unless this is a URL.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            PathOrUrl::Path(path) => Some(path),
            PathOrUrl::Url(_) => None,
        }
    }

    /// The URL, unless this is a local path.
    pub fn as_url(&self) -> Option<&str> {
        match self {
            PathOrUrl::Path(_) => None,
            PathOrUrl::Url(url) => Some(url),
        }
    }

    pub fn is_url(&self) -> bool {
        matches!(self, PathOrUrl::Url(_))
    }
}

impl fmt::Display for PathOrUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathOrUrl::Path(path) => write!(f, "{}", path.display()),
            PathOrUrl::Url(url) => f.write_str(url),
        }
    }
}

impl Serialize for PathOrUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `model:` exactly one of `path` or `preset`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSpec {
    /// A Hugging Face folder, a `.gguf` file, or an object-store URL.
    Path(PathOrUrl),
    /// A random model made on the fly, seeded with `training.seed`.
    #[serde(serialize_with = "serialize_preset")]
    Preset(Preset),
}

fn serialize_preset<S: Serializer>(preset: &Preset, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(preset.name())
}

/// Declares a closed set of words (`schedule: cosine`) with its YAML spelling.
macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order the docs list them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// The YAML spelling of every value.
            pub const NAMES: &'static [&'static str] = &[$($text,)+];

            /// The YAML spelling.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value spelled `text`, if any.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }
    };
}

word_enum! {
    /// `dataset.format`: how JSONL records are read.
    DatasetFormat {
        /// Decide from each record's keys.
        Auto = "auto",
        /// `{"text": ...}`: train on everything.
        Text = "text",
        /// `{"prompt": ..., "completion": ...}`.
        Completion = "completion",
        /// `{"messages": [{"role": ..., "content": ...}, ...]}`.
        Chat = "chat",
        /// `{"instruction": ..., "input": ..., "output": ...}`: a completion.
        Alpaca = "alpaca",
        /// `{"conversations": [{"from": ..., "value": ...}, ...]}`: a chat.
        ShareGpt = "sharegpt",
    }
}

word_enum! {
    /// `model.dtype`: the precision the frozen base weights (the model's
    /// matrices) are kept in. Norm weights, activations, LoRA weights,
    /// their gradients and the optimizer stay f32.
    ModelDType {
        F32 = "f32",
        /// bfloat16: f32's range, 8 significant bits; half the memory.
        Bf16 = "bf16",
        /// IEEE half: 11 significant bits, values up to 65504; half the memory.
        F16 = "f16",
    }
}

word_enum! {
    /// `training.schedule`: the learning-rate curve after warmup.
    Schedule {
        Constant = "constant",
        Linear = "linear",
        Cosine = "cosine",
    }
}

word_enum! {
    /// `resources.backend`: which tensor backend workers run.
    Backend {
        Cpu = "cpu",
        Cuda = "cuda",
        Tch = "tch",
    }
}

word_enum! {
    /// One linear layer of a Llama decoder block that LoRA can adapt.
    TargetModule {
        QProj = "q_proj",
        KProj = "k_proj",
        VProj = "v_proj",
        OProj = "o_proj",
        GateProj = "gate_proj",
        UpProj = "up_proj",
        DownProj = "down_proj",
    }
}

/// `dataset:` where the examples come from and how they become sequences.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetSpec {
    pub train: PathOrUrl,
    /// `validation: <path>` or `validation_fraction: <share>`; none by default.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    pub format: DatasetFormat,
    pub max_seq_len: u32,
    pub packing: bool,
    pub train_on_inputs: bool,
}

/// Held-out data for evaluation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Validation {
    /// `validation:` a file or URL.
    #[serde(rename = "validation")]
    Data(PathOrUrl),
    /// `validation_fraction:` this share of the training examples, in (0, 0.5].
    #[serde(rename = "validation_fraction")]
    Fraction(f64),
}

/// `lora:` the adapter's shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoraSpec {
    pub r: u32,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: TargetModules,
    pub use_rslora: bool,
    /// An adapter to start from instead of PEFT's init (B = 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_adapter: Option<PathOrUrl>,
}

impl LoraSpec {
    /// The factor on `B·A·x`: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = f64::from(self.r);
        if self.use_rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }
}

/// `lora.target_modules`: a list of layer names, or `all-linear`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetModules {
    /// Every linear layer of every decoder block (not the output head).
    AllLinear,
    /// These layers, in the order given, without repeats.
    List(Vec<TargetModule>),
}

impl TargetModules {
    /// The YAML spelling of [`TargetModules::AllLinear`].
    pub const ALL_LINEAR: &'static str = "all-linear";

    /// The adapted layers, `all-linear` expanded.
    pub fn modules(&self) -> Vec<TargetModule> {
        match self {
            TargetModules::AllLinear => TargetModule::ALL.to_vec(),
            TargetModules::List(list) => list.clone(),
        }
    }
}

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetModules::AllLinear => serializer.serialize_str(Self::ALL_LINEAR),
            TargetModules::List(list) => serializer.collect_seq(list),
        }
    }
}

/// `training:` the optimisation run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TrainingSpec {
    /// `max_steps:` or `epochs:` (one is required).
    #[serde(flatten)]
    pub length: TrainingLength,
    /// Examples per optimizer step, over all workers; a multiple of
    /// `micro_batch_size × workers` (the minimum, for a range). Default:
    /// `micro_batch_size × workers`, i.e. no gradient accumulation.
    pub global_batch_size: u32,
    /// Examples per forward/backward pass on one worker.
    pub micro_batch_size: u32,
    pub learning_rate: f64,
    pub schedule: Schedule,
    /// `warmup_steps:` or `warmup_ratio:`.
    #[serde(flatten)]
    pub warmup: Warmup,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    pub max_grad_norm: f64,
    /// Evaluate every this many steps; 0 turns periodic evaluation off.
    pub eval_every: u64,
    pub seed: u64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Keep only each layer's input through the forward pass and run the
    /// layer's forward pass again in the backward pass: less memory for
    /// about a third more arithmetic (Hugging Face's and Axolotl's
    /// `gradient_checkpointing`). Written back only when on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
}

impl TrainingSpec {
    /// Gradient accumulation steps when `workers` workers train:
    /// `global_batch_size / (micro_batch_size × workers)`, or `None` when
    /// that does not divide evenly (the job cannot run with that many).
    pub fn accumulation_steps(&self, workers: u32) -> Option<u32> {
        let per_pass = self.micro_batch_size.checked_mul(workers)?;
        (per_pass > 0 && self.global_batch_size.is_multiple_of(per_pass))
            .then(|| self.global_batch_size / per_pass)
    }
}

/// How long to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingLength {
    /// `max_steps:` optimizer steps, at least 1.
    MaxSteps(u64),
    /// `epochs:` full passes over the training data, at least 1.
    Epochs(u32),
}

/// The linear learning-rate warmup at the start of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Warmup {
    /// `warmup_steps:` a step count (may exceed the run: it then never ends).
    #[serde(rename = "warmup_steps")]
    Steps(u64),
    /// `warmup_ratio:` a share of the total steps, in [0, 1).
    #[serde(rename = "warmup_ratio")]
    Ratio(f64),
}

impl Warmup {
    /// Warmup steps for a run of `total_steps` (a ratio is rounded down).
    pub fn steps(&self, total_steps: u64) -> u64 {
        match *self {
            Warmup::Steps(steps) => steps,
            // In [0, 1) times a u64: the cast back cannot overflow.
            Warmup::Ratio(ratio) => (ratio * total_steps as f64) as u64,
        }
    }
}

/// `resources:` what the job asks of the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourcesSpec {
    pub workers: Workers,
    pub backend: Backend,
    pub threads_per_worker: u32,
    /// Higher runs first; FIFO within a priority.
    pub priority: i32,
}

/// `resources.workers`: a count (`2`) or an elastic range (`"1..4"`, both
/// ends included): the job starts with as many as are free, at least `min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Workers {
    pub min: u32,
    pub max: u32,
}

impl Workers {
    /// The most workers a spec may ask for.
    pub const LIMIT: u32 = 4096;

    /// Exactly `count` workers.
    pub fn fixed(count: u32) -> Workers {
        Workers {
            min: count,
            max: count,
        }
    }

    pub fn is_elastic(&self) -> bool {
        self.min != self.max
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_elastic() {
            write!(f, "{}..{}", self.min, self.max)
        } else {
            write!(f, "{}", self.min)
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_elastic() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u32(self.min)
        }
    }
}

/// `checkpoint:` how progress is saved and how failures are retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointSpec {
    /// Save every this many steps; 0 keeps only the final checkpoint.
    pub every_steps: u64,
    pub keep_last: u32,
    /// Also keep the checkpoint with the lowest validation loss.
    pub keep_best: bool,
    pub storage: PathOrUrl,
    /// Restarts from the latest checkpoint before the job fails.
    pub max_failures: u32,
}

/// `output:` where the final adapter goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutputSpec {
    /// `None`: the runner picks (the job's folder in checkpoint storage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathOrUrl>,
}

impl JobSpec {
    /// The worker counts in `resources.workers` that this job can run with:
    /// those for which `global_batch_size` divides evenly (ascending; never
    /// empty for a valid spec, since validation checks the minimum).
    pub fn usable_worker_counts(&self) -> Vec<u32> {
        let Workers { min, max } = self.resources.workers;
        (min..=max)
            .filter(|&n| self.training.accumulation_steps(n).is_some())
            .collect()
    }
}
