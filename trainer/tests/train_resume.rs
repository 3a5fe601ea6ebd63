//! Stopping a run, saving its state to a folder, loading it and continuing
//! gives the same losses, bit for bit, as never stopping; and a run is
//! reproducible from its seed.

use burn::tensor::Device;
use trainer::collective::Solo;
use trainer::data::{Sampler, TokenizedDataset, TokenizedSample};
use trainer::lora::{LoraConfig, LoraWeights, TargetModule};
use trainer::model::{Llama, ModelSource, Preset};
use trainer::train::grad::Activations;
use trainer::train::optim::AdamWConfig;
use trainer::train::schedule::Schedule;
use trainer::train::{SampledSteps, TrainConfig, TrainState, run, run::Silent};

fn dataset() -> TokenizedDataset {
    // 24 short samples of ids 3..40 whose second half is the target.
    let samples = (0..24u32)
        .map(|i| {
            let len = 6 + (i % 5) as usize;
            let input_ids = (0..len as u32).map(|t| 3 + (i * 7 + t * 3) % 37).collect();
            let target_mask = (0..len).map(|t| t >= len / 2).collect();
            TokenizedSample {
                input_ids,
                target_mask,
                segment_starts: vec![0],
            }
        })
        .collect();
    TokenizedDataset::from_samples("synthetic", samples)
}

fn config() -> TrainConfig {
    TrainConfig {
        max_steps: 6,
        learning_rate: 1e-2,
        schedule: Schedule::Cosine,
        warmup_steps: 2,
        adam: AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
        max_grad_norm: 1.0,
        eval_every: 2,
        seed: 5,
        sync_check_every: 2,
        activations: Activations::Kept,
    }
}

fn setup() -> (Llama, Device, TrainState) {
    let device = Device::flex().autodiff();
    let (model, _) = ModelSource::random(Preset::TinyGqa, 3)
        .into_model(&device)
        .unwrap();
    let mut lora = LoraConfig::new(4, 8.0, &[TargetModule::QProj, TargetModule::DownProj]);
    // Dropout on, so that its per-sample seeding is part of what must repeat.
    lora.dropout = 0.1;
    let state = TrainState::new(LoraWeights::init(&lora, &model.config, 9));
    (model, device, state)
}

fn steps<'a>(data: &'a TokenizedDataset, sampler: &'a Sampler) -> SampledSteps<'a> {
    SampledSteps {
        train: data,
        validation: Some(data),
        sampler,
        micro_batch_size: 4,
        pad_id: 0,
        rank: 0,
        world: 1,
    }
}

/// One process (`Solo`) trains `state` until `stop_at` or the end.
fn train(
    model: &mut Llama,
    device: &Device,
    config: &TrainConfig,
    data: &TokenizedDataset,
    state: &mut TrainState,
    stop_at: Option<usize>,
) {
    let sampler = Sampler::new(data.len(), 8, 5).unwrap();
    run(
        model,
        device,
        config,
        &steps(data, &sampler),
        &mut Solo,
        state,
        &mut Silent,
        stop_at,
    )
    .unwrap();
}

fn losses(state: &TrainState) -> Vec<u64> {
    state.log.iter().map(|m| m.loss.to_bits()).collect()
}

#[test]
fn resuming_from_a_saved_state_repeats_the_run_bit_for_bit() {
    let data = dataset();
    let config = config();

    let (mut model, device, mut straight) = setup();
    train(&mut model, &device, &config, &data, &mut straight, None);
    assert_eq!(straight.step, 6);
    assert_eq!(straight.log.len(), 6);

    let (mut model, device, mut first) = setup();
    train(&mut model, &device, &config, &data, &mut first, Some(3));
    assert_eq!(first.step, 3);
    let dir = tempfile::tempdir().unwrap();
    first.save(dir.path(), "preset:tiny-gqa").unwrap();
    drop(first);

    let (mut model, device, _) = setup();
    let mut resumed = TrainState::load(dir.path(), &model.config).unwrap();
    assert_eq!(resumed.step, 3);
    train(&mut model, &device, &config, &data, &mut resumed, None);

    assert_eq!(losses(&resumed), losses(&straight), "step losses");
    assert_eq!(resumed.lora, straight.lora, "final adapter");
    assert_eq!(resumed.adam, straight.adam, "optimizer moments");
    let evals = |s: &TrainState| {
        s.evals
            .iter()
            .map(|e| (e.step, e.eval_loss.to_bits()))
            .collect::<Vec<_>>()
    };
    assert_eq!(evals(&resumed), evals(&straight), "validation losses");
}

#[test]
fn training_lowers_the_loss_and_only_moves_the_adapter() {
    let data = dataset();
    let mut config = config();
    config.max_steps = 12;
    let (mut model, device, mut state) = setup();
    let before = state.lora.clone();
    train(&mut model, &device, &config, &data, &mut state, None);
    let first = state.evals.first().unwrap().eval_loss;
    let last = state.evals.last().unwrap().eval_loss;
    assert!(last < first, "validation loss {first} → {last}");
    assert_ne!(state.lora, before, "the adapter was trained");
    // B started at zero and moved; the base model has no trainable parameter.
    assert!(
        state
            .lora
            .pairs
            .values()
            .all(|p| p.b.data.iter().any(|&x| x != 0.0))
    );
    assert_eq!(state.adam.exp_avg.len(), state.lora.num_parameters());
}

/// `training.gradient_checkpointing`: each layer's forward pass runs again
/// in the backward pass, with the same dropout masks, so the run is the
/// same run.
#[test]
fn recomputing_activations_repeats_the_run_bit_for_bit() {
    let data = dataset();
    let kept = config();
    let (mut model, device, mut straight) = setup();
    train(&mut model, &device, &kept, &data, &mut straight, None);

    let recomputed = TrainConfig {
        activations: Activations::Recomputed,
        ..config()
    };
    let (mut model, device, mut again) = setup();
    train(&mut model, &device, &recomputed, &data, &mut again, None);

    assert_eq!(again.step, 6);
    assert_eq!(losses(&again), losses(&straight), "step losses");
    assert_eq!(again.lora, straight.lora, "final adapter");
    assert_eq!(again.adam, straight.adam, "optimizer moments");
}
