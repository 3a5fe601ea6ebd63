//! The fence: the agent kills its own rank once the coordinator may have
//! declared this worker lost and restarted the job elsewhere, so a cut-off
//! rank never writes checkpoints beside the job's next attempt.
//!
//! Every report on the heartbeat stream is numbered ([`FenceClock::sending`])
//! and the coordinator acknowledges it (`Order.ack`). The clock runs from
//! the send time of the newest acknowledged report, never from when the
//! acknowledgement arrived, so a late acknowledgement cannot extend it. The
//! same clock says when a connection looks stuck (reports unacknowledged
//! for a quarter of the bound), so the connection loop can open a fresh one.
//!
//! Not here: the connection loop (`agent`), the rank's process (`rank`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use crate::api::RankState;

/// How often the fence looks at the time.
pub(super) const FENCE_TICK: Duration = Duration::from_millis(100);

/// The shortest wait for an acknowledgement before a connection counts as
/// stuck (see `FenceClock::stuck`).
const STUCK_AFTER: Duration = Duration::from_millis(500);

/// What the fence knows: when the coordinator last surely heard from us.
#[derive(Default)]
pub(super) struct FenceClock {
    /// The coordinator's lost-after bound (from `Register`).
    pub(super) lost_after: Option<Duration>,
    /// Reports sent and not yet acknowledged: number and send time.
    pub(super) sent: VecDeque<(u64, Instant)>,
    /// The send time of the newest report (or registration) the
    /// coordinator acknowledged.
    pub(super) heard: Option<Instant>,
    next_seq: u64,
}

impl FenceClock {
    /// Numbers a report about to be sent now.
    pub(super) fn sending(&mut self) -> u64 {
        self.next_seq += 1;
        if self.sent.len() >= 4096 {
            self.sent.pop_front();
        }
        self.sent.push_back((self.next_seq, Instant::now()));
        self.next_seq
    }

    /// The coordinator acknowledged report `seq`.
    pub(super) fn acked(&mut self, seq: u64) {
        while let Some(&(n, at)) = self.sent.front() {
            if n > seq {
                break;
            }
            self.sent.pop_front();
            if n == seq {
                self.heard = Some(self.heard.map_or(at, |h| h.max(at)));
            }
        }
    }

    /// How long the oldest unacknowledged report has waited, once that is
    /// past a quarter of the lost-after bound (at least [`STUCK_AFTER`]):
    /// the connection is then likely stuck in TCP's retransmission backoff
    /// after a short cut (which can hold a report back for about twice as
    /// long as the cut lasted), and a fresh connection gets through as
    /// soon as the network does.
    pub(super) fn stuck(&self) -> Option<Duration> {
        let bound = (self.lost_after? / 4).max(STUCK_AFTER);
        let (_, oldest) = self.sent.front()?;
        let waited = oldest.elapsed();
        (waited > bound).then_some(waited)
    }

    /// How long ago the coordinator was last surely heard from, once that
    /// is past its lost-after bound.
    pub(super) fn expired(&self) -> Option<Duration> {
        let (bound, heard) = (self.lost_after?, self.heard?);
        let silent = heard.elapsed();
        (silent > bound).then_some(silent)
    }
}

/// Kills the rank once the coordinator may have declared this worker lost.
pub(super) async fn keep_fence(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(FENCE_TICK).await;
        let Some(silent) = shared.fence().expired() else {
            continue;
        };
        let mut slot = shared.rank.lock().await;
        let Some(mut process) = slot.take() else {
            continue;
        };
        process.kill().await;
        drop(slot);
        let bound = shared.fence().lost_after.unwrap_or_default();
        let error = format!(
            "fenced: no word from the coordinator for {:.1} s (its lost-after bound is {:.1} s), so this rank was stopped before the job restarts elsewhere",
            silent.as_secs_f64(),
            bound.as_secs_f64()
        );
        tracing::warn!(
            "job {} attempt {}: {error}",
            process.job_id,
            process.attempt
        );
        {
            let mut report = shared.report.lock().expect("report lock");
            if report.job_id == process.job_id && report.attempt == process.attempt {
                report.state = RankState::Failed;
                report.error = error.clone();
            }
        }
        shared.outbox.push(
            &process.job_id,
            process.attempt,
            &job::JobEvent::RankFenced {
                error: error.clone(),
                silent_s: silent.as_secs_f64(),
            },
        );
        shared.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_unacknowledged_past_a_quarter_of_the_bound_means_a_stuck_connection() {
        let mut clock = FenceClock {
            lost_after: Some(Duration::from_millis(400)),
            ..FenceClock::default()
        };
        let seq = clock.sending();
        assert_eq!(clock.stuck(), None);
        // A quarter of 400 ms is below the floor of 500 ms.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(clock.stuck(), None);
        std::thread::sleep(Duration::from_millis(300));
        assert!(clock.stuck().is_some());
        clock.acked(seq);
        assert_eq!(clock.stuck(), None, "nothing waits any more");
    }

    #[test]
    fn the_fence_counts_from_the_newest_acknowledged_report() {
        let mut clock = FenceClock {
            lost_after: Some(Duration::from_millis(50)),
            ..FenceClock::default()
        };
        assert_eq!(clock.expired(), None, "never registered: no fence");
        clock.heard = Some(Instant::now());
        let first = clock.sending();
        std::thread::sleep(Duration::from_millis(30));
        let second = clock.sending();
        // A late acknowledgement of an old report moves the clock only to
        // when that report was sent.
        clock.acked(first);
        std::thread::sleep(Duration::from_millis(30));
        assert!(clock.expired().is_some(), "60 ms since the acked report");
        clock.acked(second);
        assert_eq!(clock.expired(), None, "30 ms since the newer one");
        // Acknowledging an old number again changes nothing.
        clock.acked(first);
        std::thread::sleep(Duration::from_millis(60));
        assert!(clock.expired().is_some());
    }
}
