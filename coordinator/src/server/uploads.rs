//! Writing an upload into a tenant's upload folder: bytes go to a
//! temporary name, are hashed and counted against a limit as they come,
//! are synced, and only then take their content-addressed name
//! `{sha256}.{extension}`, so a crash leaves the whole file or none (and
//! [`remove_unfinished`] clears what a crash left at start-up).
//!
//! Both the gRPC `UploadDataset` stream and the HTTP `POST /v1/files`
//! write through [`UploadWriter`]. Not here: who may upload (`access`),
//! what a file must hold (the callers check records).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::Status;

/// The largest dataset an upload may send.
pub(super) const MAX_UPLOAD_BYTES: u64 = 4 << 30;
/// The largest file of a base model an upload may send.
pub(super) const MAX_MODEL_FILE_BYTES: u64 = 64 << 30;
/// The name an upload has until it is whole; a coordinator that crashed
/// mid-upload removes such files when it starts again.
const UNFINISHED_UPLOAD: &str = ".upload-";

/// An upload being written.
pub(super) struct UploadWriter {
    folder: PathBuf,
    tmp: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

/// A whole upload under its content-addressed name.
#[derive(Clone, Debug)]
pub(super) struct StoredUpload {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// Whether these bytes were already there (another upload of the
    /// same content).
    pub existed: bool,
}

impl UploadWriter {
    /// Starts an upload into `folder` (created if missing) of at most
    /// `limit` bytes.
    pub async fn create(folder: &Path, limit: u64) -> Result<UploadWriter, Status> {
        tokio::fs::create_dir_all(folder)
            .await
            .map_err(|e| Status::internal(format!("cannot create {}: {e}", folder.display())))?;
        let tmp = folder.join(format!("{UNFINISHED_UPLOAD}{}", rand::random::<u64>()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Status::internal(format!("cannot write {}: {e}", tmp.display())))?;
        Ok(UploadWriter {
            folder: folder.to_path_buf(),
            tmp,
            file,
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Appends `data`; past the limit the upload is refused.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Status> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(Status::resource_exhausted(format!(
                "the file is larger than the {} GiB an upload may be",
                self.limit >> 30
            )));
        }
        self.hasher.update(data);
        self.file
            .write_all(data)
            .await
            .map_err(|e| Status::internal(format!("cannot write the upload: {e}")))
    }

    /// Syncs the bytes and gives them their name, `{sha256}.{extension}`.
    pub async fn finish(mut self, extension: &str) -> Result<StoredUpload, Status> {
        let synced = async {
            self.file.flush().await?;
            // On disk before it gets its name: a crash after the rename
            // leaves the whole file or none.
            self.file.sync_all().await
        }
        .await;
        if let Err(e) = synced {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(Status::internal(format!("cannot write the upload: {e}")));
        }
        let sha256 = hex::encode(self.hasher.finalize());
        let path = self.folder.join(format!("{sha256}.{extension}"));
        let existed = tokio::fs::try_exists(&path).await.unwrap_or(false);
        tokio::fs::rename(&self.tmp, &path)
            .await
            .map_err(|e| Status::internal(format!("cannot store the upload: {e}")))?;
        if let Ok(dir) = tokio::fs::File::open(&self.folder).await {
            let _ = dir.sync_all().await;
        }
        Ok(StoredUpload {
            path,
            sha256,
            size: self.size,
            existed,
        })
    }

    /// Removes what was written (the upload failed).
    pub async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

/// `file_name`'s extension if it is a plain word, else `fallback`.
pub(super) fn extension_of(file_name: &str, fallback: &str) -> String {
    match Path::new(file_name).extension().and_then(|e| e.to_str()) {
        Some(ext) if !ext.is_empty() && ext.chars().all(|c| c.is_ascii_alphanumeric()) => {
            ext.to_string()
        }
        _ => fallback.to_string(),
    }
}

/// Removes the uploads a crash interrupted (`datasets/{tenant}/.upload-*`
/// under the coordinator's data folder): nothing refers to them.
pub(super) fn remove_unfinished(uploads: &Path) {
    let Ok(tenants) = std::fs::read_dir(uploads) else {
        return;
    };
    for tenant in tenants.flatten() {
        let Ok(files) = std::fs::read_dir(tenant.path()) else {
            continue;
        };
        for file in files.flatten() {
            if file
                .file_name()
                .to_string_lossy()
                .starts_with(UNFINISHED_UPLOAD)
            {
                match std::fs::remove_file(file.path()) {
                    Ok(()) => tracing::info!(
                        "removed {}, an upload a stop interrupted",
                        file.path().display()
                    ),
                    Err(e) => tracing::warn!("cannot remove {}: {e}", file.path().display()),
                }
            }
        }
    }
}
