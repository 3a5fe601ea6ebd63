//! Where a `train` process's events go ([`job::recipe::EventSink`]s):
//! [`JsonLines`] prints each as one JSON line on stdout for the worker
//! agent that runs this process (`train --events`); [`Terminal`] shows a
//! person an indicatif bar with the step, loss, tokens/s and ETA, one line
//! per validation pass, and warnings. When stderr is not a terminal the bar
//! hides itself and the lines remain.

use std::io::Write;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use job::JobEvent;
use job::event::step_summary;
use job::recipe::EventSink;

/// One JSON event per line on stdout.
pub struct JsonLines;

impl EventSink for JsonLines {
    fn emit(&self, event: JobEvent) {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout only loses news; training goes on.
        let _ = writeln!(stdout, "{}", event.to_line()).and_then(|()| stdout.flush());
    }
}

/// Progress for a person: a bar (when `bar` is set: rank 0), validation
/// lines and warnings on stderr.
pub struct Terminal {
    bar: Option<Mutex<Option<ProgressBar>>>,
}

impl Terminal {
    pub fn new(bar: bool) -> Terminal {
        Terminal {
            bar: bar.then(|| Mutex::new(None)),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = self.bar() {
            bar.finish_and_clear();
        }
    }

    fn bar(&self) -> Option<ProgressBar> {
        self.bar.as_ref()?.lock().expect("bar lock").clone()
    }

    /// Prints a line above the bar (or plainly when there is no bar).
    fn println(&self, line: String) {
        match self.bar() {
            Some(bar) if !bar.is_hidden() => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }
}

impl EventSink for Terminal {
    fn emit(&self, event: JobEvent) {
        match &event {
            JobEvent::TrainStarted {
                step, total_steps, ..
            } => {
                if let Some(slot) = &self.bar {
                    let bar = ProgressBar::new(*total_steps as u64);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{spinner} step {pos}/{len} [{bar:30}] {msg} · {elapsed_precise} elapsed, ETA {eta}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_position(*step as u64);
                    *slot.lock().expect("bar lock") = Some(bar);
                }
            }
            JobEvent::TrainStep { metrics, .. } => {
                if let Some(bar) = self.bar() {
                    bar.set_position(metrics.step as u64);
                    bar.set_message(step_summary(metrics));
                }
            }
            JobEvent::TrainEval(m) => self.println(format!(
                "step {:>5}: validation loss {:.4} ({} target tokens)",
                m.step, m.eval_loss, m.target_tokens
            )),
            JobEvent::CheckpointSkipped { .. } | JobEvent::CheckpointDeleteFailed { .. } => {
                self.println(format!("warning: {event}"))
            }
            _ => {}
        }
    }
}
