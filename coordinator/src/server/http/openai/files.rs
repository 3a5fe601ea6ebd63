//! `/v1/files`: uploading, listing, reading and deleting a tenant's
//! training files.
//!
//! An upload is multipart (`purpose=fine-tune` and `file`) and is written
//! by the same [`UploadWriter`] as the gRPC upload, into the tenant's
//! upload folder. Its records are checked before it is accepted, with
//! the errors `lorafleet validate` gives (FILE:LINE, the file named as the
//! client named it), so a bad line is refused here and not when a job
//! starts. A file's bytes are shared by files of the same content; a
//! delete removes the bytes only when no other file and no unfinished job
//! of the tenant still names them.

use axum::Json;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::{ApiError, Caller};
use super::list_object;
use crate::server::Coordinator;
use crate::server::uploads::{MAX_UPLOAD_BYTES, StoredUpload, UploadWriter, extension_of};
use crate::store::{FileRecord, JobStatus, NewFile, StoreError};

/// The only purpose lorafleet keeps files for.
const FINE_TUNE: &str = "fine-tune";

/// A file as OpenAI's API shows one.
pub(super) fn file_object(file: &FileRecord) -> Value {
    json!({
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "status_details": null,
        "expires_at": null,
    })
}

/// A store error on a file as the API answers it.
pub(super) fn file_error(error: StoreError) -> ApiError {
    if error.is_not_found() {
        ApiError::not_found(format!("No such File object: {}", error_id(&error)))
    } else {
        ApiError::internal(error.to_string())
    }
}

fn error_id(error: &StoreError) -> String {
    match error {
        StoreError::FileNotFound(id) => id.clone(),
        other => other.to_string(),
    }
}

/// `POST /v1/files`.
pub(super) async fn upload(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    mut form: Multipart,
) -> Result<Json<Value>, ApiError> {
    let mut purpose: Option<String> = None;
    let mut stored: Option<(StoredUpload, String)> = None;
    let outcome: Result<(), ApiError> = async {
        while let Some(mut field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::invalid(format!("the multipart body is malformed: {e}")))?
        {
            match field.name() {
                Some("purpose") => {
                    let text = field
                        .text()
                        .await
                        .map_err(|e| ApiError::invalid(format!("purpose: {e}")).param("purpose"))?;
                    purpose = Some(text);
                }
                Some("file") => {
                    if stored.is_some() {
                        return Err(ApiError::invalid("send one file per upload").param("file"));
                    }
                    let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                    let folder = coordinator.uploads(&caller.tenant);
                    let mut writer = UploadWriter::create(&folder, MAX_UPLOAD_BYTES).await?;
                    loop {
                        match field.chunk().await {
                            Ok(Some(bytes)) => {
                                if let Err(status) = writer.write(&bytes).await {
                                    writer.abort().await;
                                    return Err(status.into());
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                writer.abort().await;
                                return Err(ApiError::invalid(format!(
                                    "the upload broke off: {e}"
                                )));
                            }
                        }
                    }
                    let upload = writer.finish(&extension_of(&filename, "jsonl")).await?;
                    stored = Some((upload, filename));
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    // Bytes stored for a refused upload go, unless another file has them.
    let refuse = |stored: Option<(StoredUpload, String)>, error: ApiError| async move {
        if let Some((upload, _)) = stored
            && !upload.existed
        {
            let _ = tokio::fs::remove_file(&upload.path).await;
        }
        Err(error)
    };
    if let Err(error) = outcome {
        return refuse(stored, error).await;
    }
    match purpose.as_deref() {
        None => {
            return refuse(
                stored,
                ApiError::invalid("missing required parameter: 'purpose'")
                    .param("purpose")
                    .code("missing_required_parameter"),
            )
            .await;
        }
        Some(FINE_TUNE) => {}
        Some(other) => {
            return refuse(
                stored,
                ApiError::invalid(format!(
                    "purpose {other:?}: lorafleet keeps files for fine-tuning only (purpose=fine-tune)"
                ))
                .param("purpose"),
            )
            .await;
        }
    }
    let Some((upload, filename)) = stored.take() else {
        return Err(ApiError::invalid("missing required parameter: 'file'")
            .param("file")
            .code("missing_required_parameter"));
    };
    if let Err(message) = check_records(&upload, &filename).await {
        return refuse(
            Some((upload, filename)),
            ApiError::invalid(message)
                .param("file")
                .code("invalid_file"),
        )
        .await;
    }
    let file = NewFile {
        tenant: caller.tenant.id.clone(),
        filename,
        purpose: FINE_TUNE.to_string(),
        bytes: upload.size,
        sha256: upload.sha256.clone(),
        path: upload.path.display().to_string(),
    };
    let file = coordinator
        .store()
        .create_file(&file)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tracing::info!(
        "tenant {} uploaded file {} ({}, {} bytes)",
        caller.tenant.id,
        file.id,
        file.filename,
        file.bytes
    );
    Ok(Json(file_object(&file)))
}

/// Checks the upload's records as JSONL training data of any shape
/// lorafleet reads; the error names the file as the client did.
async fn check_records(upload: &StoredUpload, filename: &str) -> Result<(), String> {
    let path = upload.path.display().to_string();
    let location = path.clone();
    let checked = tokio::task::spawn_blocking(move || {
        let source = trainer::data::DataSource::parse(&location)?;
        trainer::data::check_records(&source, trainer::data::Format::Auto)
    })
    .await
    .map_err(|e| e.to_string())?;
    match checked {
        Ok(0) => Err(format!("{filename}: the file holds no records")),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string().replace(&path, filename)),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ListFiles {
    purpose: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/files`.
pub(super) async fn list(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Query(query): Query<ListFiles>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(10_000).clamp(1, 10_000);
    let page = coordinator
        .store()
        .list_files(
            &caller.tenant.id,
            query.purpose.as_deref(),
            query.after.as_deref(),
            limit,
        )
        .await
        .map_err(file_error)?;
    let data: Vec<Value> = page.data.iter().map(file_object).collect();
    Ok(Json(list_object(data, page.has_more)))
}

/// `GET /v1/files/{id}`.
pub(super) async fn get(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let file = coordinator
        .store()
        .get_file(&caller.tenant.id, &id)
        .await
        .map_err(file_error)?;
    Ok(Json(file_object(&file)))
}

/// `GET /v1/files/{id}/content`: the file's bytes.
pub(super) async fn content(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let file = coordinator
        .store()
        .get_file(&caller.tenant.id, &id)
        .await
        .map_err(file_error)?;
    let bytes = tokio::fs::File::open(&file.path)
        .await
        .map_err(|e| ApiError::internal(format!("file {id}: cannot read its bytes: {e}")))?;
    let body = Body::from_stream(tokio_util_stream(bytes));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, file.bytes.to_string()),
        ],
        body,
    )
        .into_response())
}

/// A file's bytes as a stream of chunks.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<axum::body::Bytes>> {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; 256 << 10];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(axum::body::Bytes::from(buffer)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// `DELETE /v1/files/{id}`.
pub(super) async fn delete(
    State(coordinator): State<Coordinator>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = coordinator.store();
    let (file, shared) = store
        .delete_file(&caller.tenant.id, &id)
        .await
        .map_err(file_error)?;
    if !shared
        && !named_by_unfinished_job(&coordinator, &caller, &file.path).await?
        && let Err(e) = tokio::fs::remove_file(&file.path).await
    {
        tracing::warn!("file {id}: cannot remove {}: {e}", file.path);
    }
    Ok(Json(
        json!({ "id": file.id, "object": "file", "deleted": true }),
    ))
}

/// Whether an unfinished job of the caller's reads `path` (it keeps the
/// bytes it was submitted with until it ends).
async fn named_by_unfinished_job(
    coordinator: &Coordinator,
    caller: &Caller,
    path: &str,
) -> Result<bool, ApiError> {
    let unfinished = [
        JobStatus::Queued,
        JobStatus::Starting,
        JobStatus::Running,
        JobStatus::Restarting,
    ];
    let jobs = coordinator
        .store()
        .jobs_with_status(&unfinished)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(jobs
        .iter()
        .any(|job| job.tenant == caller.tenant.id && job.spec_yaml.contains(path)))
}
