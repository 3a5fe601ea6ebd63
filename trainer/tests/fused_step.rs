//! The fused CPU step against burn's autodiff graph, its reference.
//!
//! Both compute the loss and the LoRA gradients of the same batches; they
//! must agree to float rounding on shapes the PEFT fixtures do not cover:
//! grouped-query attention, sequences that are not a multiple of the
//! attention block, several batches of different shapes, padding, LoRA
//! dropout, adapters that start above the first layer.

use burn::tensor::Device;
use trainer::lora::{AdapterSite, TargetModule};
use trainer::model::Llama;
use trainer::train::fused::CpuWeights;
use trainer::train::grad::{Engine, eval_loss_sum_with};

mod common;

use common::engines::{adapters, assert_close, both, padded_batch as batch, small_model};

fn model(device: &Device) -> Llama {
    small_model(3, 97, 11, device)
}

#[test]
fn the_fused_step_is_used_on_the_cpu_backend() {
    assert!(CpuWeights::of(&model(&Device::flex().autodiff())).is_some());
    assert!(CpuWeights::of(&model(&Device::flex())).is_some());
}

#[test]
fn all_seven_modules_with_dropout_match_the_graph_on_odd_shapes() {
    let mut model = model(&Device::flex().autodiff());
    let lora = adapters(&model.config, &TargetModule::ALL, 0.1);
    // 70 positions: a full attention block and a partial one; 9: one partial block.
    let batches = [batch(3, 70, 5, 0), batch(2, 9, 3, 40)];
    let (fused, graph) = both(&mut model, &lora, &batches);
    assert_close(&fused, &graph, &lora);
}

#[test]
fn query_and_value_adapters_above_the_first_layer_match_the_graph() {
    let mut model = model(&Device::flex().autodiff());
    let mut lora = adapters(
        &model.config,
        &[TargetModule::QProj, TargetModule::VProj],
        0.0,
    );
    lora.pairs.retain(|site: &AdapterSite, _| site.layer > 0);
    let batches = [batch(2, 130, 7, 3)];
    let (fused, graph) = both(&mut model, &lora, &batches);
    assert_close(&fused, &graph, &lora);
}

#[test]
fn mlp_only_adapters_match_the_graph() {
    let mut model = model(&Device::flex().autodiff());
    let targets = [
        TargetModule::GateProj,
        TargetModule::UpProj,
        TargetModule::DownProj,
    ];
    let lora = adapters(&model.config, &targets, 0.0);
    let (fused, graph) = both(&mut model, &lora, &[batch(4, 33, 4, 9)]);
    assert_close(&fused, &graph, &lora);
}

#[test]
fn evaluation_losses_match_the_graph_and_ignore_dropout() {
    let device = Device::flex().autodiff();
    let mut model = model(&device);
    let lora = adapters(&model.config, &TargetModule::ALL, 0.3);
    let batches = [batch(3, 70, 5, 0), batch(2, 9, 3, 40)];
    let (fused, n) = eval_loss_sum_with(Engine::Fused, &mut model, &lora, &batches, &device);
    let (graph, m) = eval_loss_sum_with(Engine::Graph, &mut model, &lora, &batches, &device);
    assert_eq!(n, m);
    assert!(
        (fused - graph).abs() <= 1e-5 * graph.abs(),
        "{fused} vs {graph}"
    );
    // Twice the same: no dropout mask was drawn.
    let (again, _) = eval_loss_sum_with(Engine::Fused, &mut model, &lora, &batches, &device);
    assert_eq!(fused, again);
}
