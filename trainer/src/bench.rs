//! Whole-workload benchmarks that `lorafleet bench` runs and prints.
//!
//! [`forward`] measures inference: a full forward pass (logits for every
//! position) on the preset's batch of random tokens, and greedy decoding
//! with the KV cache. Figures are medians over timed runs after warm-up;
//! every timed run ends by reading the result back, so queued device work
//! is counted. [`train`] measures one LoRA training step (forward, backward,
//! AdamW) on the same batches.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::data::{Batch, SampleRef};
use crate::generate::{GenerateOptions, generate};
use crate::lora::{LoraConfig, LoraWeights, TargetModule};
use crate::model::{ModelError, ModelSource, Preset};
use crate::train::grad::lora_gradients;
use crate::train::optim::{AdamWConfig, AdamWState};

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

/// Results of [`train`] (the `bench train --json` object).
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub preset: String,
    pub world: usize,
    pub threads: usize,
    pub batch: usize,
    pub seq_len: usize,
    /// Tokens per second of the median step (aggregate over ranks).
    pub tokens_per_s: f64,
    pub step_ms: f64,
    /// Peak resident memory of the process (the largest rank).
    pub peak_rss_mib: f64,
    pub warmup_steps: usize,
    pub timed_steps: usize,
    pub lora_parameters: usize,
}

/// Measures LoRA training steps on the reference workload: r = 8, alpha 16,
/// no dropout, adapters on q_proj and v_proj, AdamW at lr 1e-4, random
/// tokens, every token a target.
pub fn train(
    preset: Preset,
    threads: usize,
    warmup_steps: usize,
    timed_steps: usize,
    device: &Device,
) -> Result<TrainReport, ModelError> {
    let device = device.clone().autodiff();
    let (mut model, _) = ModelSource::random(preset, 0).into_model(&device)?;
    let config = LoraConfig::new(8, 16.0, &[TargetModule::QProj, TargetModule::VProj]);
    let mut lora = LoraWeights::init(&config, &model.config, 0);
    let mut params = lora.to_flat();
    let mut adam = AdamWState::new(params.len());
    let adam_config = AdamWConfig::default();
    let (batch, seq) = batch_shape(preset);
    let vocab = model.config.vocab_size as i64;
    let mut rng = StdRng::seed_from_u64(2);

    let mut times = Vec::with_capacity(timed_steps);
    for step in 0..warmup_steps + timed_steps.max(1) {
        let micro = Batch {
            input_ids: (0..batch * seq)
                .map(|_| rng.random_range(0..vocab))
                .collect(),
            target_mask: vec![1.0; batch * seq],
            rows: batch,
            seq_len: seq,
            lengths: vec![seq; batch],
            sample_ids: (0..batch)
                .map(|i| SampleRef {
                    epoch: 0,
                    index: i,
                    position: i,
                })
                .collect(),
        };
        let denominator = micro.num_targets() as f64;
        let start = Instant::now();
        let g = lora_gradients(
            &mut model,
            &lora,
            std::slice::from_ref(&micro),
            denominator,
            0,
            &device,
        );
        adam.update(&adam_config, &mut params, &g.grads, 1e-4);
        lora.set_flat(&params);
        if step >= warmup_steps {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let step_s = median(&mut times);
    Ok(TrainReport {
        preset: preset.name().to_string(),
        world: 1,
        threads,
        batch,
        seq_len: seq,
        tokens_per_s: (batch * seq) as f64 / step_s,
        step_ms: step_s * 1e3,
        peak_rss_mib: peak_rss_mib(),
        warmup_steps,
        timed_steps: times.len(),
        lora_parameters: lora.num_parameters(),
    })
}

/// Peak resident set size of this process in MiB (`VmHWM`), 0 where unknown.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
