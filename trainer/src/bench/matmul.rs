//! The matrix-product yardstick of `bench train`: how many floating-point
//! operations a LoRA step's matrix products need ([`step_matmul_flops`]),
//! and how fast this machine multiplies f32 matrices with the kernel the
//! fused step uses ([`sgemm`]), so that a step's speed can be read as a
//! fraction of what the hardware allows; with a 16-bit weight, the
//! products the fused step runs on a bf16 or f16 model.
//!
//! Not here: timing the step itself (`super::train`).

use serde::Serialize;

#[cfg(feature = "flex")]
use crate::device::FrozenDType;
use crate::model::LlamaConfig;

/// The multiply-adds (×2) of one training step's matrix products on
/// `rows × seq` tokens, every token a target, frozen base weights:
/// - the forward projections and their input gradients, `2 × 2 · tokens ·
///   Σ in·out` over every layer's seven projections;
/// - causal attention, `q·kᵀ` and `p·v` forward and the four products of
///   its backward pass, counted over the visible (lower) triangle only:
///   `6 · 2 · heads · dim · seq(seq+1)/2` per row and layer;
/// - the head, forward and input gradient, `2 × 2 · tokens · hidden · vocab`.
///
/// LoRA's rank-r products (under 1% here) and anything recomputed are not
/// counted: this is the work any exact implementation must do.
pub fn step_matmul_flops(config: &LlamaConfig, rows: usize, seq: usize) -> f64 {
    let h = config.hidden_size as f64;
    let q = (config.num_attention_heads * config.head_dim) as f64;
    let kv = (config.num_key_value_heads * config.head_dim) as f64;
    let inter = config.intermediate_size as f64;
    let per_token_layer = h * q + 2.0 * h * kv + q * h + 3.0 * h * inter;
    let tokens = (rows * seq) as f64;
    let layers = config.num_hidden_layers as f64;
    let projections = 2.0 * 2.0 * tokens * per_token_layer * layers;
    let visible = (seq * (seq + 1) / 2) as f64;
    let attention = 6.0 * 2.0 * q * visible * rows as f64 * layers;
    let head = 2.0 * 2.0 * tokens * h * config.vocab_size as f64;
    projections + attention + head
}

/// One shape of [`sgemm`].
#[derive(Debug, Clone, Serialize)]
pub struct SgemmShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// All threads together, 1e9 floating-point operations per second.
    pub gflops: f64,
}

/// Results of [`sgemm`] (the `bench sgemm --json` object).
#[derive(Debug, Clone, Serialize)]
pub struct SgemmReport {
    /// The weight's type (`b`): `f32`, `bf16` (activations rounded to
    /// bf16, f32 sums) or `f16` (widened to f32).
    pub dtype: String,
    pub threads: usize,
    /// The kernel that ran ([`frozen_kernel`]): `f32`, `bf16_amx`,
    /// `bf16_avx512`, `bf16_widened` or `f16_widened`.
    pub kernel: String,
    /// The best shape's figure: the peak a step's products are held to.
    pub peak_gflops: f64,
    pub shapes: Vec<SgemmShape>,
}

/// The kernel the fused step multiplies a frozen weight of `dtype` with on
/// this CPU (`kernels::matmul_weight`): `f32`; for bf16, `bf16_amx` (AMX
/// tiles), `bf16_avx512` (`vdpbf16ps`) or `bf16_widened` (exact widening
/// to f32, where the CPU has neither); `f16_widened`.
#[cfg(feature = "flex")]
pub fn frozen_kernel(dtype: FrozenDType) -> &'static str {
    use crate::train::fused::{bf16_amx, bf16_gemm};
    match dtype {
        FrozenDType::F32 => "f32",
        FrozenDType::Bf16 if bf16_amx::available() => "bf16_amx",
        FrozenDType::Bf16 if bf16_gemm::has_dot_bf16() => "bf16_avx512",
        FrozenDType::Bf16 => "bf16_widened",
        FrozenDType::F16 => "f16_widened",
    }
}

/// The shapes measured: square, and a projection of the real presets
/// (512 tokens through SmolLM2-360M's up projection and Llama-3.2-1B's).
#[cfg(feature = "flex")]
const SHAPES: [(usize, usize, usize); 3] =
    [(1024, 1024, 1024), (512, 960, 2560), (512, 2048, 8192)];

/// Matrix products on every thread of the CPU pool at once, each thread
/// multiplying its own matrices single-threaded, as the fused step's
/// shares do: the medians of `runs` timed runs per shape. `dtype` is the
/// type the weight (the right-hand matrix) is kept in, multiplied as the
/// fused step multiplies a frozen weight of that type
/// (`kernels::matmul_weight`); f32 is the plain f32 product.
#[cfg(feature = "flex")]
pub fn sgemm(runs: usize, dtype: FrozenDType) -> SgemmReport {
    use crate::train::fused::kernels::{MatMut, MatRef, Values, WeightRef, matmul_weight};
    use half::{bf16, f16};
    use rayon::prelude::*;
    use std::time::Instant;

    let threads = rayon::current_num_threads();
    let shapes = SHAPES
        .iter()
        .map(|&(m, k, n)| {
            let a: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) / 7.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i % 11) as f32 - 5.0) / 9.0).collect();
            let b_bf16: Vec<bf16>;
            let b_f16: Vec<f16>;
            let weight = match dtype {
                FrozenDType::F32 => Values::F32(&b),
                FrozenDType::Bf16 => {
                    b_bf16 = b.iter().map(|&v| bf16::from_f32(v)).collect();
                    Values::Bf16(&b_bf16)
                }
                FrozenDType::F16 => {
                    b_f16 = b.iter().map(|&v| f16::from_f32(v)).collect();
                    Values::F16(&b_f16)
                }
            };
            let mut outs: Vec<Vec<f32>> = (0..threads).map(|_| vec![0.0; m * n]).collect();
            let mut product = || {
                outs.par_iter_mut().for_each(|out| {
                    matmul_weight(
                        MatMut::new(out, m, n),
                        MatRef::new(&a, m, k),
                        WeightRef::new(weight, k, n),
                        1.0,
                        false,
                    )
                })
            };
            product();
            let mut times: Vec<f64> = (0..runs.max(1))
                .map(|_| {
                    let start = Instant::now();
                    product();
                    start.elapsed().as_secs_f64()
                })
                .collect();
            let seconds = super::median(&mut times);
            SgemmShape {
                m,
                k,
                n,
                gflops: 2.0 * (m * k * n * threads) as f64 / seconds / 1e9,
            }
        })
        .collect::<Vec<_>>();
    SgemmReport {
        dtype: dtype.name().to_string(),
        threads,
        kernel: frozen_kernel(dtype).to_string(),
        peak_gflops: shapes.iter().map(|s| s.gflops).fold(0.0, f64::max),
        shapes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    #[test]
    fn a_step_of_the_tiny_preset_counts_its_products_by_hand() {
        let c = Preset::Tiny.config();
        // 8 × 128 tokens; hidden 256, 4 heads of 64, intermediate 688, vocab 1024, 4 layers.
        let tokens = 1024.0;
        let projections = 4.0 * tokens * (4.0 * 256.0 * 256.0 + 3.0 * 256.0 * 688.0) * 4.0;
        let attention = 12.0 * 256.0 * (128.0 * 129.0 / 2.0) * 8.0 * 4.0;
        let head = 4.0 * tokens * 256.0 * 1024.0;
        assert_eq!(
            step_matmul_flops(&c, 8, 128),
            projections + attention + head
        );
    }

    #[test]
    fn grouped_query_attention_counts_narrower_key_and_value_projections() {
        let full = step_matmul_flops(&Preset::Tiny.config(), 1, 64);
        let gqa = step_matmul_flops(&Preset::TinyGqa.config(), 1, 64);
        // k and v shrink from 256 to 128 outputs: 2 × 256 × 128 fewer per token and layer.
        assert_eq!(full - gqa, 4.0 * 64.0 * 2.0 * 256.0 * 128.0 * 4.0);
    }
}
