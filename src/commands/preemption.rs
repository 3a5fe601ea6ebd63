//! Preemption of a `train` process: SIGTERM asks it to stop at the next
//! step boundary instead of dying mid-step.
//!
//! The signal only sets a flag. [`StopOnSignal`] wraps the run's observer
//! and reports the flag to the training loop, which sums it over the ranks
//! with the step's gradients, so every rank stops after the same step even
//! when only one of them was signalled (a drained worker). `train` then
//! commits a checkpoint of that step and exits with
//! [`Preempted`](super::train::Preempted). A second SIGTERM kills the
//! process at once.
//!
//! Not here: what stopping means for checkpoints (`train`,
//! `checkpointing`) or for the fleet (the agent and coordinator).

use std::sync::atomic::{AtomicBool, Ordering};

use trainer::train::{EvalMetrics, StepMetrics, TrainObserver};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGTERM handler (once per process; later calls do nothing
/// new). SA_RESETHAND: the second SIGTERM gets the default action.
pub fn listen_for_sigterm() {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; the sigaction struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut());
    }
}

/// Whether this process was asked to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// An observer that passes everything on and asks the loop to stop once
/// SIGTERM came.
pub struct StopOnSignal<'a>(pub &'a mut dyn TrainObserver);

impl TrainObserver for StopOnSignal<'_> {
    fn on_step(&mut self, metrics: &StepMetrics, max_steps: usize) {
        self.0.on_step(metrics, max_steps);
    }

    fn on_eval(&mut self, metrics: &EvalMetrics) {
        self.0.on_eval(metrics);
    }

    fn stop_requested(&self) -> bool {
        requested() || self.0.stop_requested()
    }
}
