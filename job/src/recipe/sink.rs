//! Where a run's events go: [`EventSink`], and [`EventObserver`], which
//! turns the training loop's callbacks into events and carries a stop
//! request into the loop.
//!
//! The binary decides what a sink does (JSON lines for the agent, a
//! progress bar for a person); the recipe only emits. Not here: signals
//! (the binary turns SIGTERM into the `stop` flag it passes in).

use std::sync::Arc;

use trainer::train::{EvalMetrics, StepMetrics, TrainObserver};

use crate::JobEvent;

/// Receives a run's events. Shared with the background uploader's thread,
/// hence `Sync`.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: JobEvent);
}

/// A sink that drops everything.
pub struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: JobEvent) {}
}

/// The training loop's observer: steps and validation passes become
/// events (when `report` is set: rank 0), and `stop` asks the loop to end
/// after the current step.
pub struct EventObserver<'a> {
    pub sink: Arc<dyn EventSink>,
    pub report: bool,
    pub stop: &'a (dyn Fn() -> bool + Sync),
}

impl TrainObserver for EventObserver<'_> {
    fn on_step(&mut self, metrics: &StepMetrics, max_steps: usize) {
        if self.report {
            self.sink.emit(JobEvent::TrainStep {
                total_steps: max_steps,
                metrics: metrics.clone(),
            });
        }
    }

    fn on_eval(&mut self, metrics: &EvalMetrics) {
        if self.report {
            self.sink.emit(JobEvent::TrainEval(metrics.clone()));
        }
    }

    fn stop_requested(&self) -> bool {
        (self.stop)()
    }
}
