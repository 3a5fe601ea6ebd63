//! Training data: JSONL datasets turned into token ids, loss masks, and the
//! batches each rank trains on at each step.
//!
//! Owns: reading datasets through `object_store` ([`source`]), parsing and
//! checking the five JSONL shapes ([`jsonl`]), tokenizing them with loss
//! masks ([`format`](mod@format)), truncation, reading a file's lines into
//! samples within memory bounds ([`reading`]), packing ([`packing`]),
//! held-out splits and statistics ([`dataset`]), the deterministic distributed sampler
//! ([`sampler`]) and padded batches ([`batch`]). Not here: tensors (the
//! trainer turns a [`Batch`]'s plain `Vec`s into them), the loss itself, the
//! tokenizer and chat templates (`crate::tokenizer`), or the job spec (the
//! coordinator fills a [`DatasetConfig`]). This module does not depend on
//! burn.
//!
//! # The shapes
//!
//! Each non-blank line of a file is one JSON object in one of five shapes,
//! detected per file from its keys (`format: auto`: the first valid line
//! decides, a later line of another shape is an error; a line with the
//! keys of two shapes is ambiguous) or forced (`text`, `completion`,
//! `chat`, `alpaca`, `sharegpt`). Extra keys are ignored.
//!
//! | shape | line (detected by) | targets (unless `train_on_inputs`) |
//! |---|---|---|
//! | text | `{"text": "..."}` | every token, plus EOS appended |
//! | completion | `{"prompt": "...", "completion": "..."}` | the completion's tokens plus EOS; the prompt is masked |
//! | chat | `{"messages": [{"role": "system"\|"user"\|"assistant", "content": "...", "weight": 0\|1}, ...]}` | each assistant turn's tokens up to and including the EOS the template closes it with, except a turn with `"weight": 0` (never a target, even with `train_on_inputs`); system and user turns and the template's own markup are masked |
//! | alpaca | `{"instruction": "...", "input": "...", "output": "..."}` (`instruction` or `output`) | a completion: prompt = the Stanford Alpaca template (`jsonl::ALPACA_WITH_INPUT` when the input is not empty, `ALPACA_WITHOUT_INPUT` otherwise; absent and `null` are empty); completion = output |
//! | sharegpt | `{"conversations": [{"from": "system"\|"human"\|"gpt", "value": "..."}, ...]}` | a chat: `human` (or `user`) is the user, `gpt` (or `assistant`) the assistant, `system` the system |
//!
//! A bad line names its field (`messages[1].weight must be 0 or 1 (got
//! 0.5)`), and a misspelt key or role gets a suggestion (`unknown shape:
//! ... (keys: mesages); did you mean "messages" for "mesages"?`,
//! `conversations[0].from "humman" is not ...; did you mean "human"?`).
//!
//! `text` and `prompt` are encoded as a prompt
//! ([`TextTokenizer::encode_prompt`](crate::tokenizer::TextTokenizer::encode_prompt):
//! BOS first when the model asks for it); the completion is encoded on its
//! own and appended, so a prompt's tokens are exactly the ones `generate`
//! feeds the model for it. EOS is appended when the tokenizer has one.
//! How chat turns are located is described in [`format`](mod@format).
//!
//! # The loss-mask convention (the same as Hugging Face's labels)
//!
//! A sample is `input_ids[0..n]` with `target_mask[0..n]`.
//! `target_mask[t] == true` means token `t` is a target: the loss includes
//! the cross-entropy of predicting `input_ids[t]` from the logits at
//! position `t - 1`. Position 0 is never a target (nothing predicts it).
//! This is exactly HF's convention of `labels = input_ids` with `-100` at
//! masked positions, shifted inside the loss (`logits[..., :-1]` against
//! `labels[..., 1:]`); [`Batch::hf_labels`] writes that form. In a
//! [`Batch`], padding positions are never targets.
//!
//! The trainer sums the cross-entropy of all target tokens of its
//! micro-batches and divides by the number of target tokens of the WHOLE
//! global batch ([`TokenizedDataset::targets_in`] on
//! [`Sampler::global_batch`]), so gradient accumulation and N ranks give the
//! gradient of one big batch.
//!
//! # Truncation, packing, validation
//!
//! A sample longer than `max_seq_len` keeps its first `max_seq_len` tokens
//! (counted in [`DatasetStats::truncated`]), and only the text those can
//! come from is tokenized ([`format::fit_to_budget`]), so a long record
//! costs what its kept part does; one left with no target at all
//! (a prompt longer than `max_seq_len`) is dropped and counted in
//! [`DatasetStats::dropped_without_targets`]. With `packing`, consecutive
//! samples are packed greedily, in file order, into rows of at most
//! `max_seq_len` tokens ([`packing`]); packed samples attend to each other
//! (HF's simple packing: positions are not reset), but no token is ever
//! trained to be predicted from the previous sample, because each sample's
//! first token stays masked. Validation comes from its own file or from a
//! held-out fraction of the training file chosen by the seed
//! ([`dataset::split_held_out`]); the split happens before packing.
//!
//! # Memory
//!
//! A line longer than [`source::MAX_RECORD_BYTES`] (16 MB) is refused as
//! `FILE:LINE: record is N MB, over the 16 MB limit` without being kept. A
//! record costs about its size to parse ([`jsonl`] keeps only the strings
//! a shape uses), and at most [`tokenized_text_budget`](format::tokenized_text_budget)`(max_seq_len)`
//! bytes of each sample's text are tokenized (a chat: about twice that),
//! at most [`TOKENIZED_BYTES_AT_ONCE`](reading::TOKENIZED_BYTES_AT_ONCE)
//! bytes (or one sample) at once whatever the number of threads.
//! Tokenizing costs up to
//! ~250 bytes a byte of text; what threads keep of it once freed is handed
//! back when it grows past the same again. So loading a dataset holds, at
//! its peak, at most 80 MiB + 8 × the largest record + 512 × max(256 KiB,
//! the text tokenized for one sample), plus 5 bytes a kept token
//! (tests/security/records.rs measures it).

pub mod batch;
pub mod dataset;
pub mod format;
pub mod jsonl;
pub mod packing;
pub mod reading;
pub mod sampler;
pub mod source;

use std::fmt;
use std::str::FromStr;

pub use batch::{Batch, pad_id};
pub use dataset::{
    DatasetConfig, DatasetStats, Datasets, TokenizedDataset, Validation, load_dataset,
    load_datasets,
};
pub use format::TokenizedSample;
pub use jsonl::RawSample;
pub use reading::check_records;
pub use sampler::{SampleRef, Sampler};
pub use source::DataSource;

/// How many bad lines are collected before loading stops and reports them.
pub const MAX_PROBLEMS: usize = 20;

/// Why a dataset could not be loaded, split, or sampled.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Bad lines, each shown as `FILE:LINE: what is wrong`, one per line.
    #[error("{}", format_problems(.problems, *.stopped_early, .file))]
    Invalid {
        file: String,
        problems: Vec<LineProblem>,
        /// Reading stopped at [`MAX_PROBLEMS`]; the file may hold more.
        stopped_early: bool,
    },
    #[error("{file}: empty dataset ({why})")]
    Empty { file: String, why: String },
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error("{file}: chat samples need a chat template, and the model's tokenizer has none")]
    NoChatTemplate { file: String },
    /// A setting out of range; `key` is its name in the job spec.
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("global batch size {global_batch_size} is larger than the dataset ({samples} samples)")]
    BatchLargerThanDataset {
        global_batch_size: usize,
        samples: usize,
    },
}

/// One bad line: `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

fn format_problems(problems: &[LineProblem], stopped_early: bool, file: &str) -> String {
    let mut out: Vec<String> = problems.iter().map(ToString::to_string).collect();
    if stopped_early {
        out.push(format!(
            "{file}: stopped after {} problems; the file may hold more",
            problems.len()
        ));
    }
    out.join("\n")
}

/// The shape of a JSONL line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `{"text"}`
    Text,
    /// `{"prompt", "completion"}`
    Completion,
    /// `{"messages"}`
    Chat,
    /// `{"instruction", "input", "output"}`, read as a completion.
    Alpaca,
    /// `{"conversations": [{"from", "value"}, ...]}`, read as a chat.
    #[serde(rename = "sharegpt")]
    ShareGpt,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Text => "text",
            Shape::Completion => "completion",
            Shape::Chat => "chat",
            Shape::Alpaca => "alpaca",
            Shape::ShareGpt => "sharegpt",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `dataset.format` setting: detect the shape per file, or force one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Auto,
    Text,
    Completion,
    Chat,
    Alpaca,
    ShareGpt,
}

impl Format {
    /// The forced shape; `None` for [`Format::Auto`].
    pub fn shape(self) -> Option<Shape> {
        match self {
            Format::Auto => None,
            Format::Text => Some(Shape::Text),
            Format::Completion => Some(Shape::Completion),
            Format::Chat => Some(Shape::Chat),
            Format::Alpaca => Some(Shape::Alpaca),
            Format::ShareGpt => Some(Shape::ShareGpt),
        }
    }
}

impl FromStr for Format {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Format, DataError> {
        match s {
            "auto" => Ok(Format::Auto),
            "text" => Ok(Format::Text),
            "completion" => Ok(Format::Completion),
            "chat" => Ok(Format::Chat),
            "alpaca" => Ok(Format::Alpaca),
            "sharegpt" => Ok(Format::ShareGpt),
            other => Err(DataError::Config {
                key: "format",
                message: format!(
                    "must be auto, text, completion, chat, alpaca or sharegpt, got {other:?}"
                ),
            }),
        }
    }
}

/// How samples are tokenized and shaped; the `dataset` keys of the job spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DataOptions {
    pub format: Format,
    /// Longest sample (or packed row) in tokens.
    pub max_seq_len: usize,
    /// Pack consecutive samples into rows of `max_seq_len` tokens.
    pub packing: bool,
    /// Train on prompt, system and user tokens too (only position 0 stays masked).
    pub train_on_inputs: bool,
}

impl Default for DataOptions {
    fn default() -> DataOptions {
        DataOptions {
            format: Format::Auto,
            max_seq_len: 2048,
            packing: false,
            train_on_inputs: false,
        }
    }
}

impl DataOptions {
    pub fn check(&self) -> Result<(), DataError> {
        if self.max_seq_len < 2 {
            return Err(DataError::Config {
                key: "max_seq_len",
                message: format!(
                    "must be at least 2 (one input and one target), got {}",
                    self.max_seq_len
                ),
            });
        }
        Ok(())
    }
}
