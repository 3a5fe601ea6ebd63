//! Frozen base weights kept in bf16 or f16 on the CPU (`model.dtype`): the
//! fused CPU step runs on them (no fallback to the graph), agrees with the
//! graph engine on the same 16-bit weights, and agrees with the f32 step
//! on weights that 16 bits hold exactly; a 16-bit model loaded from disk
//! matches transformers' logits of the same checkpoint; loading narrows
//! each tensor as it is read or drawn.
//!
//! Arithmetic. An f16 weight is widened to f32 (exact) and multiplied with
//! the f32 activations. A bf16 weight is multiplied as under torch's bf16
//! autocast: the activations are rounded to bf16 (to nearest even) and
//! each term is a product of bf16 values, summed in f32; the fused step
//! rounds the input of every such product (`dy` too in the backward pass),
//! the graph engine rounds `x` in the forward pass (`frozen_matmul`).
//!
//! Tolerances:
//! - fused vs graph on the same 16-bit weights: the fused step's own
//!   tolerance against the graph (`fused_step.rs`): loss sums to 1e-5
//!   relative (both engines round the same forward activations), each LoRA
//!   gradient to 1e-4 of its largest value for f16; for bf16 the gradients
//!   to [`BF16_GRAD_TOLERANCE`], since the two backward passes round at
//!   different places (the fused step rounds `dy` before `dy · Wᵀ`, as
//!   autocast does; the graph's cast rounds the product's result instead);
//! - fused 16-bit vs fused f32 on the same (16-bit-representable) values:
//!   for f16 2e-6 relative (a handful of f32 ulps: only the order of sums
//!   may differ, and on these shapes each product is one tile, so it does
//!   not); for bf16 the activations' rounding to bf16 is the difference,
//!   so loss sums to [`BF16_LOSS_TOLERANCE`] and gradients to
//!   [`BF16_GRAD_TOLERANCE`];
//! - transformers on the f16 checkpoint (f32 arithmetic on the weights
//!   upcast exactly, `tests/fixtures/README.md`): logits to 1e-4 absolute,
//!   as `hf_parity.rs`, and the fused loss to 1e-5 relative;
//! - transformers on the bf16 checkpoint with every `nn.Linear`'s input
//!   rounded to bf16 (`logits_bf16_products` of `expected_bf16.safetensors`,
//!   `gen_llama_fixtures.py`): the same arithmetic as ours, so the same
//!   1e-4 for the graph's logits, but [`BF16_FUSED_LOSS_TOLERANCE`] for the
//!   fused loss; and transformers computing in bf16 throughout
//!   (`logits_bf16`: the model loaded in torch.bfloat16, its activations
//!   and residual stream rounded to bf16 after every operation), to
//!   [`BF16_COMPUTE_LOGIT_TOLERANCE`]: those extra roundings are its own,
//!   and put it about as far from our logits (4.3e-2 on this checkpoint)
//!   as from f32 transformers' (3.6e-2), on logits of magnitude up to 3.3.

use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use trainer::data::Batch;
use trainer::device::FrozenDType;
use trainer::lora::{LoraConfig, LoraWeights, TargetModule};
use trainer::model::init::{random_weights, random_weights_as};
use trainer::model::{Llama, LlamaConfig, ModelSource, StoredTensor, WeightMap, hf};
use trainer::train::fused::CpuWeights;
use trainer::train::grad::{Engine, eval_loss_sum_with};

mod common;

use common::engines::{
    GRAD_TOLERANCE, LOSS_TOLERANCE, adapters, assert_grads_close, assert_losses_close, batch_of,
    gradients, padded_batch as batch, small_config,
};
use common::{Reference, fixture, max_abs_diff};

const HALVES: [FrozenDType; 2] = [FrozenDType::Bf16, FrozenDType::F16];

/// Largest allowed `max |got − want| / max |want|` per adapter matrix when
/// the two sides round activations to bf16 at different places: a few
/// bf16 units of roundoff (2⁻⁸ relative) on the largest gradient.
const BF16_GRAD_TOLERANCE: f32 = 2e-2;
/// Largest allowed relative difference of loss sums between bf16 products
/// and f32 ones on the same weights: the activations' rounding to bf16
/// (2⁻⁹ relative each) averages out over the sums, so well under 2⁻⁹.
const BF16_LOSS_TOLERANCE: f64 = 5e-4;
/// Largest allowed relative difference between the fused step's loss and
/// transformers' with bf16 products: the fused step's f32 arithmetic
/// differs from torch's in the last ulps (its `exp`, the order of sums),
/// and an activation that lies that close to a bf16 rounding boundary
/// then rounds the other way, a 2⁻⁸ relative change of one product input,
/// so a few of them move the loss by about 1e-5 (4.0e-5 measured here).
const BF16_FUSED_LOSS_TOLERANCE: f64 = 2e-4;
/// Largest allowed absolute logit difference from transformers computing
/// in bf16 throughout (see the module comment).
const BF16_COMPUTE_LOGIT_TOLERANCE: f64 = 0.1;

/// The gradient tolerance between two engines or paths on `dtype` weights.
fn grad_tolerance(dtype: FrozenDType, exact: f32) -> f32 {
    if dtype == FrozenDType::Bf16 {
        BF16_GRAD_TOLERANCE
    } else {
        exact
    }
}

fn config() -> LlamaConfig {
    small_config(3, 97)
}

fn model(mut weights: WeightMap, device: &Device) -> Llama {
    Llama::from_weights(&config(), &mut weights, device).unwrap()
}

/// Every matrix of `weights` rounded to `dtype` and widened back: f32
/// values that `dtype` holds exactly.
fn representable(weights: WeightMap, dtype: FrozenDType) -> WeightMap {
    let names: Vec<String> = weights.names().map(str::to_string).collect();
    let mut weights = weights;
    let mut out = WeightMap::new("rounded");
    for name in names {
        let t = weights.get(&name).unwrap().clone();
        let shape = t.shape.clone();
        weights.take(&name, &shape).unwrap();
        let t = if shape.len() >= 2 {
            StoredTensor::narrowed(t, dtype).into_f32()
        } else {
            t
        };
        out.insert(name, t);
    }
    out
}

/// Adapters on every projection with non-zero `B`.
fn all_adapters(config: &LlamaConfig, dropout: f64) -> LoraWeights {
    adapters(config, &TargetModule::ALL, dropout)
}

fn batches() -> [Batch; 2] {
    // 70 positions: a full attention block and a partial one.
    [batch(3, 70, 5, 0), batch(2, 9, 3, 40)]
}

#[test]
fn the_fused_step_runs_on_16_bit_weights_and_matches_the_graph_on_them() {
    let device = Device::flex().autodiff();
    for dtype in HALVES {
        let mut m = model(random_weights_as(&config(), 11, Some(dtype)), &device);
        let attn = &m.layers[0].self_attn;
        assert_eq!(
            attn.q_proj.weight.val().dtype(),
            DType::from(dtype.float_dtype())
        );
        assert_eq!(
            m.embed_tokens.val().dtype(),
            DType::from(dtype.float_dtype())
        );
        assert!(
            CpuWeights::of(&m).is_some(),
            "{dtype}: the fused step declined the model"
        );
        let lora = all_adapters(&m.config, 0.1);
        let batches = batches();
        let fused = gradients(Engine::Fused, &mut m, &lora, &batches);
        let graph = gradients(Engine::Graph, &mut m, &lora, &batches);
        assert_losses_close(&fused, &graph, LOSS_TOLERANCE, dtype.name());
        let tolerance = grad_tolerance(dtype, GRAD_TOLERANCE);
        let worst = assert_grads_close(&fused, &graph, &lora, tolerance, dtype.name());
        eprintln!("{dtype}: fused vs graph gradients within {worst:e} of the largest");

        // Evaluation too.
        let (f, n) = eval_loss_sum_with(Engine::Fused, &mut m, &lora, &batches, &device);
        let (g, _) = eval_loss_sum_with(Engine::Graph, &mut m, &lora, &batches, &device);
        assert_eq!(n, fused.targets);
        assert!((f - g).abs() / g < 1e-5, "{dtype}: eval {f} vs {g}");
    }
}

#[test]
fn the_fused_step_on_16_bit_weights_equals_it_on_the_same_values_in_f32() {
    let device = Device::flex().autodiff();
    for dtype in HALVES {
        let exact = representable(random_weights(&config(), 11), dtype);
        let mut wide = model(representable(random_weights(&config(), 11), dtype), &device);
        let mut narrow_weights = WeightMap::with_dtype("narrow", Some(dtype));
        for name in exact.names() {
            narrow_weights.insert(name, exact.get(name).unwrap().clone());
        }
        let mut narrow = model(narrow_weights, &device);
        assert_eq!(
            narrow.lm_head.val().dtype(),
            DType::from(dtype.float_dtype())
        );
        assert_eq!(wide.lm_head.val().dtype(), DType::F32);

        let lora = all_adapters(&wide.config, 0.1);
        let batches = batches();
        let want = gradients(Engine::Fused, &mut wide, &lora, &batches);
        let got = gradients(Engine::Fused, &mut narrow, &lora, &batches);
        let rel = (got.loss_sum - want.loss_sum).abs() / want.loss_sum;
        let loss_tolerance = match dtype {
            FrozenDType::Bf16 => BF16_LOSS_TOLERANCE,
            _ => 2e-6,
        };
        assert_losses_close(&got, &want, loss_tolerance, dtype.name());
        let tolerance = grad_tolerance(dtype, 2e-6);
        let worst = assert_grads_close(&got, &want, &lora, tolerance, dtype.name());
        eprintln!("{dtype} vs f32: loss sums {rel:e} apart, gradients within {worst:e}");
    }
}

#[test]
fn narrowing_as_drawn_gives_the_f32_draws_rounded() {
    let config = config();
    let wide = random_weights(&config, 4);
    for dtype in HALVES {
        let narrow = random_weights_as(&config, 4, Some(dtype));
        assert_eq!(narrow.dtype(), Some(dtype));
        assert_eq!(narrow.len(), wide.len());
        for name in wide.names() {
            let w = wide.get(name).unwrap();
            let n = narrow.get_stored(name).unwrap();
            if w.shape.len() >= 2 {
                assert_eq!(n.dtype(), dtype, "{name}");
                assert_eq!(*n, StoredTensor::narrowed(w.clone(), dtype), "{name}");
            } else {
                // Norm weights stay f32.
                assert_eq!(n, &StoredTensor::F32(w.clone()), "{name}");
            }
        }
    }
    // The f32 path is untouched: the same values bit for bit, in f32.
    let again = random_weights_as(&config, 4, None);
    for name in wide.names() {
        assert_eq!(again.get(name), wide.get(name), "{name}");
    }
}

#[test]
fn a_16_bit_checkpoint_is_read_straight_into_16_bits() {
    for (variant, dtype) in [("bf16", FrozenDType::Bf16), ("f16", FrozenDType::F16)] {
        let dir = fixture(&format!("llama/{variant}"));
        let wide = hf::read_weights(&dir).unwrap();
        let narrow = hf::read_weights_as(&dir, Some(dtype)).unwrap();
        for name in wide.names() {
            let w = wide.get(name).unwrap();
            let n = narrow.get_stored(name).unwrap();
            if w.shape.len() >= 2 {
                // Widening was exact, so narrowing back gives the file's values.
                assert_eq!(*n, StoredTensor::narrowed(w.clone(), dtype), "{name}");
            } else {
                assert_eq!(n, &StoredTensor::F32(w.clone()), "{name}");
            }
        }
    }
}

/// The input and logits `name` of the fixture file `file`.
fn reference(dir: &std::path::Path, file: &str, name: &str) -> (Vec<usize>, Vec<i64>, Vec<f64>) {
    let expected = Reference::open(&dir.join(file));
    let (shape, ids) = expected.ids("input_ids");
    let (_, logits) = expected.get(name);
    (shape, ids, logits)
}

#[test]
fn a_16_bit_model_matches_transformers_on_its_checkpoint() {
    for (variant, dtype) in [("bf16", FrozenDType::Bf16), ("f16", FrozenDType::F16)] {
        let dir = fixture(&format!("llama/{variant}"));
        let device = Device::flex();
        let source = ModelSource::open_as(&dir, Some(dtype)).unwrap();
        let (mut model, _) = source.into_model(&device).unwrap();
        let want_dtype = DType::from(dtype.float_dtype());
        assert_eq!(model.layers[1].mlp.up_proj.weight.val().dtype(), want_dtype);
        assert_eq!(model.lm_head.val().dtype(), want_dtype);

        // Logits of the graph forward pass, against transformers' with the
        // same arithmetic: bf16 products for bf16 weights, f32 for f16.
        let (shape, ids, want) = match dtype {
            FrozenDType::Bf16 => {
                reference(&dir, "expected_bf16.safetensors", "logits_bf16_products")
            }
            _ => reference(&dir, "expected.safetensors", "logits"),
        };
        let (rows, seq) = (shape[0], shape[1]);
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [rows, seq]), &device);
        let logits: Vec<f32> = model.forward(input).into_data().try_into_vec().unwrap();
        let diff = max_abs_diff(&logits, &want);
        eprintln!("{variant}: max abs logit difference {diff:e}");
        assert!(diff <= 1e-4, "{variant}: logits differ by {diff:e}");
        if dtype == FrozenDType::Bf16 {
            let (_, bf16_ids, computed) =
                reference(&dir, "expected_bf16.safetensors", "logits_bf16");
            assert_eq!(bf16_ids, ids);
            let diff = max_abs_diff(&logits, &computed);
            eprintln!("{variant}: max abs difference from transformers in bf16 {diff:e}");
            assert!(
                diff <= BF16_COMPUTE_LOGIT_TOLERANCE,
                "{variant}: logits differ from transformers' bf16 ones by {diff:e}"
            );
        }

        // The fused step's loss on the same input, against the
        // cross-entropy of transformers' logits (B = 0: the base model).
        let vocab = model.config.vocab_size;
        let mut want_loss = 0.0f64;
        for r in 0..rows {
            for t in 0..seq - 1 {
                let row = &want[(r * seq + t) * vocab..(r * seq + t + 1) * vocab];
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                want_loss += lse - row[ids[r * seq + t + 1] as usize];
            }
        }
        let batch = batch_of(ids, seq, &vec![seq; rows], 1, 0);
        let lora = LoraWeights::init(
            &LoraConfig::new(4, 8.0, &TargetModule::ALL),
            &model.config,
            1,
        );
        assert!(CpuWeights::of(&model).is_some());
        let (got, n) = eval_loss_sum_with(Engine::Fused, &mut model, &lora, [&batch], &device);
        assert_eq!(n, rows * (seq - 1));
        let rel = (got - want_loss).abs() / want_loss;
        eprintln!("{variant}: fused loss {got} vs transformers' {want_loss} ({rel:e})");
        let tolerance = match dtype {
            FrozenDType::Bf16 => BF16_FUSED_LOSS_TOLERANCE,
            _ => 1e-5,
        };
        assert!(
            rel < tolerance,
            "{variant}: fused loss {got} vs {want_loss}"
        );
    }
}
