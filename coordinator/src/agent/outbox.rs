//! The agent's outbox: events of its ranks waiting to reach the
//! coordinator, and the task that sends them.
//!
//! Each job attempt's events are numbered from 1 as they are queued, and a
//! `ReportEvents` call carries the number of its first event. A batch is
//! dropped from the queue only once the coordinator answered; if the answer
//! is lost (a cut, a coordinator restart) the batch goes again, and the
//! coordinator skips what it already stored. The queue is bounded: a
//! coordinator away for long loses the oldest news, never the worker's
//! memory.
//!
//! Not here: what the events say (`rank`), the connection (`agent`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use job::JobEvent;

use crate::api;
use crate::client::Connection;

use super::Shared;

/// Most events kept waiting.
const MAX_QUEUED: usize = 10_000;
/// Most events per `ReportEvents` call.
const BATCH: usize = 500;

/// One queued event.
#[derive(Clone, Debug)]
struct Queued {
    job_id: String,
    attempt: u32,
    seq: u64,
    event: api::Event,
}

/// Events waiting to be sent, numbered per job attempt.
#[derive(Default)]
pub(super) struct Outbox {
    queue: Mutex<Inner>,
    ready: Notify,
}

#[derive(Default)]
struct Inner {
    events: VecDeque<Queued>,
    next_seq: HashMap<(String, u32), u64>,
}

impl Outbox {
    /// Queues an event of attempt `attempt` of `job_id`.
    pub(super) fn push(&self, job_id: &str, attempt: u32, event: &JobEvent) {
        let event = api::Event {
            id: 0,
            job_id: job_id.to_string(),
            created_at: 0,
            level: event.level().name().to_string(),
            r#type: event.kind().to_string(),
            message: event.to_string(),
            data_json: event.to_data().to_string(),
        };
        let mut inner = self.queue.lock().expect("outbox lock");
        let next = inner
            .next_seq
            .entry((job_id.to_string(), attempt))
            .or_insert(1);
        let seq = *next;
        *next += 1;
        if inner.events.len() >= MAX_QUEUED {
            inner.events.pop_front();
        }
        inner.events.push_back(Queued {
            job_id: job_id.to_string(),
            attempt,
            seq,
            event,
        });
        drop(inner);
        self.ready.notify_one();
    }

    /// Whether events of this job attempt are still waiting to be sent.
    pub(super) fn has_pending(&self, job_id: &str, attempt: u32) -> bool {
        let inner = self.queue.lock().expect("outbox lock");
        inner
            .events
            .iter()
            .any(|q| q.job_id == job_id && q.attempt == attempt)
    }

    /// The oldest run of consecutive events of one job attempt, left
    /// queued until [`Outbox::sent`].
    /// Takes every queued event as if the coordinator had stored it.
    #[cfg(test)]
    pub(super) fn drain(&self) -> Vec<api::Event> {
        let mut inner = self.queue.lock().expect("outbox lock");
        inner.events.drain(..).map(|q| q.event).collect()
    }

    fn next_batch(&self) -> Vec<Queued> {
        let inner = self.queue.lock().expect("outbox lock");
        let Some(first) = inner.events.front() else {
            return Vec::new();
        };
        let (job, attempt) = (first.job_id.clone(), first.attempt);
        let mut batch: Vec<Queued> = Vec::new();
        for q in inner.events.iter().take(BATCH) {
            let follows = batch.last().is_none_or(|last| q.seq == last.seq + 1);
            if q.job_id != job || q.attempt != attempt || !follows {
                break;
            }
            batch.push(q.clone());
        }
        batch
    }

    /// Drops the events of `batch` still at the queue's front.
    fn sent(&self, batch: &[Queued]) {
        let mut inner = self.queue.lock().expect("outbox lock");
        for q in batch {
            let front = inner
                .events
                .front()
                .is_some_and(|f| f.job_id == q.job_id && f.attempt == q.attempt && f.seq == q.seq);
            if front {
                inner.events.pop_front();
            }
        }
    }
}

/// Sends queued events in batches, one job attempt per call; what fails
/// to go out stays queued for the next try or connection.
pub(super) async fn forward(shared: Arc<Shared>, connection: Connection) {
    let mut workers = connection.workers();
    loop {
        let batch = shared.outbox.next_batch();
        if batch.is_empty() {
            shared.outbox.ready.notified().await;
            continue;
        }
        let request = api::ReportEventsRequest {
            worker_id: shared.worker_id(),
            job_id: batch[0].job_id.clone(),
            attempt: batch[0].attempt,
            events: batch.iter().map(|q| q.event.clone()).collect(),
            worker_secret: shared.worker_secret(),
            first_seq: batch[0].seq,
        };
        match workers.report_events(request).await {
            Ok(_) => shared.outbox.sent(&batch),
            Err(status) => {
                tracing::warn!("cannot report events: {}", status.message());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(outbox: &Outbox, job: &str, attempt: u32) {
        outbox.push(job, attempt, &JobEvent::CheckpointDeleted { step: 1 });
    }

    #[test]
    fn events_are_numbered_per_attempt_and_batched_by_attempt() {
        let outbox = Outbox::default();
        push(&outbox, "j1", 1);
        push(&outbox, "j1", 1);
        push(&outbox, "j1", 2);
        push(&outbox, "j1", 1);
        let batch = outbox.next_batch();
        let seqs: Vec<u64> = batch.iter().map(|q| q.seq).collect();
        assert_eq!(seqs, [1, 2]);
        // Not sent yet: the same batch comes again, with the same numbers.
        let again: Vec<u64> = outbox.next_batch().iter().map(|q| q.seq).collect();
        assert_eq!(again, [1, 2]);
        outbox.sent(&batch);
        let next = outbox.next_batch();
        assert_eq!((next[0].attempt, next[0].seq), (2, 1));
        outbox.sent(&next);
        let last = outbox.next_batch();
        assert_eq!((last[0].attempt, last[0].seq), (1, 3));
        assert!(outbox.has_pending("j1", 1));
        outbox.sent(&last);
        assert!(!outbox.has_pending("j1", 1));
        assert!(outbox.next_batch().is_empty());
    }
}
