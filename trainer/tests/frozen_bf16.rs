//! Frozen base weights kept in bf16, as on a GPU (`device::frozen_dtype`),
//! run on the CPU backend: the graph engine's loss and LoRA gradients stay
//! within bf16 rounding of the f32 ones, and the LoRA gradients stay f32.
//! Either way a product with a bf16 weight takes bf16 inputs and sums in
//! f32, as torch's bf16 autocast: on the CPU `frozen_matmul` rounds the
//! activations to bf16 and widens both sides to f32 inside each product;
//! on a GPU the products run in bf16 (`scripts/gpu-check` runs this file
//! there).

use burn::module::Param;
use burn::tensor::{DType, Device, FloatDType, Tensor};
use trainer::data::Batch;
use trainer::lora::{LoraConfig, LoraWeights, TargetModule};
use trainer::model::Llama;
use trainer::model::llama::{Projection, frozen_matmul};
use trainer::train::grad::{Engine, eval_loss_sum_with, lora_gradients_with};

mod common;

use common::engines::{batch_of, small_model};

fn model(device: &Device) -> Llama {
    small_model(2, 97, 3, device)
}

fn narrow(p: &mut Param<Tensor<2>>) {
    *p = Param::from_tensor(p.val().cast(FloatDType::BF16)).set_require_grad(false);
}

/// Every frozen matrix of `model` in bf16, as `from_weights` keeps them on a GPU.
fn to_bf16(model: &mut Llama) {
    let projection = |p: &mut Projection| narrow(&mut p.weight);
    for layer in &mut model.layers {
        let a = &mut layer.self_attn;
        for p in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj] {
            projection(p);
        }
        let m = &mut layer.mlp;
        for p in [&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj] {
            projection(p);
        }
    }
    narrow(&mut model.embed_tokens);
    narrow(&mut model.lm_head);
}

/// `rows × seq` tokens, every position after a two-token prompt a target.
fn batch(rows: usize, seq: usize) -> Batch {
    let ids = (0..rows * seq)
        .map(|i| ((i * 29 + 3) % 97) as i64)
        .collect();
    batch_of(ids, seq, &vec![seq; rows], 2, 0)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn bf16_frozen_weights_give_the_f32_gradients_within_bf16_rounding() {
    let device = trainer::device::default_device().autodiff();
    let targets = [
        TargetModule::QProj,
        TargetModule::VProj,
        TargetModule::DownProj,
    ];
    let mut f32_model = model(&device);
    let mut lora = LoraWeights::init(&LoraConfig::new(4, 8.0, &targets), &f32_model.config, 5);
    for pair in lora.pairs.values_mut() {
        for (j, b) in pair.b.data.iter_mut().enumerate() {
            *b = ((j % 11) as f32 - 5.0) * 0.01;
        }
    }
    let batches = [batch(3, 12), batch(2, 7)];
    let denominator = batches.iter().map(|b| b.num_targets()).sum::<usize>() as f64;
    let want = lora_gradients_with(
        Engine::Graph,
        &mut f32_model,
        &lora,
        &batches,
        denominator,
        1,
        &device,
    );

    let mut bf16_model = model(&device);
    to_bf16(&mut bf16_model);
    assert_eq!(bf16_model.lm_head.val().dtype(), DType::BF16);
    let got = lora_gradients_with(
        Engine::Graph,
        &mut bf16_model,
        &lora,
        &batches,
        denominator,
        1,
        &device,
    );

    assert_eq!(got.targets, want.targets);
    let loss_diff = (got.loss_sum - want.loss_sum).abs() / want.loss_sum;
    assert!(
        loss_diff < 1e-2,
        "loss {} vs {}",
        got.loss_sum,
        want.loss_sum
    );
    assert!(loss_diff > 0.0, "the bf16 weights were not used");
    let grad_diff = rel_l2(&got.grads, &want.grads);
    assert!(
        grad_diff < 5e-2,
        "gradients differ by {grad_diff} (relative L2)"
    );

    let (eval_got, _) =
        eval_loss_sum_with(Engine::Graph, &mut bf16_model, &lora, &batches, &device);
    assert!((eval_got - got.loss_sum).abs() / got.loss_sum < 1e-5);
}

#[test]
fn products_with_a_bf16_weight_come_back_in_f32() {
    let device = trainer::device::default_device();
    let x = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
    let w = Tensor::<2>::from_floats([[0.5, -1.0], [0.25, 2.0]], &device);
    let plain = frozen_matmul(x.clone(), w.clone());
    assert_eq!(plain.dtype(), DType::F32);
    let narrow = frozen_matmul(x, w.cast(FloatDType::BF16));
    assert_eq!(narrow.dtype(), DType::F32);
    // These values are exact in bf16.
    assert_eq!(
        narrow.into_data().try_to_vec::<f32>().unwrap(),
        plain.into_data().try_to_vec::<f32>().unwrap()
    );
}

#[test]
fn products_with_a_bf16_weight_take_the_activations_rounded_to_bf16() {
    let device = trainer::device::default_device();
    // 1 + 2⁻¹⁰ rounds to 1 in bf16, 1 + 3·2⁻⁸ (a tie) to 1 + 2⁻⁶; an f32
    // weight multiplies them as they are.
    let x = Tensor::<2>::from_floats([[1.0 + 2f32.powi(-10), 1.0 + 3.0 * 2f32.powi(-8)]], &device);
    let w = Tensor::<2>::from_floats([[1.0], [1.0]], &device);
    let narrow = frozen_matmul(x.clone(), w.clone().cast(FloatDType::BF16));
    let got = narrow.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(got, [2.0 + 2f32.powi(-6)]);
    let plain = frozen_matmul(x, w).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(plain, [2.0 + 2f32.powi(-10) + 3.0 * 2f32.powi(-8)]);
}
