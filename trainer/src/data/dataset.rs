//! A job's datasets: the [`TokenizedDataset`] the sampler draws from, with
//! its [`DatasetStats`] (what `lorafleet validate` prints), and the training
//! and validation sets of a job ([`load_datasets`]).
//!
//! Owns: the held-out split ([`split_held_out`]), building a dataset from
//! the samples read (packed when asked) and its statistics. Not here:
//! reading, checking and tokenizing a file's lines ([`super::reading`]),
//! what a line may hold ([`super::jsonl`]), masks ([`super::format`]), the
//! packing rule ([`super::packing`]).

use serde::Serialize;

use super::batch::Batch;
use super::format::{Encoded, TokenizedSample};
use super::packing::pack;
use super::reading::read_samples;
use super::sampler::{HELD_OUT_TAG, SampleRef, seeded_permutation};
use super::source::DataSource;
use super::{DataError, DataOptions, Shape};
use crate::tokenizer::TextTokenizer;

/// Where validation samples come from.
#[derive(Debug, Clone, Default)]
pub enum Validation {
    #[default]
    None,
    /// A file of its own (`dataset.validation`).
    Source(DataSource),
    /// A share of the training file held out (`dataset.validation_fraction`),
    /// chosen by the seed.
    Fraction(f64),
}

/// The `dataset` part of a job, resolved.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    pub train: DataSource,
    pub validation: Validation,
    pub options: DataOptions,
    /// `training.seed`: picks the held-out samples.
    pub seed: u64,
}

/// A job's training set and, when it has one, validation set.
#[derive(Debug, Clone)]
pub struct Datasets {
    pub train: TokenizedDataset,
    pub validation: Option<TokenizedDataset>,
}

/// What `lorafleet validate` reports about a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DatasetStats {
    /// Rows the sampler draws from (packed rows when packing).
    pub samples: usize,
    /// Samples read and kept, before packing.
    pub source_samples: usize,
    pub tokens: usize,
    pub target_tokens: usize,
    /// Samples cut to `max_seq_len` (and kept).
    pub truncated: usize,
    /// Samples dropped for having no target token (truncation left none).
    pub dropped_without_targets: usize,
    /// The longest row, in tokens.
    pub longest: usize,
    /// The file's shape (`None` for a dataset built from samples).
    pub shape: Option<Shape>,
}

impl DatasetStats {
    /// `floor(samples / global_batch_size)`, as the sampler counts them.
    pub fn steps_per_epoch(&self, global_batch_size: usize) -> usize {
        self.samples.checked_div(global_batch_size).unwrap_or(0)
    }
}

/// Tokenized samples (rows) with their statistics.
#[derive(Debug, Clone)]
pub struct TokenizedDataset {
    name: String,
    samples: Vec<TokenizedSample>,
    stats: DatasetStats,
}

impl TokenizedDataset {
    /// A dataset of ready samples; `stats` counts them as they are.
    pub fn from_samples(name: impl Into<String>, samples: Vec<TokenizedSample>) -> Self {
        let stats = DatasetStats {
            source_samples: samples.iter().map(|s| s.segment_starts.len()).sum(),
            ..DatasetStats::default()
        };
        Self::with_stats(name.into(), samples, stats)
    }

    fn with_stats(name: String, samples: Vec<TokenizedSample>, mut stats: DatasetStats) -> Self {
        stats.samples = samples.len();
        stats.tokens = samples.iter().map(TokenizedSample::len).sum();
        stats.target_tokens = samples.iter().map(TokenizedSample::num_targets).sum();
        stats.longest = samples.iter().map(TokenizedSample::len).max().unwrap_or(0);
        TokenizedDataset {
            name,
            samples,
            stats,
        }
    }

    /// The source's name (as errors show it).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn samples(&self) -> &[TokenizedSample] {
        &self.samples
    }

    pub fn get(&self, index: usize) -> &TokenizedSample {
        &self.samples[index]
    }

    pub fn stats(&self) -> DatasetStats {
        self.stats
    }

    /// Target tokens of the samples at `indices`: called with a whole global
    /// batch, the loss's denominator (every rank can compute it alone).
    pub fn targets_in(&self, indices: &[usize]) -> usize {
        indices.iter().map(|&i| self.samples[i].num_targets()).sum()
    }

    /// The padded micro-batch of the draws `refs`.
    pub fn batch(&self, refs: &[SampleRef], pad_id: u32) -> Batch {
        let samples: Vec<&TokenizedSample> = refs.iter().map(|r| &self.samples[r.index]).collect();
        Batch::new(&samples, refs, pad_id)
    }
}

/// Splits `items` into (kept, held out): `round(len × fraction)` of them,
/// at least one and leaving at least one, chosen by a permutation seeded by
/// `seed` (see [`super::sampler`]); both keep their original order.
pub fn split_held_out<T>(
    items: Vec<T>,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<T>, Vec<T>), DataError> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(DataError::Config {
            key: "validation_fraction",
            message: format!("must be between 0 and 1 (exclusive), got {fraction}"),
        });
    }
    let n = items.len();
    if n < 2 {
        return Err(DataError::Config {
            key: "validation_fraction",
            message: format!(
                "the dataset has {n} sample(s); at least 2 are needed to hold one out"
            ),
        });
    }
    let held = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let mut is_held = vec![false; n];
    for i in seeded_permutation(n, seed, 0, HELD_OUT_TAG)
        .into_iter()
        .take(held)
    {
        is_held[i] = true;
    }
    let (mut kept, mut held_out) = (Vec::with_capacity(n - held), Vec::with_capacity(held));
    for (item, h) in items.into_iter().zip(is_held) {
        if h {
            held_out.push(item);
        } else {
            kept.push(item);
        }
    }
    Ok((kept, held_out))
}

/// Builds the dataset the sampler sees: packed when asked, with statistics.
fn build(
    name: String,
    encoded: Vec<Encoded>,
    dropped_without_targets: usize,
    shape: Shape,
    options: &DataOptions,
) -> TokenizedDataset {
    let stats = DatasetStats {
        source_samples: encoded.len(),
        truncated: encoded.iter().filter(|e| e.truncated).count(),
        dropped_without_targets,
        shape: Some(shape),
        ..DatasetStats::default()
    };
    let mut samples: Vec<TokenizedSample> = encoded.into_iter().map(|e| e.sample).collect();
    if options.packing {
        samples = pack(samples, options.max_seq_len);
    }
    TokenizedDataset::with_stats(name, samples, stats)
}

/// Loads one file as a dataset (what `lorafleet validate` checks).
pub fn load_dataset(
    source: &DataSource,
    tokenizer: &TextTokenizer,
    options: &DataOptions,
) -> Result<TokenizedDataset, DataError> {
    let read = read_samples(source, tokenizer, options)?;
    Ok(build(
        source.name().to_string(),
        read.samples,
        read.dropped_without_targets,
        read.shape,
        options,
    ))
}

/// Loads a job's training set and its validation set (a file of its own, or
/// a held-out share split off before packing).
pub fn load_datasets(
    config: &DatasetConfig,
    tokenizer: &TextTokenizer,
) -> Result<Datasets, DataError> {
    let options = &config.options;
    match &config.validation {
        Validation::None => Ok(Datasets {
            train: load_dataset(&config.train, tokenizer, options)?,
            validation: None,
        }),
        Validation::Source(source) => Ok(Datasets {
            train: load_dataset(&config.train, tokenizer, options)?,
            validation: Some(load_dataset(source, tokenizer, options)?),
        }),
        Validation::Fraction(fraction) => {
            let read = read_samples(&config.train, tokenizer, options)?;
            let (kept, held_out) = split_held_out(read.samples, *fraction, config.seed)?;
            let name = config.train.name().to_string();
            Ok(Datasets {
                train: build(
                    name.clone(),
                    kept,
                    read.dropped_without_targets,
                    read.shape,
                    options,
                ),
                validation: Some(build(
                    format!("{name} (held out)"),
                    held_out,
                    0,
                    read.shape,
                    options,
                )),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_split_is_seeded_and_disjoint() {
        let items: Vec<usize> = (0..100).collect();
        let (a_kept, a_held) = split_held_out(items.clone(), 0.1, 5).unwrap();
        let (b_kept, b_held) = split_held_out(items.clone(), 0.1, 5).unwrap();
        let (_, c_held) = split_held_out(items, 0.1, 6).unwrap();
        assert_eq!((a_kept.len(), a_held.len()), (90, 10));
        assert_eq!(a_held, b_held);
        assert_eq!(a_kept, b_kept);
        assert_ne!(a_held, c_held);
        assert!(a_held.iter().all(|h| !a_kept.contains(h)));
        assert!(a_held.windows(2).all(|w| w[0] < w[1]), "file order kept");
    }

    #[test]
    fn held_out_fraction_is_checked() {
        let err = split_held_out(vec![1, 2, 3], 1.5, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "validation_fraction: must be between 0 and 1 (exclusive), got 1.5"
        );
        assert_eq!(split_held_out(vec![1, 2], 0.01, 0).unwrap().1.len(), 1);
    }
}
