//! The `Jobs` service: what a tenant's client calls. Submit (validate the
//! spec and its datasets, then queue), dataset uploads, listing, status,
//! cancel, the event stream, checkpoints and downloads.
//!
//! Every call is authenticated first, and a tenant only ever sees its own
//! jobs: another tenant's job answers exactly as a job that does not exist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use trainer::storage::ObjectAddress;

use crate::api;
use crate::api::jobs_server::Jobs;
use crate::store::{Job, JobId, JobQuery, JobStatus, NewJob};
use job::spec::{JobSpec, ModelSpec, PathOrUrl, Validation};

use super::access::TenantPolicy;
use super::checkpoints::FileStream;
use super::control::job_checkpoints;
use super::inputs;
use super::uploads::{MAX_MODEL_FILE_BYTES, MAX_UPLOAD_BYTES, UploadWriter, extension_of};
use super::{Coordinator, status_of};

/// Events sent per store read while replaying a log.
const EVENT_PAGE: u32 = 500;

type EventStream = Pin<Box<dyn Stream<Item = Result<api::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Jobs for Coordinator {
    async fn submit(
        &self,
        request: Request<api::SubmitRequest>,
    ) -> Result<Response<api::Job>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let r = request.into_inner();
        if r.version != crate::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "the spec was submitted by lorafleet {} but the coordinator runs lorafleet {}",
                r.version,
                crate::PROTOCOL_VERSION
            )));
        }
        let base_dir = PathBuf::from(&r.base_dir);
        if !base_dir.is_absolute() {
            return Err(Status::invalid_argument(
                "base_dir must be an absolute folder (where the spec's relative paths start)",
            ));
        }
        let file_name = if r.file_name.is_empty() {
            "job.yaml"
        } else {
            &r.file_name
        };
        let mut spec = JobSpec::from_yaml(&r.spec_yaml, file_name, &base_dir)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let uploads = self.uploads(&tenant);
        apply_uploads(&mut spec, &r.datasets, &uploads)?;
        if !r.model_files.is_empty() {
            apply_model_upload(&mut spec, &r.model_files, r.model_is_folder, &uploads)?;
        }
        tenant
            .check_storage(&spec, &uploads)
            .map_err(Status::permission_denied)?;
        self.check_storage_reach(&spec)?;
        // Checkpoint storage must open and answer now, not after training.
        let checkpoints = job_checkpoints(&spec, tenant.id.as_str(), &JobId::from("check"))
            .map_err(Status::invalid_argument)?;
        checkpoints.steps().await.map_err(|e| {
            Status::failed_precondition(format!("checkpoint.storage cannot be reached: {e}"))
        })?;
        check_datasets(&spec).await?;
        let job = NewJob::from_spec(tenant.id.clone(), &spec, spec.to_yaml());
        let job = self.store().create_job(&job).await.map_err(status_of)?;
        tracing::info!(
            "job {} ({}) queued for tenant {}",
            job.id,
            job.name,
            tenant.id
        );
        self.publish();
        self.wake();
        Ok(Response::new(api::Job::from(&job)))
    }

    async fn upload_dataset(
        &self,
        request: Request<Streaming<api::DatasetChunk>>,
    ) -> Result<Response<api::DatasetRef>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let mut chunks = request.into_inner();
        let mut upload: Option<(UploadWriter, String)> = None;
        let outcome: Result<(), Status> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                let (writer, _) = match &mut upload {
                    Some(started) => started,
                    None => {
                        let limit = match chunk.purpose.as_str() {
                            "" | "dataset" => MAX_UPLOAD_BYTES,
                            "model" => MAX_MODEL_FILE_BYTES,
                            other => {
                                return Err(Status::invalid_argument(format!(
                                    "upload purpose {other:?}: expected dataset or model"
                                )));
                            }
                        };
                        let writer = UploadWriter::create(&self.uploads(&tenant), limit).await?;
                        upload.insert((writer, extension_of(&chunk.file_name, "jsonl")))
                    }
                };
                writer.write(&chunk.data).await?;
            }
            Ok(())
        }
        .await;
        let (writer, extension) = match upload {
            Some(upload) => upload,
            // An empty upload: an empty file.
            None => (
                UploadWriter::create(&self.uploads(&tenant), MAX_UPLOAD_BYTES).await?,
                "jsonl".to_string(),
            ),
        };
        if let Err(status) = outcome {
            writer.abort().await;
            return Err(status);
        }
        let stored = writer.finish(&extension).await?;
        Ok(Response::new(api::DatasetRef {
            url: stored.path.display().to_string(),
            sha256: stored.sha256,
            size_bytes: stored.size,
        }))
    }

    async fn list(
        &self,
        request: Request<api::ListJobsRequest>,
    ) -> Result<Response<api::JobList>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let r = request.into_inner();
        let statuses = r
            .statuses
            .iter()
            .map(|value| crate::api::convert::job_status(*value))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("statuses: {e}")))?;
        let query = JobQuery {
            tenant: Some(tenant.id.clone()),
            after: (!r.after.is_empty()).then(|| JobId::from(r.after.as_str())),
            limit: if r.limit == 0 { 20 } else { r.limit.min(1000) },
            statuses,
        };
        let page = self.store().list_jobs(&query).await.map_err(status_of)?;
        Ok(Response::new(api::JobList {
            data: page.data.iter().map(api::Job::from).collect(),
            has_more: page.has_more,
        }))
    }

    async fn get(&self, request: Request<api::JobRef>) -> Result<Response<api::Job>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let job = self.owned_job(&tenant, &request.into_inner().id).await?;
        Ok(Response::new(api::Job::from(&job)))
    }

    async fn cancel(&self, request: Request<api::JobRef>) -> Result<Response<api::Job>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let job = self.owned_job(&tenant, &request.into_inner().id).await?;
        let job = Coordinator::cancel(self, &job.id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(api::Job::from(&job)))
    }

    async fn resume(&self, request: Request<api::JobRef>) -> Result<Response<api::Job>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let job = self.owned_job(&tenant, &request.into_inner().id).await?;
        if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Err(Status::failed_precondition(format!(
                "job {} is {}: only a failed or cancelled job can be resumed",
                job.id, job.status
            )));
        }
        // Storage may hold newer checkpoints than their events told (a
        // rank cut off from the coordinator commits until it is fenced).
        self.reconcile_or_log(&job).await;
        let latest = self
            .store()
            .latest_checkpoint(&job.id)
            .await
            .map_err(status_of)?;
        let message = match latest {
            Some(c) => format!(
                "job {} resumed: it continues from its checkpoint at step {}",
                job.id, c.step
            ),
            None => format!(
                "job {} resumed: it has no checkpoint, so it starts at step 0",
                job.id
            ),
        };
        let job = self
            .store()
            .resume_job(&job.id, &message)
            .await
            .map_err(status_of)?;
        tracing::info!("{message}");
        self.wake();
        self.publish();
        Ok(Response::new(api::Job::from(&job)))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<api::WatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let r = request.into_inner();
        let job = self.owned_job(&tenant, &r.job_id).await?;
        let (tx, rx) = mpsc::channel(64);
        let coordinator = self.clone();
        let mut news = self.inner.news.subscribe();
        let mut stopping = self.inner.stopping.subscribe();
        tokio::spawn(async move {
            let mut after = r.after_id;
            loop {
                // Whether the job had ended before this read: then nothing
                // can follow what it returns.
                let ended = match coordinator.store().get_job(&job.id).await {
                    Ok(job) => job.status.is_final(),
                    Err(e) => {
                        let _ = tx.send(Err(status_of(e))).await;
                        return;
                    }
                };
                let events = match coordinator
                    .store()
                    .events_after(&job.id, after, EVENT_PAGE)
                    .await
                {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(status_of(e))).await;
                        return;
                    }
                };
                let full_page = events.len() == EVENT_PAGE as usize;
                for event in events {
                    after = event.id;
                    if tx.send(Ok(event.into())).await.is_err() {
                        return;
                    }
                }
                if full_page {
                    continue;
                }
                if !r.follow || ended {
                    return;
                }
                tokio::select! {
                    _ = news.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = tx.closed() => return,
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_checkpoints(
        &self,
        request: Request<api::JobRef>,
    ) -> Result<Response<api::CheckpointList>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let job = self.owned_job(&tenant, &request.into_inner().id).await?;
        self.checkpoint_list(&job).await.map(Response::new)
    }

    type DownloadStream = FileStream;

    async fn download(
        &self,
        request: Request<api::DownloadRequest>,
    ) -> Result<Response<FileStream>, Status> {
        let tenant = self.config().access.client(&request)?.clone();
        let r = request.into_inner();
        let job = self.owned_job(&tenant, &r.job_id).await?;
        self.checkpoint_files(&job, &r.step)
            .await
            .map(Response::new)
    }
}

impl Coordinator {
    /// Job `id` if it belongs to `tenant`; otherwise "not found", whether
    /// or not another tenant has such a job.
    pub(super) async fn owned_job(&self, tenant: &TenantPolicy, id: &str) -> Result<Job, Status> {
        let not_found = || Status::not_found(format!("tenant {} has no job {id}", tenant.id));
        match self.store().get_job(&JobId::from(id)).await {
            Ok(job) if job.tenant == tenant.id => Ok(job),
            Ok(_) => Err(not_found()),
            Err(e) if e.is_not_found() => Err(not_found()),
            Err(e) => Err(status_of(e)),
        }
    }

    /// The folder `tenant`'s uploads go to.
    pub(super) fn uploads(&self, tenant: &TenantPolicy) -> PathBuf {
        self.config()
            .data_dir
            .join("datasets")
            .join(tenant.id.as_str())
    }
}

/// The local path of upload `url`, if it is one of the uploads in
/// `folder` (the tenant's); `key` names it in the error.
fn own_upload(key: &str, url: &str, folder: &Path) -> Result<PathBuf, Status> {
    let ours = match (
        ObjectAddress::parse(url),
        ObjectAddress::parse(&folder.to_string_lossy()),
    ) {
        (Ok(upload), Ok(folder)) => upload.is_within(&folder),
        _ => false,
    };
    if !ours || url.contains("://") {
        return Err(Status::permission_denied(format!(
            "{key}: {url} is not one of this tenant's uploads"
        )));
    }
    Ok(PathBuf::from(url))
}

/// Replaces `model.path` by the model the client uploaded: one file, or
/// a folder made of the uploaded files under their names.
fn apply_model_upload(
    spec: &mut JobSpec,
    files: &[api::UploadedFile],
    is_folder: bool,
    folder: &Path,
) -> Result<(), Status> {
    if !matches!(spec.model, ModelSpec::Path(_)) {
        return Err(Status::invalid_argument(
            "model_files: the spec names no model.path to replace",
        ));
    }
    let mut paths = Vec::new();
    for file in files {
        let key = format!("model.path ({})", file.name);
        paths.push((file.name.clone(), own_upload(&key, &file.url, folder)?));
    }
    let path = if is_folder {
        inputs::model_folder(folder, &paths)?
    } else {
        match paths.as_slice() {
            [(_, path)] => path.clone(),
            _ => {
                return Err(Status::invalid_argument(
                    "model_files: a model that is not a folder is one file",
                ));
            }
        }
    };
    spec.model = ModelSpec::Path(PathOrUrl::Path(path));
    Ok(())
}

/// Replaces the datasets the client uploaded by where they were stored.
fn apply_uploads(
    spec: &mut JobSpec,
    uploads: &HashMap<String, String>,
    folder: &Path,
) -> Result<(), Status> {
    for (key, url) in uploads {
        let path = own_upload(key, url, folder)?;
        match key.as_str() {
            "dataset.train" => spec.dataset.train = PathOrUrl::Path(path),
            "dataset.validation" => {
                spec.dataset.validation = Some(Validation::Data(PathOrUrl::Path(path)))
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "datasets: {other} is not a dataset key (dataset.train or dataset.validation)"
                )));
            }
        }
    }
    Ok(())
}

/// Reads every dataset of `spec` and checks its records, so a bad line is
/// refused (FILE:LINE) before the job is queued.
async fn check_datasets(spec: &JobSpec) -> Result<(), Status> {
    let format = spec
        .dataset
        .format
        .name()
        .parse::<trainer::data::Format>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut sources = vec![("dataset.train", spec.dataset.train.to_string())];
    if let Some(Validation::Data(v)) = &spec.dataset.validation {
        sources.push(("dataset.validation", v.to_string()));
    }
    for (key, location) in sources {
        let checked = tokio::task::spawn_blocking(move || {
            let source = trainer::data::DataSource::parse(&location)?;
            trainer::data::check_records(&source, format)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        checked.map_err(|e| Status::invalid_argument(format!("{key}: {e}")))?;
    }
    Ok(())
}
