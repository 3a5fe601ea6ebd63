//! Learning-rate schedules, as transformers' `get_scheduler`: `constant`
//! (with warmup), `linear` and `cosine`, each with linear warmup.
//!
//! Step `s` counts optimizer steps from 0, so with warmup the first step runs
//! at learning rate 0, as in transformers.

use std::f64::consts::PI;

/// The shape of the learning rate over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl Schedule {
    pub fn parse(name: &str) -> Option<Schedule> {
        match name {
            "constant" => Some(Schedule::Constant),
            "linear" => Some(Schedule::Linear),
            "cosine" => Some(Schedule::Cosine),
            _ => None,
        }
    }

    /// The multiplier of the base learning rate at optimizer step `step`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (1.0 - progress).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // Warmup ramps from 0.
        assert_eq!(Schedule::Cosine.factor(0, 10, 100), 0.0);
        assert_eq!(Schedule::Cosine.factor(5, 10, 100), 0.5);
        assert_eq!(Schedule::Cosine.factor(10, 10, 100), 1.0);
        assert!((Schedule::Cosine.factor(55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(Schedule::Cosine.factor(100, 10, 100).abs() < 1e-12);
        assert!((Schedule::Linear.factor(55, 10, 100) - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(99, 10, 100), 1.0);
        assert_eq!(Schedule::Constant.factor(0, 0, 100), 1.0);
    }
}
