//! Everything a run needs to continue exactly where it stopped.
//!
//! [`TrainState`] is the adapter's values, AdamW's moments, the optimizer
//! step and the metrics so far. The data order and dropout masks are pure
//! functions of `(seed, step)`, so nothing else is needed: a run restored
//! from a saved state produces the same losses bit for bit as one that never
//! stopped. [`TrainState::save`] writes a folder with the PEFT adapter
//! (usable as is), `optimizer.safetensors` and `trainer_state.json` (HF's
//! `global_step` and `log_history` names where they fit). Not here: where
//! folders live (object storage is the checkpoint module's job).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::optim::AdamWState;
use crate::lora::{LoraWeights, peft};
use crate::model::{HostTensor, LlamaConfig, ModelError, hf};

/// The metrics of one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based: the number of optimizer steps done after this one.
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub learning_rate: f64,
    pub grad_norm: f64,
    /// Target tokens in the global batch.
    pub target_tokens: usize,
    /// All tokens (padding excluded) processed per second.
    pub tokens_per_s: f64,
    pub step_time_s: f64,
}

/// A validation pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Optimizer steps done when it ran (0 = before training).
    pub step: usize,
    pub eval_loss: f64,
    pub target_tokens: usize,
}

/// The resumable state of a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: usize,
    pub lora: LoraWeights,
    pub adam: AdamWState,
    pub log: Vec<StepMetrics>,
    pub evals: Vec<EvalMetrics>,
}

#[derive(Serialize, Deserialize)]
struct TrainerStateJson {
    global_step: usize,
    best_metric: Option<f64>,
    adam_step: u64,
    log_history: Vec<StepMetrics>,
    eval_history: Vec<EvalMetrics>,
}

impl TrainState {
    pub fn new(lora: LoraWeights) -> TrainState {
        let n = lora.num_parameters();
        TrainState {
            step: 0,
            lora,
            adam: AdamWState::new(n),
            log: Vec::new(),
            evals: Vec::new(),
        }
    }

    /// The lowest validation loss so far.
    pub fn best_eval_loss(&self) -> Option<f64> {
        self.evals.iter().map(|e| e.eval_loss).reduce(f64::min)
    }

    /// Writes the state into `dir` (created if needed).
    pub fn save(&self, dir: &Path, base_model: &str) -> Result<(), ModelError> {
        peft::save(dir, &self.lora, base_model)?;
        let n = self.adam.exp_avg.len();
        let m = HostTensor::new(vec![n], self.adam.exp_avg.clone());
        let v = HostTensor::new(vec![n], self.adam.exp_avg_sq.clone());
        hf::write_safetensors(
            &dir.join("optimizer.safetensors"),
            [("exp_avg", &m), ("exp_avg_sq", &v)],
            None,
        )?;
        let json = TrainerStateJson {
            global_step: self.step,
            best_metric: self.best_eval_loss(),
            adam_step: self.adam.step,
            log_history: self.log.clone(),
            eval_history: self.evals.clone(),
        };
        let path = dir.join("trainer_state.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json).expect("serializes"),
        )
        .map_err(|e| ModelError::io(&path, e))
    }

    /// Reads a state written by [`Self::save`] for a model of `model`'s shape.
    pub fn load(dir: &Path, model: &LlamaConfig) -> Result<TrainState, ModelError> {
        let lora = peft::load(dir, model)?;
        let n = lora.num_parameters();
        let mut opt = hf::read_safetensors_file(&dir.join("optimizer.safetensors"))?;
        let exp_avg = opt.take("exp_avg", &[n])?.data;
        let exp_avg_sq = opt.take("exp_avg_sq", &[n])?.data;
        let path = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let json: TrainerStateJson =
            serde_json::from_str(&text).map_err(|e| ModelError::Format {
                file: path.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(TrainState {
            step: json.global_step,
            lora,
            adam: AdamWState {
                step: json.adam_step,
                exp_avg,
                exp_avg_sq,
            },
            log: json.log_history,
            evals: json.eval_history,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_losses_read_back_bit_for_bit() {
        // A loss whose shortest decimal form a fast float parser reads
        // back one unit in the last place off (it happened in a resumed run).
        let loss = f64::from_bits(4620328510902329110);
        let metrics = StepMetrics {
            step: 1,
            epoch: 0,
            loss,
            learning_rate: 2e-4,
            grad_norm: 0.1,
            target_tokens: 10,
            tokens_per_s: 1.0,
            step_time_s: 0.1,
        };
        let text = serde_json::to_string(&metrics).unwrap();
        let back: StepMetrics = serde_json::from_str(&text).unwrap();
        assert_eq!(back.loss.to_bits(), loss.to_bits(), "{text}");
    }
}
