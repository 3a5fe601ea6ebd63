//! Whole-workload benchmarks that `lorafleet bench` runs and prints.
//!
//! [`forward`] measures inference: a full forward pass (logits for every
//! position) on the preset's batch of random tokens, and greedy decoding
//! with the KV cache. Figures are medians over timed runs after warm-up;
//! every timed run ends by reading the result back, so queued device work
//! is counted. Not here: training speed (it comes with the training loop).

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::generate::{GenerateOptions, generate};
use crate::model::{ModelError, ModelSource, Preset};

/// The batch shape each preset is measured at (REFERENCE workloads).
pub fn batch_shape(preset: Preset) -> (usize, usize) {
    match preset {
        Preset::Tiny | Preset::TinyGqa => (8, 128),
        Preset::Small => (4, 256),
    }
}

/// Results of [`forward`].
#[derive(Debug, Clone, Serialize)]
pub struct ForwardReport {
    pub preset: String,
    pub threads: usize,
    pub batch: usize,
    pub seq_len: usize,
    /// Prompt tokens processed per second by the full forward pass (median run).
    pub tokens_per_s: f64,
    pub forward_ms: f64,
    /// New tokens per second of greedy decoding with the KV cache, batch 1.
    pub decode_tokens_per_s: f64,
    pub decode_tokens: usize,
    pub warmup_runs: usize,
    pub timed_runs: usize,
}

/// Measures the forward pass and decoding of a random `preset` model.
pub fn forward(
    preset: Preset,
    threads: usize,
    timed_runs: usize,
    device: &Device,
) -> Result<ForwardReport, ModelError> {
    let (model, _) = ModelSource::random(preset, 0).into_model(device)?;
    let (batch, seq) = batch_shape(preset);
    let vocab = model.config.vocab_size;
    let mut rng = StdRng::seed_from_u64(1);
    let ids: Vec<i64> = (0..batch * seq)
        .map(|_| rng.random_range(0..vocab as i64))
        .collect();
    let input = || Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq]), device);

    let warmup_runs = 1;
    for _ in 0..warmup_runs {
        model.forward(input()).into_data();
    }
    let mut times = Vec::with_capacity(timed_runs);
    for _ in 0..timed_runs.max(1) {
        let start = Instant::now();
        model.forward(input()).into_data();
        times.push(start.elapsed().as_secs_f64());
    }
    let forward_s = median(&mut times);

    let prompt: Vec<u32> = ids[..16].iter().map(|&t| t as u32).collect();
    let decode_tokens = 32;
    let options = GenerateOptions {
        max_new_tokens: decode_tokens + 1,
        ignore_eos: true,
        ..Default::default()
    };
    let mut decode_times = Vec::new();
    for _ in 0..timed_runs.max(1) {
        // The first new token comes from the prompt pass; time the rest.
        let mut first_at = None;
        let mut last_at = Instant::now();
        generate(&model, &prompt, &options, device, |_| {
            last_at = Instant::now();
            first_at.get_or_insert(last_at);
        })
        .expect("a valid prompt");
        let first = first_at.expect("tokens were generated");
        decode_times.push((last_at - first).as_secs_f64() / decode_tokens as f64);
    }
    let per_token = median(&mut decode_times);

    Ok(ForwardReport {
        preset: preset.name().to_string(),
        threads,
        batch,
        seq_len: seq,
        tokens_per_s: (batch * seq) as f64 / forward_s,
        forward_ms: forward_s * 1e3,
        decode_tokens_per_s: 1.0 / per_token,
        decode_tokens,
        warmup_runs,
        timed_runs: timed_runs.max(1),
    })
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
