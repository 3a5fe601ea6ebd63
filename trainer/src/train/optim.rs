//! AdamW over one flat vector of trainable values, exactly as PyTorch's
//! `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments).
//!
//! The LoRA values of a model are few (tens of thousands to a few million),
//! so the update runs on the host over [`crate::lora::LoraWeights::to_flat`]
//! vectors: the same flat layout the gradient all-reduce uses, and a state
//! ([`AdamWState`]) that saves and restores as three vectors and a counter.

use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (PyTorch defaults: betas 0.9/0.999, eps 1e-8).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments and the number of steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    pub step: u64,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

impl AdamWState {
    pub fn new(len: usize) -> AdamWState {
        AdamWState {
            step: 0,
            exp_avg: vec![0.0; len],
            exp_avg_sq: vec![0.0; len],
        }
    }

    /// One update of `params` with gradient `grads` at learning rate `lr`.
    pub fn update(&mut self, config: &AdamWConfig, params: &mut [f32], grads: &[f32], lr: f64) {
        assert_eq!(params.len(), grads.len());
        assert_eq!(params.len(), self.exp_avg.len());
        self.step += 1;
        let (b1, b2) = (config.beta1 as f32, config.beta2 as f32);
        let decay = 1.0 - (lr * config.weight_decay) as f32;
        let bias1 = 1.0 - config.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - config.beta2.powi(self.step as i32)).sqrt() as f32;
        let step_size = (lr / bias1) as f32;
        let eps = config.eps as f32;
        for i in 0..params.len() {
            let g = grads[i];
            params[i] *= decay;
            self.exp_avg[i] = self.exp_avg[i] * b1 + (1.0 - b1) * g;
            self.exp_avg_sq[i] = self.exp_avg_sq[i] * b2 + (1.0 - b2) * g * g;
            let denom = self.exp_avg_sq[i].sqrt() / bias2_sqrt + eps;
            params[i] -= step_size * self.exp_avg[i] / denom;
        }
    }
}

/// Scales `grads` so their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
/// `max_norm <= 0` only measures.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = grads
        .iter()
        .map(|&g| (g as f64) * (g as f64))
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)).min(1.0) as f32;
        if coef < 1.0 {
            grads.iter_mut().for_each(|g| *g *= coef);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_adamw_step_moves_each_value_by_about_lr() {
        // With bias correction, step 1 moves by lr * g / (|g| + eps') = ±lr.
        let mut params = vec![1.0f32, -2.0, 0.5];
        let grads = [0.3f32, -0.7, 2.0];
        let mut state = AdamWState::new(3);
        state.update(&AdamWConfig::default(), &mut params, &grads, 0.1);
        let want = [0.9f32, -1.9, 0.4];
        for (p, w) in params.iter().zip(want) {
            assert!((p - w).abs() < 1e-6, "{p} vs {w}");
        }
    }

    #[test]
    fn weight_decay_is_decoupled() {
        let mut params = vec![1.0f32];
        let mut state = AdamWState::new(1);
        let config = AdamWConfig {
            weight_decay: 0.5,
            ..Default::default()
        };
        state.update(&config, &mut params, &[0.0], 0.1);
        assert!((params[0] - 0.95).abs() < 1e-7, "{}", params[0]);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![3.0f32, 4.0];
        let norm = clip_grad_norm(&mut g, 1.0);
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
        let mut small = vec![0.3f32, 0.4];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.3, 0.4]);
    }
}
