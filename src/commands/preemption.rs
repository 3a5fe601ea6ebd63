//! Preemption of a `train` process: SIGTERM asks it to stop at the next
//! step boundary instead of dying mid-step.
//!
//! The signal only sets a flag; [`requested`] is the stop request `train`
//! hands the recipe (`job::recipe::JobRun::train`), whose training loop
//! sums it over the ranks with the step's gradients, so every rank stops
//! after the same step even when only one of them was signalled (a drained
//! worker). `train` then exits with [`Preempted`](super::train::Preempted)
//! once that step's checkpoint is committed. A second SIGTERM kills the
//! process at once.
//!
//! Not here: what stopping means for checkpoints (the recipe) or for the
//! fleet (the agent and coordinator).

use std::sync::atomic::{AtomicBool, Ordering};

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
