//! The training loop: steps, evaluation, metrics.
//!
//! [`run`] advances a [`TrainState`] one optimizer step at a time: it asks a
//! [`StepData`] for this rank's micro-batches of the step, accumulates their
//! LoRA gradients (the loss of each is divided by the target count of the
//! whole global batch), clips the global gradient norm, sets the learning
//! rate from the schedule, and applies AdamW. With N ranks, the gradients
//! of all ranks are summed in one all-reduce before clipping (see
//! `data_parallel`), so every rank takes the same step. Validation runs before the
//! first step, every `eval_every` steps and after the last. Everything it
//! does is a function of the state and the step number, so stopping and
//! resuming changes nothing. Not here: where batches come from (`data`),
//! saving state (`state`, and checkpoints later).

use std::time::Instant;

use burn::tensor::Device;

use super::data_parallel::{TrainError, agree, all_reduce_step, checksum, eval_share};
use super::grad::{Activations, Engine, StepMode, eval_loss_sum, lora_gradients_with};
use super::optim::{AdamWConfig, clip_grad_norm};
use super::schedule::Schedule;
use super::state::{EvalMetrics, StepMetrics, TrainState};
use crate::collective::Collective;
use crate::data::Batch;
use crate::model::Llama;

/// The optimisation settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub max_steps: usize,
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: usize,
    pub adam: AdamWConfig,
    /// 0 turns clipping off.
    pub max_grad_norm: f64,
    /// 0 evaluates only before the first and after the last step.
    pub eval_every: usize,
    /// Seeds the adapters' dropout masks (with each sample's identity).
    pub seed: u64,
    /// With several ranks, compare a checksum of the LoRA weights every
    /// this many steps (and after the last); 0 only after the last.
    pub sync_check_every: usize,
    /// What each step keeps for its backward pass
    /// (`training.gradient_checkpointing` recomputes).
    pub activations: Activations,
}

impl TrainConfig {
    pub const DEFAULT_SYNC_CHECK_EVERY: usize = 10;
}

/// One global step's share of data for this rank.
#[derive(Debug, Clone)]
pub struct StepBatches {
    pub micro_batches: Vec<Batch>,
    /// Target tokens in the whole global batch (all ranks): the loss divisor.
    pub global_targets: usize,
    pub epoch: usize,
}

/// Where a run's batches come from.
pub trait StepData {
    /// This rank's micro-batches of optimizer step `step` (0-based).
    fn step_batches(&self, step: usize) -> StepBatches;
    /// The validation set in micro-batches (empty: no validation).
    fn eval_batches(&self) -> Vec<Batch>;
}

/// Told about progress as it happens (progress bars, metrics files,
/// events); may ask the run to stop at the next step boundary.
pub trait TrainObserver {
    fn on_step(&mut self, _metrics: &StepMetrics, _max_steps: usize) {}
    fn on_eval(&mut self, _metrics: &EvalMetrics) {}
    /// Asked once per step, before the gradients are summed: true stops
    /// the run after this step on every rank (preemption).
    fn stop_requested(&self) -> bool {
        false
    }
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// It reached `max_steps` or `stop_at`.
    Reached,
    /// A rank's observer asked to stop; every rank stopped after the same
    /// step.
    Stopped,
}

/// An observer that ignores everything.
pub struct Silent;
impl TrainObserver for Silent {}

/// Trains until `state.step` reaches `config.max_steps`, or `stop_at` if
/// that comes first (to pause a run and resume it later), or after the
/// step during which an observer asked to stop. `data` gives this rank's
/// share of each step; `collective` joins the ranks (`Solo` for one).
/// Fails only when the ranks cannot agree.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &mut Llama,
    device: &Device,
    config: &TrainConfig,
    data: &dyn StepData,
    collective: &mut dyn Collective,
    state: &mut TrainState,
    observer: &mut dyn TrainObserver,
    stop_at: Option<usize>,
) -> Result<RunEnd, TrainError> {
    // However the run ends, the fused step's spare buffers go with it.
    #[cfg(feature = "flex")]
    let _spare = ReleasesSpareBuffers;
    let eval_batches = data.eval_batches();
    if state.step == 0 && state.evals.is_empty() && !eval_batches.is_empty() {
        evaluate(model, device, &eval_batches, collective, state, observer)?;
    }
    let end = stop_at.map_or(config.max_steps, |s| s.min(config.max_steps));
    while state.step < end {
        let started = Instant::now();
        let batches = data.step_batches(state.step);
        let denominator = batches.global_targets.max(1) as f64;
        let mode = StepMode {
            engine: Engine::Fused,
            activations: config.activations,
        };
        let mut g = lora_gradients_with(
            mode,
            model,
            &state.lora,
            &batches.micro_batches,
            denominator,
            config.seed,
            device,
        );
        let mut tokens: usize = batches
            .micro_batches
            .iter()
            .map(|b| b.lengths.iter().sum::<usize>())
            .sum();
        let mut stop = observer.stop_requested();
        all_reduce_step(
            collective,
            &mut g.grads,
            &mut g.loss_sum,
            &mut tokens,
            &mut stop,
        )?;
        let grad_norm = clip_grad_norm(&mut g.grads, config.max_grad_norm);
        let lr = config.learning_rate
            * config
                .schedule
                .factor(state.step, config.warmup_steps, config.max_steps);
        let mut params = state.lora.to_flat();
        state.adam.update(&config.adam, &mut params, &g.grads, lr);
        state.lora.set_flat(&params);
        state.step += 1;

        let elapsed = started.elapsed().as_secs_f64();
        let metrics = StepMetrics {
            step: state.step,
            epoch: batches.epoch,
            loss: g.loss_sum / denominator,
            learning_rate: lr,
            grad_norm,
            target_tokens: batches.global_targets,
            tokens_per_s: tokens as f64 / elapsed,
            step_time_s: elapsed,
        };
        observer.on_step(&metrics, config.max_steps);
        state.log.push(metrics);

        let check = config.sync_check_every;
        if (check > 0 && state.step.is_multiple_of(check)) || state.step == end || stop {
            let what = format!("the LoRA weights after step {}", state.step);
            agree(collective, checksum(&params), &what)?;
        }

        let due = config.eval_every > 0 && state.step.is_multiple_of(config.eval_every);
        if !eval_batches.is_empty() && (due || state.step == config.max_steps) {
            evaluate(model, device, &eval_batches, collective, state, observer)?;
        }
        if stop {
            return Ok(RunEnd::Stopped);
        }
    }
    Ok(RunEnd::Reached)
}

/// Frees the fused step's spare buffers when dropped.
#[cfg(feature = "flex")]
struct ReleasesSpareBuffers;

#[cfg(feature = "flex")]
impl Drop for ReleasesSpareBuffers {
    fn drop(&mut self) {
        super::fused::release_spare_buffers();
    }
}

/// Validation over the ranks: each takes every N-th batch, the sums are
/// all-reduced.
fn evaluate(
    model: &mut Llama,
    device: &Device,
    batches: &[Batch],
    collective: &mut dyn Collective,
    state: &mut TrainState,
    observer: &mut dyn TrainObserver,
) -> Result<(), TrainError> {
    if state.evals.last().is_some_and(|e| e.step == state.step) {
        return Ok(());
    }
    let share = eval_share(batches, collective.rank(), collective.world());
    let (mut sum, mut targets) = eval_loss_sum(model, &state.lora, share, device);
    all_reduce_step(
        collective,
        &mut Vec::new(),
        &mut sum,
        &mut targets,
        &mut false,
    )?;
    let metrics = EvalMetrics {
        step: state.step,
        eval_loss: sum / targets.max(1) as f64,
        target_tokens: targets,
    };
    observer.on_eval(&metrics);
    state.evals.push(metrics);
    Ok(())
}
