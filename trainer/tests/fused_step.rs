//! The fused CPU step against burn's autodiff graph, its reference.
//!
//! Both compute the loss and the LoRA gradients of the same batches; they
//! must agree to float rounding on shapes the PEFT fixtures do not cover:
//! grouped-query attention, sequences that are not a multiple of the
//! attention block, several batches of different shapes, padding, LoRA
//! dropout, adapters that start above the first layer.

use burn::tensor::Device;
use trainer::data::{Batch, SampleRef};
use trainer::lora::{AdapterSite, LoraConfig, LoraWeights, TargetModule};
use trainer::model::init::random_weights;
use trainer::model::{Llama, Preset};
use trainer::train::fused::CpuWeights;
use trainer::train::grad::{Engine, StepGradients, eval_loss_sum_with, lora_gradients_with};

fn model(device: &Device) -> Llama {
    let mut config = Preset::Tiny.config();
    config.hidden_size = 64;
    config.num_hidden_layers = 3;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.head_dim = 16;
    config.intermediate_size = 96;
    config.vocab_size = 97;
    let mut weights = random_weights(&config, 11);
    Llama::from_weights(&config, &mut weights, device).unwrap()
}

/// A batch of `rows × seq` with the last `pad` positions of odd rows masked
/// out (padding) and the first two of every row (a prompt).
fn batch(rows: usize, seq: usize, pad: usize, first: usize) -> Batch {
    let input_ids = (0..rows * seq)
        .map(|i| ((i * 31 + first) % 97) as i64)
        .collect();
    let target_mask = (0..rows * seq)
        .map(|i| {
            let (r, t) = (i / seq, i % seq);
            if t < 2 || (r % 2 == 1 && t >= seq - pad) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    Batch {
        input_ids,
        target_mask,
        rows,
        seq_len: seq,
        lengths: (0..rows)
            .map(|r| if r % 2 == 1 { seq - pad } else { seq })
            .collect(),
        sample_ids: (0..rows)
            .map(|i| SampleRef {
                epoch: 0,
                index: first + i,
                position: first + i,
            })
            .collect(),
    }
}

/// Adapters with non-zero `B`, so that every gradient path carries signal.
fn adapters(model: &Llama, targets: &[TargetModule], dropout: f64) -> LoraWeights {
    let mut config = LoraConfig::new(4, 8.0, targets);
    config.dropout = dropout;
    let mut lora = LoraWeights::init(&config, &model.config, 5);
    for (i, pair) in lora.pairs.values_mut().enumerate() {
        for (j, b) in pair.b.data.iter_mut().enumerate() {
            *b = (((i * 7 + j) % 13) as f32 - 6.0) * 0.01;
        }
    }
    lora
}

fn both(
    model: &mut Llama,
    lora: &LoraWeights,
    batches: &[Batch],
) -> (StepGradients, StepGradients) {
    let device = Device::flex().autodiff();
    let targets: usize = batches.iter().map(|b| b.num_targets()).sum();
    let run = |engine, model: &mut Llama| {
        lora_gradients_with(engine, model, lora, batches, targets as f64, 3, &device)
    };
    (run(Engine::Fused, model), run(Engine::Graph, model))
}

fn assert_close(fused: &StepGradients, graph: &StepGradients, lora: &LoraWeights) {
    assert_eq!(fused.targets, graph.targets);
    let rel = (fused.loss_sum - graph.loss_sum).abs() / graph.loss_sum.abs();
    assert!(
        rel < 1e-5,
        "loss sums {} vs {}",
        fused.loss_sum,
        graph.loss_sum
    );
    let (mut f, mut g) = (lora.clone(), lora.clone());
    f.set_flat(&fused.grads);
    g.set_flat(&graph.grads);
    for ((site, fp), gp) in f.pairs.iter().zip(g.pairs.values()) {
        for (name, a, b) in [("A", &fp.a.data, &gp.a.data), ("B", &fp.b.data, &gp.b.data)] {
            let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(
                scale > 0.0,
                "{}.{name}: the reference gradient is zero",
                site.hf_name()
            );
            let diff = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "{}.{name}: fused and graph differ by {diff:e} (largest {scale:e})",
                site.hf_name()
            );
        }
    }
}

#[test]
fn the_fused_step_is_used_on_the_cpu_backend() {
    assert!(CpuWeights::of(&model(&Device::flex().autodiff())).is_some());
    assert!(CpuWeights::of(&model(&Device::flex())).is_some());
}

#[test]
fn all_seven_modules_with_dropout_match_the_graph_on_odd_shapes() {
    let mut model = model(&Device::flex().autodiff());
    let lora = adapters(&model, &TargetModule::ALL, 0.1);
    // 70 positions: a full attention block and a partial one; 9: one partial block.
    let batches = [batch(3, 70, 5, 0), batch(2, 9, 3, 40)];
    let (fused, graph) = both(&mut model, &lora, &batches);
    assert_close(&fused, &graph, &lora);
}

#[test]
fn query_and_value_adapters_above_the_first_layer_match_the_graph() {
    let mut model = model(&Device::flex().autodiff());
    let mut lora = adapters(&model, &[TargetModule::QProj, TargetModule::VProj], 0.0);
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
    let lora = adapters(&model, &targets, 0.0);
    let (fused, graph) = both(&mut model, &lora, &[batch(4, 33, 4, 9)]);
    assert_close(&fused, &graph, &lora);
}

#[test]
fn evaluation_losses_match_the_graph_and_ignore_dropout() {
    let device = Device::flex().autodiff();
    let mut model = model(&device);
    let lora = adapters(&model, &TargetModule::ALL, 0.3);
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
