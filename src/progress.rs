//! Progress of a training run on the terminal: an indicatif bar with the
//! step, loss, tokens/s and ETA, plus one line per validation pass. When
//! stderr is not a terminal the bar hides itself and the lines remain.

use indicatif::{ProgressBar, ProgressStyle};
use trainer::train::{EvalMetrics, StepMetrics, TrainObserver};

/// Shows training progress.
pub struct TrainProgress {
    bar: ProgressBar,
}

impl TrainProgress {
    pub fn new(max_steps: usize, done: usize) -> TrainProgress {
        let bar = ProgressBar::new(max_steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {msg} · {elapsed_precise} elapsed, ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_position(done as u64);
        TrainProgress { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Prints a line above the bar (or plainly when there is no bar).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line);
        }
    }
}

impl TrainObserver for TrainProgress {
    fn on_step(&mut self, m: &StepMetrics, _max_steps: usize) {
        self.bar.set_position(m.step as u64);
        self.bar.set_message(format!(
            "loss {:.4} · lr {:.2e} · {:.0} tok/s",
            m.loss, m.learning_rate, m.tokens_per_s
        ));
    }

    fn on_eval(&mut self, m: &EvalMetrics) {
        self.println(format!(
            "step {:>5}: validation loss {:.4} ({} target tokens)",
            m.step, m.eval_loss, m.target_tokens
        ));
    }
}

/// Training progress as one JSON event per line on stdout, for the worker
/// agent that runs this process (`train --events`). Types: `train.started`,
/// `train.step`, `train.eval`, `checkpoint.saved`, `checkpoint.deleted`,
/// `checkpoint.waiting`, `checkpoint.skipped`, `train.finished`.
pub struct TrainEvents;

impl TrainEvents {
    /// Prints one event of type `kind` with `fields` merged in.
    pub fn emit(kind: &str, fields: serde_json::Value) {
        let mut event = serde_json::json!({ "type": kind });
        if let (Some(out), serde_json::Value::Object(fields)) = (event.as_object_mut(), fields) {
            out.extend(fields);
        }
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        // A closed stdout only loses news; training goes on.
        let _ = writeln!(stdout, "{event}").and_then(|()| stdout.flush());
    }

    /// Prints one event with a level (`info`, `warn`, `error`) and a
    /// message of its own.
    pub fn emit_at(level: &str, kind: &str, message: &str, fields: serde_json::Value) {
        let mut event = serde_json::json!({ "level": level, "message": message });
        if let (Some(out), serde_json::Value::Object(fields)) = (event.as_object_mut(), fields) {
            out.extend(fields);
        }
        TrainEvents::emit(kind, event);
    }
}

impl TrainObserver for TrainEvents {
    fn on_step(&mut self, m: &StepMetrics, max_steps: usize) {
        TrainEvents::emit(
            "train.step",
            serde_json::json!({
                "step": m.step, "total_steps": max_steps, "epoch": m.epoch, "loss": m.loss,
                "learning_rate": m.learning_rate, "grad_norm": m.grad_norm,
                "target_tokens": m.target_tokens, "tokens_per_s": m.tokens_per_s,
                "step_time_s": m.step_time_s,
            }),
        );
    }

    fn on_eval(&mut self, m: &EvalMetrics) {
        TrainEvents::emit(
            "train.eval",
            serde_json::json!({"step": m.step, "eval_loss": m.eval_loss, "target_tokens": m.target_tokens}),
        );
    }
}
