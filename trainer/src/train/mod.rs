//! Training LoRA adapters: loss, gradients, optimizer, schedule.
//!
//! [`grad`] computes the loss and the LoRA gradients of micro-batches,
//! with the head and its cross-entropy from [`cross_entropy`];
//! [`optim`] applies AdamW and gradient clipping on flat vectors;
//! [`schedule`] gives the learning rate of each step; [`run`] is the loop
//! and [`state`] what it needs to resume; [`data_parallel`] is what N
//! ranks add to a step. Base weights are
//! frozen: they get neither gradients nor optimizer state.

pub mod cross_entropy;
pub mod data_parallel;
#[cfg(feature = "flex")]
pub mod fused;
pub mod grad;
pub mod optim;
pub mod run;
pub mod sampled;
pub mod schedule;
pub mod state;

pub use data_parallel::TrainError;
pub use run::{RunEnd, Silent, StepBatches, StepData, TrainConfig, TrainObserver, run};
pub use sampled::SampledSteps;
pub use state::{EvalMetrics, StepMetrics, TrainState};
