//! The typed calls: one method of [`Connection`] per thing a client asks
//! the coordinator (submit, upload, list, status, cancel, resume, watch,
//! checkpoints, download; list, drain and undrain workers). Each sends the
//! request, turns the reply into the types of [`super::types`] through
//! `api::convert`, and a failure into a [`CallError`].
//!
//! Not here: connecting ([`Connection::open`]), retrying (the caller
//! decides, with [`CallError::is_transient`]), or what a command prints.

use std::io::Read;
use std::path::Path;

use tonic::Streaming;

use super::Connection;
use super::error::{CallError, UploadError};
use super::types::{
    Checkpoint, Event, FileChunk, Job, JobPage, JobStatus, Submission, UploadPurpose, Uploaded,
    Worker,
};
use crate::api::{self, CHUNK_BYTES, convert};

impl Connection {
    /// Queues `submission` (this program's version goes with it); returns
    /// the queued job.
    pub async fn submit(&self, submission: Submission) -> Result<Job, CallError> {
        let request = convert::submit_request(submission, crate::PROTOCOL_VERSION);
        let job = self.jobs().submit(request).await?.into_inner();
        Ok(Job::try_from(job)?)
    }

    /// Streams the local file at `path` to the coordinator's upload
    /// folder; returns where it was stored (content-addressed).
    pub async fn upload(
        &self,
        path: &Path,
        purpose: UploadPurpose,
    ) -> Result<Uploaded, UploadError> {
        let read_error = |source| UploadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut first = true;
            loop {
                let mut data = vec![0u8; CHUNK_BYTES];
                let n = file.read(&mut data)?;
                if n == 0 && !first {
                    return Ok(());
                }
                data.truncate(n);
                let chunk = api::DatasetChunk {
                    file_name: if first { name.clone() } else { String::new() },
                    data,
                    purpose: if first {
                        purpose.name().to_string()
                    } else {
                        String::new()
                    },
                };
                first = false;
                if tx.blocking_send(chunk).is_err() || n == 0 {
                    return Ok(());
                }
            }
        });
        let reply = self
            .jobs()
            .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        match reader.await {
            Ok(read) => read.map_err(read_error)?,
            Err(join) => return Err(read_error(std::io::Error::other(join))),
        }
        Ok(reply.map_err(CallError::from)?.into_inner().into())
    }

    /// The tenant's jobs, newest first: at most `limit` (0: the
    /// coordinator's default), after job `after` (the last id of the
    /// previous page).
    pub async fn list(&self, limit: u32, after: Option<&str>) -> Result<JobPage, CallError> {
        self.list_in(limit, after, &[]).await
    }

    /// As [`Connection::list`], only jobs in one of `statuses` (none: any).
    pub async fn list_in(
        &self,
        limit: u32,
        after: Option<&str>,
        statuses: &[JobStatus],
    ) -> Result<JobPage, CallError> {
        let request = api::ListJobsRequest {
            limit,
            after: after.unwrap_or_default().to_string(),
            statuses: statuses
                .iter()
                .map(|status| api::JobStatus::from(*status).into())
                .collect(),
        };
        let list = self.jobs().list(request).await?.into_inner();
        Ok(JobPage::try_from(list)?)
    }

    /// Job `id` as it stands.
    pub async fn status(&self, id: &str) -> Result<Job, CallError> {
        let job = self.jobs().get(job_ref(id)).await?.into_inner();
        Ok(Job::try_from(job)?)
    }

    /// Cancels job `id`; returns it as it is after.
    pub async fn cancel(&self, id: &str) -> Result<Job, CallError> {
        let job = self.jobs().cancel(job_ref(id)).await?.into_inner();
        Ok(Job::try_from(job)?)
    }

    /// Queues failed or cancelled job `id` again, from its latest
    /// checkpoint; returns it as it is after.
    pub async fn resume(&self, id: &str) -> Result<Job, CallError> {
        let job = self.jobs().resume(job_ref(id)).await?.into_inner();
        Ok(Job::try_from(job)?)
    }

    /// Job `id`'s events after event `after_id` (0: from the start); with
    /// `follow`, new ones as they come until the job ends.
    pub async fn watch(
        &self,
        id: &str,
        after_id: i64,
        follow: bool,
    ) -> Result<EventStream, CallError> {
        let request = api::WatchRequest {
            job_id: id.to_string(),
            after_id,
            follow,
        };
        let stream = self.jobs().watch_events(request).await?.into_inner();
        Ok(EventStream(stream))
    }

    /// Job `id`'s committed checkpoints, oldest first.
    pub async fn checkpoints(&self, id: &str) -> Result<Vec<Checkpoint>, CallError> {
        let list = self
            .jobs()
            .list_checkpoints(job_ref(id))
            .await?
            .into_inner();
        Ok(list.data.into_iter().map(Checkpoint::from).collect())
    }

    /// The files of job `id`'s checkpoint `step` (a step number, `latest`
    /// or `best`), in pieces.
    pub async fn download(&self, id: &str, step: &str) -> Result<ChunkStream, CallError> {
        let request = api::DownloadRequest {
            job_id: id.to_string(),
            step: step.to_string(),
        };
        let stream = self.jobs().download(request).await?.into_inner();
        Ok(ChunkStream(stream))
    }

    /// The workers that joined (a tenant sees only its own jobs on them).
    pub async fn list_workers(&self) -> Result<Vec<Worker>, CallError> {
        let request = api::ListWorkersRequest {};
        let list = self.workers().list(request).await?.into_inner();
        Ok(list
            .data
            .into_iter()
            .map(Worker::try_from)
            .collect::<Result<_, _>>()?)
    }

    /// Lets worker `id` finish its job and take no new one (an operator's
    /// call); returns it as it is after.
    pub async fn drain(&self, id: &str) -> Result<Worker, CallError> {
        let worker = self.workers().drain(worker_ref(id)).await?.into_inner();
        Ok(Worker::try_from(worker)?)
    }

    /// Lets draining worker `id` take jobs again (an operator's call).
    pub async fn undrain(&self, id: &str) -> Result<Worker, CallError> {
        let worker = self.workers().undrain(worker_ref(id)).await?.into_inner();
        Ok(Worker::try_from(worker)?)
    }
}

/// A job's events as [`Connection::watch`] streams them.
pub struct EventStream(Streaming<api::JobEvent>);

impl EventStream {
    /// The next event; `None` once the stream ends.
    pub async fn next(&mut self) -> Option<Result<Event, CallError>> {
        match self.0.message().await {
            Ok(Some(event)) => Some(Event::try_from(event).map_err(CallError::from)),
            Ok(None) => None,
            Err(status) => Some(Err(status.into())),
        }
    }
}

/// A checkpoint's files as [`Connection::download`] streams them.
pub struct ChunkStream(Streaming<api::FileChunk>);

impl ChunkStream {
    /// The next piece; `None` once every file was sent.
    pub async fn next(&mut self) -> Option<Result<FileChunk, CallError>> {
        match self.0.message().await {
            Ok(Some(chunk)) => Some(Ok(chunk.into())),
            Ok(None) => None,
            Err(status) => Some(Err(status.into())),
        }
    }
}

fn job_ref(id: &str) -> api::JobRef {
    api::JobRef { id: id.to_string() }
}

fn worker_ref(id: &str) -> api::WorkerRef {
    api::WorkerRef { id: id.to_string() }
}
