//! Files uploaded through the OpenAI-compatible API, and the requests
//! jobs were created from there.
//!
//! A file row names bytes that live in the tenant's upload folder (kept by
//! `server`, content-addressed): two files with the same content share
//! them. The store only keeps rows; deciding when bytes may go is the
//! server's.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Row};

use super::ids::random_hex;
use super::jobs::placeholders;
use super::{
    DbRow, JobId, Page, Store, StoreError, TenantId, parse_json, to_i64, to_u64, unix_now,
};

/// A file to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewFile {
    pub tenant: TenantId,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    pub sha256: String,
    /// Where the bytes are, on the coordinator.
    pub path: String,
}

/// A file as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct FileRecord {
    /// `file-` and 24 hex digits.
    pub id: String,
    pub tenant: TenantId,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    pub sha256: String,
    pub path: String,
    pub created_at: i64,
}

macro_rules! file_columns {
    () => {
        "seq, id, tenant_id, filename, purpose, bytes, sha256, path, created_at"
    };
}

impl Store {
    /// Records a file.
    pub async fn create_file(&self, file: &NewFile) -> Result<FileRecord, StoreError> {
        let id = format!("file-{}", random_hex(12));
        let now = unix_now();
        sqlx::query(
            "INSERT INTO files (id, tenant_id, filename, purpose, bytes, sha256, path, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(file.tenant.as_str())
        .bind(&file.filename)
        .bind(&file.purpose)
        .bind(to_i64("bytes", file.bytes)?)
        .bind(&file.sha256)
        .bind(&file.path)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(FileRecord {
            id,
            tenant: file.tenant.clone(),
            filename: file.filename.clone(),
            purpose: file.purpose.clone(),
            bytes: file.bytes,
            sha256: file.sha256.clone(),
            path: file.path.clone(),
            created_at: now,
        })
    }

    /// File `id` of `tenant`; another tenant's file is not found.
    pub async fn get_file(&self, tenant: &TenantId, id: &str) -> Result<FileRecord, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            file_columns!(),
            " FROM files WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::FileNotFound(id.to_string()))?;
        file_from_row(&row)
    }

    /// A page of `tenant`'s files, newest first, after file `after` (the
    /// last id of the previous page), only of `purpose` if given.
    pub async fn list_files(
        &self,
        tenant: &TenantId,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<FileRecord>, StoreError> {
        let before = match after {
            None => i64::MAX,
            Some(after) => {
                let row = sqlx::query("SELECT seq FROM files WHERE id = $1 AND tenant_id = $2")
                    .bind(after)
                    .bind(tenant.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::FileNotFound(after.to_string()))?;
                row.try_get::<i64, _>("seq")?
            }
        };
        let limit = limit.max(1);
        let rows = sqlx::query(concat!(
            "SELECT ",
            file_columns!(),
            " FROM files WHERE tenant_id = $1 AND seq < $2 \
             AND ($3 IS NULL OR purpose = $3) ORDER BY seq DESC LIMIT $4"
        ))
        .bind(tenant.as_str())
        .bind(before)
        .bind(purpose)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut data = rows
            .iter()
            .map(file_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = data.len() > limit as usize;
        data.truncate(limit as usize);
        Ok(Page { data, has_more })
    }

    /// Forgets file `id` of `tenant`; returns it, and whether another file
    /// row still names the same bytes.
    pub async fn delete_file(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<(FileRecord, bool), StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            file_columns!(),
            " FROM files WHERE id = $1 AND tenant_id = $2"
        ))
        .bind(id)
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::FileNotFound(id.to_string()))?;
        let file = file_from_row(&row)?;
        sqlx::query("DELETE FROM files WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let shared: i64 = sqlx::query("SELECT COUNT(*) AS n FROM files WHERE path = $1")
            .bind(&file.path)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        tx.commit().await?;
        Ok((file, shared > 0))
    }

    /// Keeps the API request job `job` was created from.
    pub async fn put_job_request(
        &self,
        job: &JobId,
        request: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO job_requests (job_id, request) VALUES ($1, $2)")
            .bind(job.as_str())
            .bind(request.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The API requests `jobs` were created from, for those that were:
    /// one query for a page of jobs.
    pub async fn job_requests(
        &self,
        jobs: &[JobId],
    ) -> Result<HashMap<JobId, serde_json::Value>, StoreError> {
        if jobs.is_empty() {
            return Ok(HashMap::new());
        }
        // Audited: only numbered placeholders are spliced in.
        let sql = format!(
            "SELECT job_id, request FROM job_requests WHERE job_id IN ({})",
            placeholders(1, jobs.len())
        );
        let rows = jobs
            .iter()
            .fold(sqlx::query(AssertSqlSafe(sql)), |query, job| {
                query.bind(job.as_str())
            })
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let job = JobId::from(row.try_get::<String, _>("job_id")?);
                Ok((job, parse_json("job request", row.try_get("request")?)?))
            })
            .collect()
    }

    /// The API request job `job` was created from, if it was.
    pub async fn job_request(&self, job: &JobId) -> Result<Option<serde_json::Value>, StoreError> {
        let row = sqlx::query("SELECT request FROM job_requests WHERE job_id = $1")
            .bind(job.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| parse_json("job request", row.try_get("request")?))
            .transpose()
    }
}

fn file_from_row(row: &DbRow) -> Result<FileRecord, StoreError> {
    Ok(FileRecord {
        id: row.try_get("id")?,
        tenant: TenantId::from_row(row.try_get("tenant_id")?),
        filename: row.try_get("filename")?,
        purpose: row.try_get("purpose")?,
        bytes: to_u64("bytes", row.try_get("bytes")?)?,
        sha256: row.try_get("sha256")?,
        path: row.try_get("path")?,
        created_at: row.try_get("created_at")?,
    })
}
