//! The YAML job spec: its shape, its defaults, its validation, and where
//! each problem is in the file.
//!
//! This module owns a user-facing contract, the job spec (docs/ARCHITECTURE.md,
//! `configs/`): [`JobSpec`] and its sections mirror the YAML keys one for one.
//! It reads a spec ([`JobSpec::from_file`], [`JobSpec::from_yaml`]), fills in
//! the defaults, resolves relative paths against the spec file's folder, and
//! checks every value, reporting **all** problems at once, each as
//! `file:line:col: key.path: what is wrong`:
//!
//! ```text
//! invalid job spec job.yaml (3 problems):
//! job.yaml:7:6: lora.r: must be between 1 and 1024, got 0
//! job.yaml:12:3: training.warmup_ratio: conflicts with training.warmup_steps at line 11; give only one of warmup_steps or warmup_ratio
//! job.yaml:15:3: checkpoint.keep_lst: unknown key; did you mean keep_last? allowed keys: every_steps, keep_last, keep_best, storage, max_failures
//! ```
//!
//! Command-line overrides (`lora.r=4`, `overrides.rs`) are written into
//! the spec's text before it is read ([`JobSpec::from_file_with_overrides`]),
//! and a problem in one names the override instead of a line.
//!
//! It does not read datasets or models, check that paths exist, talk to
//! object storage, or run anything: those belong to the trainer, the agent
//! and the CLI.
//!
//! **Architecture invariant:** no IO except reading the spec file itself in
//! [`JobSpec::from_file`]; everything else here is pure.
//!
//! # Locations
//!
//! serde-saphyr parses the YAML (anchors, aliases and merge keys included)
//! into a tree in which every key and value is wrapped in
//! [`serde_saphyr::Spanned`], so each carries its line and column
//! (`yaml.rs`). The reader (`validate.rs` on `reader.rs`, with the allowed
//! keys in `schema.rs`) walks that tree by hand: unknown or repeated keys
//! are reported at the key, wrong values at the value, a missing key at the
//! key of the section that should hold it (at the document's first key when
//! the section is missing too), and two alternatives given together at the
//! second key. YAML syntax errors come from serde-saphyr with its own
//! location.
//!
//! # Keys and defaults
//!
//! Required: `name`, `model.path | model.preset`, `dataset.train`,
//! `training.max_steps | training.epochs`. A key whose value is empty
//! (`key:` or `~`) counts as not given. Everything else defaults
//! (see [`defaults`]):
//!
//! ```yaml
//! name: my-job                 # required, one line of free text
//! model:                       # exactly one of:
//!   path: ./models/tiny        #   HF folder, .gguf file or URL
//!   preset: tiny               #   tiny | small | tiny-gqa, or a real shape: smollm2-135m |
//!                              #   smollm2-360m | llama-1b-shape (random, seeded by training.seed)
//!   dtype: ~                   # f32 | bf16 | f16: the frozen base weights' precision
//!                              #   (default f32 on cpu, bf16 on cuda; LoRA, activations, optimizer stay f32)
//! dataset:
//!   train: data/train.jsonl    # required; path or URL
//!   validation: data/val.jsonl # optional; or validation_fraction in (0, 0.5]
//!   format: auto               # auto | text | completion | chat
//!   max_seq_len: 512           # 8 ..= 1048576
//!   packing: false
//!   train_on_inputs: false
//! lora:
//!   r: 8                       # 1 ..= 1024
//!   alpha: 16                  # > 0
//!   dropout: 0.0               # [0, 1)
//!   target_modules: [q_proj, v_proj]  # q_proj k_proj v_proj o_proj gate_proj up_proj down_proj, or all-linear
//!   use_rslora: false
//!   init_adapter: ~            # optional path or URL of an adapter to start from
//! training:
//!   max_steps: 200             # required (>= 1), or epochs (>= 1)
//!   global_batch_size: 4       # default micro_batch_size × workers (the minimum for a range)
//!   micro_batch_size: 4
//!   learning_rate: 2.0e-4      # > 0
//!   schedule: cosine           # constant | linear | cosine
//!   warmup_steps: 0            # or warmup_ratio in [0, 1)
//!   weight_decay: 0.0          # >= 0
//!   max_grad_norm: 1.0         # >= 0; 0 turns clipping off
//!   eval_every: 0              # steps; 0 turns periodic evaluation off
//!   seed: 42
//!   adam_beta1: 0.9            # [0, 1)
//!   adam_beta2: 0.999          # [0, 1)
//!   adam_epsilon: 1.0e-8       # > 0
//!   gradient_checkpointing: false # recompute each layer's activations in the backward pass
//! resources:
//!   workers: 1                 # 1 ..= 4096, or a range "min..max" (both ends included)
//!   backend: cpu               # cpu | cuda | tch
//!   threads_per_worker: 1      # 1 ..= 1024
//!   priority: 0                # any i32; higher runs first
//! checkpoint:
//!   every_steps: 100           # 0: only the final checkpoint
//!   keep_last: 3               # >= 1
//!   keep_best: false           # needs validation data
//!   storage: runs              # path (beside the spec file) or URL
//!   max_failures: 3            # restarts from the latest checkpoint before failing
//! output:
//!   dir: ~                     # default: the job's folder in checkpoint storage
//! ```
//!
//! Rules across keys: `global_batch_size` must be a multiple of
//! `micro_batch_size × workers`; for a range, of `micro_batch_size × min`,
//! and the job then only runs with worker counts that divide it evenly
//! ([`JobSpec::usable_worker_counts`]). A positive `eval_every` and
//! `keep_best: true` need validation data.
//!
//! Paths: `model.path`, `dataset.train`, `dataset.validation`,
//! `lora.init_adapter`, `checkpoint.storage` and `output.dir` are relative to
//! the spec file's folder (made absolute by [`JobSpec::from_file`]); URLs
//! with a scheme in [`URL_SCHEMES`] (`s3://`, `gs://`, `az://`, `file://`,
//! `memory://`, `http(s)://`, ...) are kept as written. `~` is not expanded.
//!
//! Familiar spellings from Axolotl, torchtune and PEFT are read as aliases
//! where they mean exactly the same thing: `lora.lora_r`, `lora.lora_rank`
//! → `r`; `lora.lora_alpha` → `alpha`; `lora.lora_dropout` → `dropout`;
//! `lora.lora_target_modules` → `target_modules`; `dataset.sequence_len` →
//! `max_seq_len`; `dataset.sample_packing` → `packing`;
//! `dataset.val_set_size` → `validation_fraction`; `training.num_epochs` →
//! `epochs`; `training.eval_steps` → `eval_every`; `checkpoint.save_steps`
//! → `every_steps`; `checkpoint.save_total_limit` → `keep_last`. Bare
//! words such as `rank` or `lr` are errors with a did-you-mean. Giving a
//! key and its alias together is an error. [`JobSpec::to_yaml`] writes the
//! canonical names.

mod overrides;
mod reader;
mod schema;
mod suggest;
mod types;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

pub use types::{
    Backend, CheckpointSpec, DatasetFormat, DatasetSpec, JobSpec, LoraSpec, ModelDType, ModelSpec,
    OutputSpec, PathOrUrl, ResourcesSpec, Schedule, TargetModule, TargetModules, TrainingLength,
    TrainingSpec, URL_SCHEMES, Validation, Warmup, Workers, defaults,
};
pub use validate::limits;

/// The largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// One thing wrong with a spec, and where.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpecProblem {
    /// The file name given for messages; for a problem in a command-line
    /// override, the override (`override 2 (lora.r=abc)`).
    pub file: String,
    /// 1-based line; 0 when the problem is not in the file (an override).
    pub line: u32,
    /// 1-based column, in characters; 0 with line 0.
    pub column: u32,
    /// Dotted key path as spelt in the file (`lora.r`,
    /// `lora.target_modules[2]`); empty for the document as a whole.
    pub path: String,
    /// Lowercase, no trailing period.
    pub message: String,
}

/// `file:line:col: path: message` (`override N (key=value): path:
/// message` for an override's).
impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a spec could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read job spec {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The spec was read, and has these problems (never empty), in the
    /// order they appear in the file.
    #[error("{}", Problems { file, problems })]
    Invalid {
        file: String,
        problems: Vec<SpecProblem>,
    },
}

impl SpecError {
    /// The problems found (empty for [`SpecError::Read`]).
    pub fn problems(&self) -> &[SpecProblem] {
        match self {
            SpecError::Read { .. } => &[],
            SpecError::Invalid { problems, .. } => problems,
        }
    }
}

/// "invalid job spec FILE (N problems):" then one problem per line.
struct Problems<'a> {
    file: &'a str,
    problems: &'a [SpecProblem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let plural = if count == 1 { "" } else { "s" };
        write!(
            f,
            "invalid job spec {} ({count} problem{plural}):",
            self.file
        )?;
        for problem in self.problems {
            write!(f, "\n{problem}")?;
        }
        Ok(())
    }
}

impl JobSpec {
    /// Reads and checks the spec at `path`. Relative paths in it are resolved
    /// against the file's folder, made absolute (from the current directory,
    /// without touching the file system), so the spec stays valid wherever
    /// it goes next. Messages name the file as `path` is written.
    pub fn from_file(path: impl AsRef<Path>) -> Result<JobSpec, SpecError> {
        let path = path.as_ref();
        let (text, base_dir) = read_spec_file(path)?;
        JobSpec::from_yaml(&text, &path.display().to_string(), base_dir)
    }

    /// [`JobSpec::from_file`] with command-line overrides (`key.path=value`
    /// each, see `overrides.rs`) written into the file's text first; the
    /// spec is read from, and comes with, that text. Problems in the file
    /// keep its lines; a problem in an override names it. Relative paths
    /// in overrides are relative to the current directory.
    pub fn from_file_with_overrides(
        path: impl AsRef<Path>,
        overrides: &[impl AsRef<str>],
    ) -> Result<LoadedSpec, SpecError> {
        let path = path.as_ref();
        let (text, base_dir) = read_spec_file(path)?;
        let cwd = std::path::absolute(".").map_err(|source| SpecError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let overrides: Vec<&str> = overrides.iter().map(AsRef::as_ref).collect();
        let file_name = path.display().to_string();
        JobSpec::from_yaml_with_overrides(&text, &file_name, base_dir, &overrides, &cwd)
    }

    /// [`JobSpec::from_yaml`] with `overrides` written into `text` first;
    /// relative paths in them are joined to `cwd`.
    pub fn from_yaml_with_overrides(
        text: &str,
        file_name: &str,
        base_dir: impl AsRef<Path>,
        overrides: &[&str],
        cwd: &Path,
    ) -> Result<LoadedSpec, SpecError> {
        if overrides.is_empty() {
            let spec = JobSpec::from_yaml(text, file_name, base_dir)?;
            return Ok(LoadedSpec {
                spec,
                text: text.to_owned(),
            });
        }
        let overridden = overrides::apply(text, file_name, overrides, cwd)?;
        match JobSpec::from_yaml(overridden.text(), file_name, base_dir) {
            Ok(spec) => Ok(LoadedSpec {
                spec,
                text: overridden.text().to_owned(),
            }),
            Err(SpecError::Invalid { file, problems }) => Err(SpecError::Invalid {
                file,
                problems: overridden.locate(problems),
            }),
            Err(read) => Err(read),
        }
    }

    /// Reads and checks spec `text`. `file_name` names it in messages;
    /// relative paths in it are joined to `base_dir` as given.
    pub fn from_yaml(
        text: &str,
        file_name: &str,
        base_dir: impl AsRef<Path>,
    ) -> Result<JobSpec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(too_large(file_name));
        }
        let root = yaml::parse(text)
            .map_err(|error| document_problem(file_name, error.pos, error.message))?;
        validate::read(root.as_ref(), text, file_name, base_dir.as_ref()).map_err(|problems| {
            SpecError::Invalid {
                file: file_name.to_owned(),
                problems,
            }
        })
    }

    /// The spec as YAML, with canonical key names and every default written
    /// out; [`JobSpec::from_yaml`] reads it back to an equal spec (paths
    /// are already resolved, so any `base_dir` will do when they are
    /// absolute).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a JobSpec is plain data and always serializes")
    }
}

/// A spec and the text it was read from: the file's, with any
/// command-line overrides written in. That text is what a fleet stores
/// and runs.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedSpec {
    pub spec: JobSpec,
    pub text: String,
}

/// The text of the spec file at `path` (at most [`MAX_SPEC_BYTES`],
/// UTF-8) and the absolute folder its relative paths start from.
fn read_spec_file(path: &Path) -> Result<(String, PathBuf), SpecError> {
    let file_name = path.display().to_string();
    let read_error = |source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SPEC_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(too_large(&file_name));
    }
    let text = String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let valid = String::from_utf8_lossy(valid);
        let line = valid.matches('\n').count() + 1;
        let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        document_problem(
            &file_name,
            yaml::Pos {
                line: u32::try_from(line).unwrap_or(u32::MAX),
                column: u32::try_from(column).unwrap_or(u32::MAX),
            },
            "the spec is not valid UTF-8 text".to_owned(),
        )
    })?;
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let base_dir = std::path::absolute(folder).map_err(read_error)?;
    Ok((text, base_dir))
}

/// A spec with one problem that concerns the whole document.
fn document_problem(file_name: &str, pos: yaml::Pos, message: String) -> SpecError {
    SpecError::Invalid {
        file: file_name.to_owned(),
        problems: vec![SpecProblem {
            file: file_name.to_owned(),
            line: pos.line,
            column: pos.column,
            path: String::new(),
            message,
        }],
    }
}

fn too_large(file_name: &str) -> SpecError {
    let message = format!("the spec is larger than {MAX_SPEC_BYTES} bytes");
    document_problem(file_name, yaml::Pos::START, message)
}
