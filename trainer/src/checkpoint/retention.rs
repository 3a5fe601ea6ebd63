//! Which committed checkpoints retention lets go.
//!
//! `keep_last` newest checkpoints stay, and with `keep_best` also the one
//! with the lowest validation loss. The newest is never let go, and nothing
//! is deleted before a newer checkpoint is committed (callers apply the
//! policy right after a commit). Not here: deleting (`store`).

use super::CheckpointManifest;

/// `checkpoint.keep_last` and `checkpoint.keep_best` of a job spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// At least 1.
    pub keep_last: usize,
    pub keep_best: bool,
}

impl Retention {
    /// The steps of `committed` to delete.
    pub fn expired(&self, committed: &[CheckpointManifest]) -> Vec<u64> {
        let mut steps: Vec<u64> = committed.iter().map(|m| m.step).collect();
        steps.sort_unstable();
        steps.dedup();
        let keep_last = self.keep_last.max(1);
        let mut kept: Vec<u64> = steps.iter().rev().take(keep_last).copied().collect();
        if self.keep_best {
            let best = committed
                .iter()
                .filter_map(|m| Some((m.step, m.eval_loss()?)))
                .filter(|(_, loss)| loss.is_finite())
                .min_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
            kept.extend(best.map(|(step, _)| step));
        }
        steps.retain(|s| !kept.contains(s));
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::FORMAT;

    fn committed(losses: &[(u64, Option<f64>)]) -> Vec<CheckpointManifest> {
        losses
            .iter()
            .map(|&(step, loss)| CheckpointManifest {
                format: FORMAT.into(),
                step,
                created_at: 0,
                metrics: serde_json::json!({ "eval_loss": loss }),
                files: Vec::new(),
                writer: String::new(),
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest() {
        let all = committed(&[(10, None), (20, None), (30, None), (40, None)]);
        let policy = Retention {
            keep_last: 2,
            keep_best: false,
        };
        assert_eq!(policy.expired(&all), vec![10, 20]);
        let zero = Retention {
            keep_last: 0,
            keep_best: false,
        };
        assert_eq!(zero.expired(&all), vec![10, 20, 30]);
    }

    #[test]
    fn keeps_the_best_too() {
        let all = committed(&[
            (10, Some(2.0)),
            (20, Some(1.5)),
            (30, Some(1.7)),
            (40, None),
        ]);
        let policy = Retention {
            keep_last: 1,
            keep_best: true,
        };
        assert_eq!(policy.expired(&all), vec![10, 30]);
        // The best among the newest costs nothing extra.
        let two = Retention {
            keep_last: 3,
            keep_best: true,
        };
        assert_eq!(two.expired(&all), vec![10]);
    }
}
