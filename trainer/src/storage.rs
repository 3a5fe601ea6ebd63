//! Where bytes live: a local path or an object storage URL, opened as an
//! `object_store` store and a path inside it.
//!
//! Owns: parsing a location (`/a/path`, `relative/path`, `file://`,
//! `memory://`, `s3://`, `gs://`, `az://`) into a [`Location`], with
//! credentials and endpoints from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ...). Not here: what is stored (datasets
//! are read by `data`, checkpoints written by `checkpoint`).
//!
//! `memory://` is one store per process, so what one part of a program
//! writes there another can read (tests use it).

use std::sync::{Arc, OnceLock};

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme};

/// Environment variables handed to object_store's builders, which pick the
/// keys they know (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, ...).
const ENV_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

/// A location that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct StorageError {
    pub location: String,
    pub message: String,
}

/// A store and a path in it, with the name the user wrote for it.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    path: StorePath,
    name: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Location")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

impl Location {
    /// A local path (relative to the working directory) or a URL with a
    /// scheme. Errors name `location` as given.
    pub fn parse(location: &str) -> Result<Location, StorageError> {
        let fail = |message: String| StorageError {
            location: location.to_string(),
            message,
        };
        if location.contains("://") {
            let url =
                url::Url::parse(location).map_err(|e| fail(format!("not a valid URL: {e}")))?;
            let (scheme, _) = ObjectStoreScheme::parse(&url)
                .map_err(|e| fail(format!("not a storage URL: {e}")))?;
            if scheme == ObjectStoreScheme::Memory {
                let path = StorePath::parse(url.path())
                    .map_err(|e| fail(format!("not a valid path: {e}")))?;
                return Ok(Location {
                    store: memory_store(),
                    path,
                    name: location.trim_end_matches('/').to_string(),
                });
            }
            let (store, path) = object_store::parse_url_opts(&url, store_options())
                .map_err(|e| fail(format!("cannot open this store: {e}")))?;
            return Ok(Location {
                store: Arc::from(store),
                path,
                name: location.trim_end_matches('/').to_string(),
            });
        }
        // Resolve symlinks and `..` (object_store paths may not hold `..`).
        let absolute = match std::fs::canonicalize(location) {
            Ok(p) => p,
            Err(_) => lexically_absolute(location).map_err(|e| fail(e.to_string()))?,
        };
        let path = StorePath::from_absolute_path(&absolute).map_err(|e| fail(e.to_string()))?;
        Ok(Location {
            store: Arc::new(LocalFileSystem::new().with_automatic_cleanup(true)),
            path,
            name: location.trim_end_matches('/').to_string(),
        })
    }

    /// A path in a store the caller already has (a store built with
    /// credentials of its own, a test's wrapper, ...).
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        path: StorePath,
        name: impl Into<String>,
    ) -> Location {
        Location {
            store,
            path,
            name: name.into(),
        }
    }

    /// The location `part` below this one (`part` may hold `/`).
    pub fn join(&self, part: &str) -> Location {
        let mut path = self.path.clone();
        for piece in part.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(piece);
        }
        let name = if self.name.is_empty() {
            part.to_string()
        } else {
            format!("{}/{}", self.name, part.trim_matches('/'))
        };
        Location {
            store: self.store.clone(),
            path,
            name,
        }
    }

    /// The name errors use: the location as the user wrote it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &StorePath {
        &self.path
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

/// The options for object_store's builders: the environment's storage
/// variables, and plain HTTP allowed when the S3 endpoint is `http://` (a
/// local S3-compatible server).
fn store_options() -> Vec<(String, String)> {
    let mut options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
        .collect();
    let endpoint_is_http = options
        .iter()
        .any(|(k, v)| (k == "AWS_ENDPOINT" || k == "AWS_ENDPOINT_URL") && v.starts_with("http://"));
    if endpoint_is_http && !options.iter().any(|(k, _)| k == "AWS_ALLOW_HTTP") {
        options.push(("AWS_ALLOW_HTTP".into(), "true".into()));
    }
    options
}

/// This process's `memory://` store.
fn memory_store() -> Arc<dyn ObjectStore> {
    static STORE: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    STORE.get_or_init(|| Arc::new(InMemory::new())).clone()
}

/// `location` made absolute with `.` and `..` resolved by hand (for a path
/// that does not exist, so that reading it says "not found").
fn lexically_absolute(location: &str) -> std::io::Result<std::path::PathBuf> {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for part in std::path::absolute(location)?.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_paths_and_urls_open() {
        let dir = tempfile::tempdir().unwrap();
        let local = Location::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(
            local.join("a/b").path().as_ref(),
            format!("{}/a/b", local.path().as_ref())
        );
        assert!(local.join("a/b").name().ends_with("/a/b"));
        let s3 = Location::parse("s3://bucket/some/prefix/").unwrap();
        assert_eq!(s3.path().as_ref(), "some/prefix");
        assert_eq!(s3.join("x").name(), "s3://bucket/some/prefix/x");
    }

    #[test]
    fn memory_is_one_store_per_process() {
        let a = Location::parse("memory:///p").unwrap();
        let b = Location::parse("memory:///p").unwrap();
        assert!(Arc::ptr_eq(a.store(), b.store()));
    }

    #[test]
    fn bad_locations_are_named() {
        let err = Location::parse("s3://").unwrap_err();
        assert!(err.to_string().starts_with("s3://:"), "{err}");
        let err = Location::parse("ftp://host/x").unwrap_err();
        assert!(err.to_string().contains("ftp://host/x"), "{err}");
    }
}
