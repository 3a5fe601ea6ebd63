//! Whole-workload benchmarks that `lorafleet bench` runs and prints.
//!
//! [`forward`] measures inference: a full forward pass (logits for every
//! position) on the preset's batch of random tokens, and greedy decoding
//! with the KV cache. Figures are medians over timed runs after warm-up;
//! every timed run ends by reading the result back, so queued device work
//! is counted. [`train`] measures one LoRA training step (forward, backward,
//! AdamW) on the same batches, and [`matmul`] holds it to this machine's
//! sgemm speed.

mod matmul;

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::collective::{Collective, CollectiveError};
use crate::data::{Batch, SampleRef};
use crate::device::FrozenDType;
use crate::generate::{GenerateOptions, generate};
use crate::lora::{LoraConfig, LoraWeights, TargetModule};
use crate::model::{ModelError, ModelSource, Preset};
use crate::train::grad::{Activations, StepMode, lora_gradients_with};
use crate::train::optim::{AdamWConfig, AdamWState};
pub use matmul::{SgemmReport, SgemmShape, step_matmul_flops};
#[cfg(feature = "flex")]
pub use matmul::{frozen_kernel, sgemm};

/// The batch shape (rows, tokens per row) each preset is measured at by
/// default: the REFERENCE workloads for the small presets, two rows of 512
/// tokens for the real shapes.
pub fn batch_shape(preset: Preset) -> (usize, usize) {
    match preset {
        Preset::Tiny | Preset::TinyGqa => (8, 128),
        Preset::Small => (4, 256),
        Preset::Smollm2_135m | Preset::Smollm2_360m | Preset::Llama1bShape => (2, 512),
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

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Collective(#[from] CollectiveError),
}

/// Results of [`train`] (the `bench train --json` object).
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub preset: String,
    /// `fused` or `graph` (the engine asked for).
    pub engine: String,
    /// The frozen weights' type asked for (`default`: f32 on the CPU).
    pub dtype: String,
    /// Whether each layer's forward pass ran again in the backward pass.
    pub gradient_checkpointing: bool,
    /// The kernel that multiplied the frozen weights: [`frozen_kernel`]'s
    /// name in the fused step on the CPU, `graph` in the graph engine or
    /// on an accelerator.
    pub frozen_kernel: String,
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
    /// [`step_matmul_flops`] of the global batch, in 1e9.
    pub matmul_gflop_per_step: f64,
    /// That work over the median step time: compare with `bench sgemm`'s
    /// `peak_gflops` at the same threads.
    pub matmul_gflops: f64,
}

/// Measures LoRA training steps on the reference workload: r = 8, alpha 16,
/// no dropout, adapters on q_proj and v_proj, AdamW at lr 1e-4, random
/// tokens, every token a target.
///
/// With a ring of N ranks, every rank draws the same global batch, trains
/// on every N-th row of it and all-reduces the gradients each step (the
/// data-parallel step of `train::run`); tokens/s is then the whole global
/// batch's, from this rank's median step. `shape` is (rows, tokens per row).
#[allow(clippy::too_many_arguments)]
pub fn train(
    preset: Preset,
    (batch, seq): (usize, usize),
    dtype: Option<FrozenDType>,
    mode: StepMode,
    threads: usize,
    warmup_steps: usize,
    timed_steps: usize,
    device: &Device,
    collective: &mut dyn Collective,
) -> Result<TrainReport, BenchError> {
    let device = device.clone().autodiff();
    let (mut model, _) = ModelSource::random_as(preset, 0, dtype).into_model(&device)?;
    let config = LoraConfig::new(8, 16.0, &[TargetModule::QProj, TargetModule::VProj]);
    let mut lora = LoraWeights::init(&config, &model.config, 0);
    let mut params = lora.to_flat();
    let mut adam = AdamWState::new(params.len());
    let adam_config = AdamWConfig::default();
    let vocab = model.config.vocab_size as i64;
    let mut rng = StdRng::seed_from_u64(2);

    let mut times = Vec::with_capacity(timed_steps);
    let (rank, world) = (collective.rank(), collective.world());
    let rows: Vec<usize> = (rank..batch).step_by(world).collect();
    collective.barrier()?;
    for step in 0..warmup_steps + timed_steps.max(1) {
        let global: Vec<i64> = (0..batch * seq)
            .map(|_| rng.random_range(0..vocab))
            .collect();
        let micro = Batch {
            input_ids: rows
                .iter()
                .flat_map(|&r| global[r * seq..(r + 1) * seq].iter().copied())
                .collect(),
            target_mask: vec![1.0; rows.len() * seq],
            rows: rows.len(),
            seq_len: seq,
            lengths: vec![seq; rows.len()],
            sample_ids: rows
                .iter()
                .map(|&i| SampleRef {
                    epoch: 0,
                    index: i,
                    position: i,
                })
                .collect(),
        };
        let denominator = (batch * seq) as f64;
        let start = Instant::now();
        let mut g = lora_gradients_with(
            mode,
            &mut model,
            &lora,
            std::slice::from_ref(&micro),
            denominator,
            0,
            &device,
        );
        collective.all_reduce_sum(&mut g.grads)?;
        adam.update(&adam_config, &mut params, &g.grads, 1e-4);
        lora.set_flat(&params);
        if step >= warmup_steps {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    let step_s = median(&mut times);
    let flops = step_matmul_flops(&model.config, batch, seq);
    Ok(TrainReport {
        preset: preset.name().to_string(),
        engine: mode.engine.name().to_string(),
        dtype: dtype.map_or("default", FrozenDType::name).to_string(),
        gradient_checkpointing: mode.activations == Activations::Recomputed,
        frozen_kernel: frozen_kernel_of(mode, dtype, &device).to_string(),
        world,
        threads,
        batch,
        seq_len: seq,
        tokens_per_s: (batch * seq) as f64 / step_s,
        step_ms: step_s * 1e3,
        peak_rss_mib: peak_rss_mib(),
        warmup_steps,
        timed_steps: times.len(),
        lora_parameters: lora.num_parameters(),
        matmul_gflop_per_step: flops / 1e9,
        matmul_gflops: flops / step_s / 1e9,
    })
}

/// [`TrainReport::frozen_kernel`].
fn frozen_kernel_of(mode: StepMode, dtype: Option<FrozenDType>, device: &Device) -> &'static str {
    #[cfg(feature = "flex")]
    if mode.engine == crate::train::grad::Engine::Fused && !crate::device::is_accelerator(device) {
        return frozen_kernel(dtype.unwrap_or(FrozenDType::F32));
    }
    let _ = (mode, dtype, device);
    "graph"
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

/// The middle value (the upper one of an even count); sorts `xs`.
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// One size of [`allreduce`] (a `bench allreduce --json` line).
#[derive(Debug, Clone, Serialize)]
pub struct AllReduceReport {
    pub world: usize,
    /// The transport the links used ("tcp" or "shm").
    pub transport: String,
    /// Whether the ranks met in one shared mapping instead of passing data
    /// around the ring's links.
    pub shared_group: bool,
    pub size_bytes: usize,
    pub iters: usize,
    /// Seconds per all-reduce (mean over the timed iterations).
    pub time_s: f64,
    /// `size_bytes / time_s` in GB/s (1e9 bytes), as nccl-tests define it.
    #[serde(rename = "algbw_GBps")]
    pub algbw_gbps: f64,
    /// `algbw × 2(N−1)/N`: what each rank's links carried, per second.
    #[serde(rename = "busbw_GBps")]
    pub busbw_gbps: f64,
}

/// How many timed iterations a size gets: about 1 GiB moved, 5 to 50.
pub fn allreduce_iters(size_bytes: usize) -> usize {
    ((1usize << 30) / size_bytes.max(1)).clamp(5, 50)
}

/// Times `iters` all-reduces of `size_bytes` on `ring` (after one warm-up
/// and a barrier) and reports this rank's figures, labelled with the
/// ring's transport and whether it used a shared group.
pub fn allreduce(
    ring: &mut dyn Collective,
    (transport, shared_group): (&str, bool),
    size_bytes: usize,
    iters: usize,
) -> Result<AllReduceReport, CollectiveError> {
    let mut buf = vec![1.0f32; (size_bytes / 4).max(1)];
    ring.all_reduce_sum(&mut buf)?;
    ring.barrier()?;
    let start = Instant::now();
    for _ in 0..iters.max(1) {
        ring.all_reduce_sum(&mut buf)?;
    }
    let time_s = start.elapsed().as_secs_f64() / iters.max(1) as f64;
    let world = ring.world();
    let algbw = (buf.len() * 4) as f64 / time_s / 1e9;
    Ok(AllReduceReport {
        world,
        transport: transport.to_string(),
        shared_group,
        size_bytes: buf.len() * 4,
        iters: iters.max(1),
        time_s,
        algbw_gbps: algbw,
        busbw_gbps: algbw * 2.0 * (world - 1) as f64 / world as f64,
    })
}

/// GB/s of one thread copying `bytes` (the best of 3 copies).
pub fn memcpy_gbps(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        best = best.min(start.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e9
}

/// GB/s of one TCP stream over 127.0.0.1 carrying `bytes` (the best of 3).
pub fn loopback_gbps(bytes: usize) -> std::io::Result<f64> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let chunk = 1 << 20;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let sender = std::thread::spawn(move || -> std::io::Result<()> {
            let mut s = std::net::TcpStream::connect(addr)?;
            let buf = vec![7u8; chunk];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk);
                s.write_all(&buf[..n])?;
                left -= n;
            }
            Ok(())
        });
        let (mut r, _) = listener.accept()?;
        let mut buf = vec![0u8; chunk];
        let start = Instant::now();
        let mut got = 0;
        while got < bytes {
            match r.read(&mut buf)? {
                0 => break,
                n => got += n,
            }
        }
        best = best.min(start.elapsed().as_secs_f64());
        sender.join().expect("the sender does not panic")?;
    }
    Ok(bytes as f64 / best / 1e9)
}
