//! `/v1/fine_tuning/jobs`: create, list, get and cancel, and the job
//! object OpenAI's clients read.
//!
//! A job made here is an ordinary lorafleet job: [`create`] builds its
//! spec and submits it through the `Jobs` service (the same checks as
//! `lorafleet submit`), then keeps the request (`job_requests`) to show
//! the model name, file ids and hyperparameters as they were asked for.
//! Jobs submitted over gRPC show what their spec says.
//!
//! Status words: lorafleet's `starting` and `restarting` are OpenAI's
//! `running`; lorafleet's own word is under `lorafleet.status`.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};

use super::super::{ApiError, Caller};
use super::create::{CreateJob, JobPlace};
use super::files::file_error;
use super::{Paging, list_object};
use crate::api::{self, jobs_server::Jobs};
use crate::server::Coordinator;
use crate::store::{Job, JobId, JobQuery, JobStatus, unix_now};
use job::spec::{JobSpec, ModelSpec, TrainingLength};

/// OpenAI's word for a lorafleet status.
fn openai_status(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "queued",
        JobStatus::Starting | JobStatus::Running | JobStatus::Restarting => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

/// The adapter a succeeded job made, named as OpenAI names fine-tuned
/// models: `ft:{model}:{tenant}[:{suffix}]:{job id}`.
pub(super) fn fine_tuned_model(job: &Job, model: &str, suffix: Option<&str>) -> String {
    match suffix {
        Some(suffix) => format!("ft:{model}:{}:{suffix}:{}", job.tenant, job.id),
        None => format!("ft:{model}:{}:{}", job.tenant, job.id),
    }
}

/// The model name of a job: its request's, else what its spec names.
pub(super) fn model_name(spec: Option<&JobSpec>, request: Option<&Value>) -> String {
    if let Some(model) = request.and_then(|r| r["model"].as_str()) {
        return model.to_string();
    }
    match spec.map(|spec| &spec.model) {
        Some(ModelSpec::Preset(preset)) => preset.name().to_string(),
        Some(ModelSpec::Path(path)) => path.to_string(),
        None => String::new(),
    }
}

/// `job` as OpenAI's fine-tuning job object, with lorafleet's figures
/// under `lorafleet`.
pub(super) fn job_object(coordinator: &Coordinator, job: &Job, request: Option<&Value>) -> Value {
    let spec = coordinator.spec_of(job).ok();
    let model = model_name(spec.as_deref(), request);
    let suffix = request.and_then(|r| r["suffix"].as_str());
    let hyperparameters = match request {
        Some(request) => request["hyperparameters"].clone(),
        None => match &spec {
            Some(spec) => json!({
                "n_epochs": match spec.training.length {
                    TrainingLength::Epochs(n) => json!(n),
                    TrainingLength::MaxSteps(_) => json!("auto"),
                },
                "batch_size": spec.training.global_batch_size,
                "learning_rate_multiplier": 1.0,
            }),
            None => Value::Null,
        },
    };
    let seed = match request {
        Some(request) => request["seed"].clone(),
        None => json!(spec.as_ref().map(|s| s.training.seed)),
    };
    let eta = job.eta_seconds();
    let progress = &job.progress;
    json!({
        "object": "fine_tuning.job",
        "id": job.id.as_str(),
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "model": model,
        "fine_tuned_model": (job.status == JobStatus::Succeeded)
            .then(|| fine_tuned_model(job, &model, suffix)),
        "organization_id": job.tenant.as_str(),
        "status": openai_status(job.status),
        "error": job.error.as_ref().map(|e| json!({
            "code": e.code, "message": e.message, "param": null,
        })),
        "hyperparameters": hyperparameters,
        "method": { "type": "supervised", "supervised": { "hyperparameters": hyperparameters } },
        "training_file": request.map(|r| r["training_file"].clone()),
        "validation_file": request.map(|r| r["validation_file"].clone()),
        "result_files": [],
        "trained_tokens": (job.status == JobStatus::Succeeded).then_some(progress.trained_tokens),
        "seed": seed,
        "estimated_finish": eta.map(|s| unix_now() + s.round() as i64),
        "user_provided_suffix": suffix,
        "integrations": [],
        "metadata": request.map(|r| r["metadata"].clone()),
        "lorafleet": {
            "name": job.name,
            "status": job.status.name(),
            "step": job.step,
            "total_steps": job.total_steps,
            "attempt": job.attempt,
            "train_loss": progress.train_loss,
            "valid_loss": progress.valid_loss,
            "tokens_per_s": progress.tokens_per_s,
            "step_seconds": progress.step_seconds,
            "eta_seconds": eta,
            "trained_tokens": progress.trained_tokens,
            "workers_min": job.workers_min,
            "workers_max": job.workers_max,
        },
    })
}

/// Job `id` of the caller's, as its object.
async fn owned_object(
    coordinator: &Coordinator,
    caller: &Caller,
    id: &str,
) -> Result<Value, ApiError> {
    let job = coordinator.owned_job(&caller.tenant, id).await?;
    let request = stored_request(coordinator, &job.id).await?;
    Ok(job_object(coordinator, &job, request.as_ref()))
}

async fn stored_request(coordinator: &Coordinator, job: &JobId) -> Result<Option<Value>, ApiError> {
    coordinator
        .store()
        .job_request(job)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// `POST /v1/fine_tuning/jobs`.
pub(super) async fn create(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request = CreateJob::parse(&body)?;
    let catalogue = coordinator.config().access.catalogue();
    let Some(base) = catalogue.get(&request.model) else {
        let names: Vec<&str> = catalogue.iter().map(|(name, _)| name).collect();
        return Err(ApiError::invalid(format!(
            "model {:?} is not in this coordinator's catalogue (it has: {})",
            request.model,
            names.join(", ")
        ))
        .param("model")
        .code("model_not_found"));
    };
    let store = coordinator.store();
    let training = store
        .get_file(&caller.tenant.id, &request.training_file)
        .await
        .map_err(|e| {
            let error = file_error(e);
            ApiError::invalid(format!("invalid training_file: {}", error.message))
                .param("training_file")
        })?;
    let validation = match &request.validation_file {
        Some(id) => Some(store.get_file(&caller.tenant.id, id).await.map_err(|e| {
            let error = file_error(e);
            ApiError::invalid(format!("invalid validation_file: {}", error.message))
                .param("validation_file")
        })?),
        None => None,
    };
    let resolved = request.resolve(base)?;
    let data_dir = std::path::absolute(&coordinator.config().data_dir)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let storage = match caller.tenant.storage.as_ref().and_then(|s| s.first()) {
        Some(prefix) => prefix.clone(),
        None => data_dir.join("checkpoints").display().to_string(),
    };
    let place = JobPlace {
        base,
        training_path: &training.path,
        validation_path: validation.as_ref().map(|f| f.path.as_str()),
        checkpoint_storage: &storage,
    };
    let spec = request.spec(&resolved, &place)?;
    let spec_yaml = serde_saphyr::to_string(&spec)
        .map_err(|e| ApiError::internal(format!("cannot write the job spec: {e}")))?;
    let mut datasets = HashMap::from([("dataset.train".to_string(), training.path.clone())]);
    if let Some(validation) = &validation {
        datasets.insert("dataset.validation".to_string(), validation.path.clone());
    }
    let submit = api::SubmitRequest {
        spec_yaml,
        base_dir: data_dir.display().to_string(),
        file_name: "request".into(),
        version: crate::PROTOCOL_VERSION.into(),
        datasets,
        ..Default::default()
    };
    let created = Jobs::submit(&coordinator, caller.request(submit))
        .await?
        .into_inner();
    let job = JobId::from(created.id.as_str());
    let kept = json!({
        "model": request.model,
        "training_file": request.training_file,
        "validation_file": request.validation_file,
        "suffix": request.suffix,
        "seed": resolved.seed,
        "hyperparameters": {
            "n_epochs": resolved.n_epochs,
            "batch_size": resolved.batch_size,
            "learning_rate_multiplier": resolved.learning_rate_multiplier,
        },
        "metadata": request.metadata,
    });
    store
        .put_job_request(&job, &kept)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(
        "job {job} created through the API by tenant {} on {}",
        caller.tenant.id,
        request.model
    );
    owned_object(&coordinator, &caller, job.as_str())
        .await
        .map(Json)
}

/// `GET /v1/fine_tuning/jobs`.
pub(super) async fn list(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Query(query): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let query = JobQuery {
        tenant: Some(caller.tenant.id.clone()),
        limit: query.limit(20, 100),
        after: query.after.map(JobId::from),
        statuses: Vec::new(),
    };
    let page = coordinator
        .store()
        .list_jobs(&query)
        .await
        .map_err(|e| match e.is_not_found() {
            true => ApiError::not_found(e.to_string()).param("after"),
            false => ApiError::internal(e.to_string()),
        })?;
    let ids: Vec<JobId> = page.data.iter().map(|job| job.id.clone()).collect();
    let requests = coordinator
        .store()
        .job_requests(&ids)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let data = page
        .data
        .iter()
        .map(|job| job_object(&coordinator, job, requests.get(&job.id)))
        .collect();
    Ok(Json(list_object(data, page.has_more)))
}

/// `GET /v1/fine_tuning/jobs/{id}`.
pub(super) async fn get(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    owned_object(&coordinator, &caller, &id).await.map(Json)
}

/// `POST /v1/fine_tuning/jobs/{id}/cancel`.
pub(super) async fn cancel(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Jobs::cancel(&coordinator, caller.request(api::JobRef { id: id.clone() })).await?;
    owned_object(&coordinator, &caller, &id).await.map(Json)
}

/// `GET /v1/models`: the catalogue's base models.
pub(super) async fn models(State(coordinator): State<Coordinator>, _caller: Caller) -> Json<Value> {
    let data: Vec<Value> = coordinator
        .config()
        .access
        .catalogue()
        .iter()
        .map(|(name, _)| {
            json!({ "id": name, "object": "model", "created": 0, "owned_by": "lorafleet" })
        })
        .collect();
    Json(list_object(data, false))
}
