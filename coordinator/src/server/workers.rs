//! The `Workers` service: registration, the heartbeat stream (reports in,
//! orders out), event reports and input fetches by ranks, the fleet list,
//! drains and undrains.
//!
//! A worker's connection is its [`Link`](super::Link): orders for it are
//! queued there. When the heartbeat stream ends (the process died, the
//! network cut), the worker is lost at once and its attempt fails; a worker
//! that comes back registers again under its old id.
//!
//! The cluster token only lets a caller register. `Register` gives each
//! worker a session secret (the store keeps its hash); the heartbeat
//! stream, event reports and a later registration under the same id must
//! carry it, so no holder of the cluster token can take over another
//! worker's id, orders or jobs.
//!
//! Not here: what a report or an event means for its job
//! ([`reports`](super::reports)).

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::workers_server::Workers;
use crate::api::{self, Order, WorkerReport};
use crate::store::{JobId, TokenHash, Worker, WorkerId};

use super::access::FleetCaller;
use super::checkpoints::FileStream;
use super::recovery::Preemption;
use super::reports::{Reporter, not_its_attempt};
use super::{Coordinator, Link, status_of};
use super::{hosts, inputs};

/// Most events one `ReportEvents` call may carry.
const MAX_EVENTS_PER_REPORT: usize = 1000;
/// The longest wait for a worker to reconnect after its stream ended.
const RECONNECT_GRACE_CAP: Duration = Duration::from_secs(5);

type OrderStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

#[tonic::async_trait]
impl Workers for Coordinator {
    async fn register(
        &self,
        request: Request<api::RegisterRequest>,
    ) -> Result<Response<api::RegisterReply>, Status> {
        self.config().access.worker(&request)?;
        let peer = request.remote_addr();
        let r = request.into_inner();
        if r.version != crate::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker runs lorafleet {} but the coordinator runs lorafleet {}: use the same release on both",
                r.version,
                crate::PROTOCOL_VERSION
            )));
        }
        let backend = crate::api::convert::backend(r.backend)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        hosts::check_ring_addr(&r.name, &r.ring_addr, peer)?;
        let store = self.store();
        let known = if r.worker_id.is_empty() {
            None
        } else {
            let id = WorkerId::from(r.worker_id.as_str());
            match store.worker_secret(&id).await {
                // Known and finished registering: the caller must prove it
                // is that worker.
                Ok(Some(hash)) => {
                    if r.worker_secret.is_empty() || TokenHash::of_token(&r.worker_secret) != hash {
                        return Err(impostor(
                            &id,
                            "registered under its id without its session secret",
                        ));
                    }
                    let worker = store.heartbeat_worker(&id).await.map_err(status_of)?;
                    Some((worker, r.worker_secret.clone()))
                }
                Ok(None) => None,
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(status_of(e)),
            }
        };
        let (worker, secret) = match known {
            Some(known) => known,
            None => {
                let info = crate::store::WorkerInfo {
                    name: r.name,
                    host: r.host,
                    backend,
                    device: r.device,
                    memory_bytes: r.memory_bytes,
                    version: r.version,
                };
                let worker = store.register_worker(&info).await.map_err(status_of)?;
                let secret = crate::store::new_token();
                store
                    .set_worker_secret(&worker.id, &TokenHash::of_token(&secret))
                    .await
                    .map_err(status_of)?;
                (worker, secret)
            }
        };
        tracing::info!(
            "worker {} ({}) registered, ring at {}",
            worker.info.name,
            worker.id,
            r.ring_addr
        );
        {
            let mut fleet = self.fleet();
            fleet.ring_addrs.insert(worker.id.clone(), r.ring_addr);
            fleet.boot_ids.insert(worker.id.clone(), r.boot_id);
        }
        Ok(Response::new(api::RegisterReply {
            worker_id: worker.id.to_string(),
            heartbeat_ms: self.config().heartbeat.as_millis() as u32,
            worker_secret: secret,
            lost_after_ms: self.config().lost_after.as_millis() as u32,
        }))
    }

    type HeartbeatStream = OrderStream;

    async fn heartbeat(
        &self,
        request: Request<Streaming<WorkerReport>>,
    ) -> Result<Response<OrderStream>, Status> {
        self.config().access.worker(&request)?;
        let mut reports = request.into_inner();
        let first = match reports.next().await {
            Some(Ok(report)) => report,
            Some(Err(status)) => return Err(status),
            None => {
                return Err(Status::invalid_argument(
                    "the heartbeat stream sent no report",
                ));
            }
        };
        let id = WorkerId::from(first.worker_id.as_str());
        self.check_worker(&id, &first.worker_secret, "opened a heartbeat stream")
            .await?;
        let (orders, out) = mpsc::channel(64);
        let session = {
            let mut fleet = self.fleet();
            let session = fleet.next_session;
            fleet.next_session += 1;
            fleet.links.insert(id.clone(), Link { orders, session });
            fleet.last_report.insert(id.clone(), Instant::now());
            session
        };
        self.wake();
        let coordinator = self.clone();
        tokio::spawn(async move {
            let mut stopping = coordinator.inner.stopping.subscribe();
            let mut next = Some(Ok(first));
            let mut last_write: Option<Instant> = None;
            while let Some(Ok(report)) = next {
                if report.worker_id != id.as_str() {
                    break;
                }
                coordinator
                    .fleet()
                    .last_report
                    .insert(id.clone(), Instant::now());
                // The store hears of a live worker often enough for the
                // silence check, not at every report.
                let write =
                    last_write.is_none_or(|t| t.elapsed() >= coordinator.beat_write_every());
                if write {
                    last_write = Some(Instant::now());
                }
                let seq = report.seq;
                if let Err(error) = coordinator.on_report(&id, report, write).await {
                    tracing::error!("report of worker {id}: {error}");
                }
                // The worker times its fence from the newest report
                // acknowledged: one it knows the coordinator heard.
                if seq > 0 {
                    coordinator.send(&id, Order::ack(seq));
                }
                next = tokio::select! {
                    next = reports.next() => next,
                    // Stopping: let go of the stream (the worker keeps its
                    // job and reconnects to the next coordinator).
                    _ = stopping.wait_for(|stop| *stop) => None,
                };
            }
            drop(reports);
            // The stream ended: unless a newer connection took over, the
            // worker is gone.
            let ours = {
                let mut fleet = coordinator.fleet();
                let ours = fleet.links.get(&id).is_some_and(|l| l.session == session);
                if ours {
                    fleet.links.remove(&id);
                }
                ours
            };
            // Unless it is back within the reconnect grace: an agent whose
            // connection stalled (a short cut) drops it and opens another,
            // and the old one's end may arrive first.
            if ours {
                tokio::time::sleep(coordinator.reconnect_grace()).await;
                let back = coordinator.fleet().links.contains_key(&id);
                let why = format!("worker {id} disconnected");
                if !back && let Err(error) = coordinator.worker_lost(&id, &why).await {
                    tracing::error!("{why}: {error}");
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn report_events(
        &self,
        request: Request<api::ReportEventsRequest>,
    ) -> Result<Response<api::ReportEventsReply>, Status> {
        self.config().access.worker(&request)?;
        let r = request.into_inner();
        if r.events.len() > MAX_EVENTS_PER_REPORT {
            return Err(Status::invalid_argument(format!(
                "{} events in one report; at most {MAX_EVENTS_PER_REPORT}",
                r.events.len()
            )));
        }
        let worker = WorkerId::from(r.worker_id.as_str());
        self.check_worker(&worker, &r.worker_secret, "reported events")
            .await?;
        let job = JobId::from(r.job_id.as_str());
        let Some(rank) = self.live_rank(&job, r.attempt, &worker).await? else {
            if !self.was_rank(&job, r.attempt, &worker).await? {
                return Err(not_its_attempt(&worker, &job, r.attempt));
            }
            // A straggler from an attempt that is over: its news is stale.
            return Ok(Response::new(api::ReportEventsReply {}));
        };
        // A batch sent again (its reply was lost) is stored once: events
        // at or below the worker's cursor are skipped.
        let cursor = if r.first_seq > 0 {
            self.store()
                .event_cursor(&job, r.attempt, &worker)
                .await
                .map_err(status_of)?
        } else {
            0
        };
        for (i, event) in r.events.into_iter().enumerate() {
            let seq = if r.first_seq > 0 {
                r.first_seq + i as u64
            } else {
                0
            };
            if seq > 0 && seq <= cursor {
                continue;
            }
            let from = Reporter {
                worker: &worker,
                rank,
                attempt: r.attempt,
                seq,
            };
            self.rank_event(&job, &from, event).await?;
        }
        self.publish();
        Ok(Response::new(api::ReportEventsReply {}))
    }

    type FetchInputStream = FileStream;

    async fn fetch_input(
        &self,
        request: Request<api::FetchInputRequest>,
    ) -> Result<Response<FileStream>, Status> {
        self.config().access.worker(&request)?;
        let r = request.into_inner();
        let worker = WorkerId::from(r.worker_id.as_str());
        self.check_worker(&worker, &r.worker_secret, "fetched an input")
            .await?;
        let job = JobId::from(r.job_id.as_str());
        if self.live_rank(&job, r.attempt, &worker).await?.is_none() {
            return Err(not_its_attempt(&worker, &job, r.attempt));
        }
        let row = self.store().get_job(&job).await.map_err(status_of)?;
        let spec = self
            .spec_of(&row)
            .map_err(|e| Status::internal(format!("the stored spec no longer reads: {e}")))?;
        let uploads = self.config().data_dir.join("datasets");
        let served = inputs::assignment_inputs(&spec, &uploads).map_err(Status::not_found)?;
        let Some(input) = served.into_iter().find(|i| i.file.sha256 == r.sha256) else {
            return Err(Status::not_found(format!(
                "job {job} has no input {}",
                r.sha256
            )));
        };
        Ok(Response::new(inputs::file_stream(input)))
    }

    async fn list(
        &self,
        request: Request<api::ListWorkersRequest>,
    ) -> Result<Response<api::WorkerList>, Status> {
        let caller = self.config().access.fleet(&request)?;
        let workers = self.store().list_workers().await.map_err(status_of)?;
        // A tenant sees the fleet, but on it only its own jobs.
        let mut hidden = std::collections::HashSet::new();
        if let FleetCaller::Tenant(tenant) = &caller {
            for job in workers.iter().filter_map(|w| w.assignment.as_ref()) {
                if self.owned_job(tenant, job.0.as_str()).await.is_err() {
                    hidden.insert(job.0.clone());
                }
            }
        }
        let fleet = self.fleet();
        let data = workers
            .iter()
            .map(|w| {
                let ring = fleet.ring_addrs.get(&w.id).cloned();
                let mut info = worker_info(w, ring.unwrap_or_default());
                if w.assignment
                    .as_ref()
                    .is_some_and(|(j, _)| hidden.contains(j))
                {
                    info.job_id.clear();
                    info.rank = None;
                }
                info
            })
            .collect();
        Ok(Response::new(api::WorkerList { data }))
    }

    async fn drain(
        &self,
        request: Request<api::WorkerRef>,
    ) -> Result<Response<api::WorkerInfo>, Status> {
        let operator = self.config().access.operator(&request)?;
        let id = WorkerId::from(request.into_inner().id.as_str());
        let worker = self.store().drain_worker(&id).await.map_err(status_of)?;
        tracing::info!("operator {operator} drained worker {id}");
        self.send(&id, Order::of(api::order::Kind::Drain(true)));
        // Its job stops at the next step boundary after a checkpoint and
        // is placed again elsewhere, without counting as a failure.
        if let Some((job, _)) = &worker.assignment {
            let store = self.store();
            let row = store.get_job(job).await.map_err(status_of)?;
            if row.attempt > 0 && !row.status.is_final() {
                let attempt = store
                    .get_attempt(job, row.attempt)
                    .await
                    .map_err(status_of)?;
                if attempt.finished_at.is_none() && !self.is_preempting(job, row.attempt) {
                    let why = Preemption::Drain {
                        worker: id.clone(),
                        name: worker.info.name.clone(),
                    };
                    self.preempt(&attempt, &id, why);
                }
            }
        }
        let ring = self.fleet().ring_addrs.get(&id).cloned();
        Ok(Response::new(worker_info(
            &worker,
            ring.unwrap_or_default(),
        )))
    }

    async fn undrain(
        &self,
        request: Request<api::WorkerRef>,
    ) -> Result<Response<api::WorkerInfo>, Status> {
        let operator = self.config().access.operator(&request)?;
        let id = WorkerId::from(request.into_inner().id.as_str());
        let worker = self.store().undrain_worker(&id).await.map_err(status_of)?;
        tracing::info!(
            "operator {operator} undrained worker {id}: {}",
            worker.state
        );
        self.send(&id, Order::of(api::order::Kind::Drain(false)));
        self.wake();
        let ring = self.fleet().ring_addrs.get(&id).cloned();
        Ok(Response::new(worker_info(
            &worker,
            ring.unwrap_or_default(),
        )))
    }
}

impl Coordinator {
    /// Checks that a call naming worker `id` carries its session secret;
    /// `what` says what the caller did, for the log.
    async fn check_worker(&self, id: &WorkerId, secret: &str, what: &str) -> Result<(), Status> {
        match self.store().worker_secret(id).await {
            Ok(Some(hash)) if !secret.is_empty() && TokenHash::of_token(secret) == hash => Ok(()),
            Ok(_) => Err(impostor(id, &format!("{what} without its session secret"))),
            Err(e) if e.is_not_found() => Err(Status::not_found(format!(
                "worker {id} is not registered: register first"
            ))),
            Err(e) => Err(status_of(e)),
        }
    }

    /// How long a worker whose heartbeat stream ended has to open another
    /// before it is lost: half the lost-after bound, at most 5 s.
    fn reconnect_grace(&self) -> Duration {
        (self.config().lost_after / 2).min(RECONNECT_GRACE_CAP)
    }

    /// How often a connected worker's heartbeat is written to the store.
    fn beat_write_every(&self) -> Duration {
        self.config().lost_after / 4
    }
}

/// Refuses a call that names worker `id` without proving it is that
/// worker, and logs it.
fn impostor(id: &WorkerId, what: &str) -> Status {
    tracing::warn!("refused: a caller with the cluster token {what} (worker {id})");
    Status::permission_denied(format!(
        "worker {id}: this call does not carry the worker's session secret; a new worker registers without an id"
    ))
}

fn worker_info(w: &Worker, ring_addr: String) -> api::WorkerInfo {
    api::WorkerInfo {
        id: w.id.to_string(),
        name: w.info.name.clone(),
        host: w.info.host.clone(),
        backend: api::Backend::from(w.info.backend).into(),
        device: w.info.device.clone(),
        memory_bytes: w.info.memory_bytes,
        version: w.info.version.clone(),
        state: api::WorkerState::from(w.state).into(),
        job_id: w
            .assignment
            .as_ref()
            .map(|(j, _)| j.to_string())
            .unwrap_or_default(),
        rank: w.assignment.as_ref().map(|(_, r)| *r),
        registered_at: w.registered_at,
        last_heartbeat: w.last_heartbeat,
        ring_addr,
    }
}
