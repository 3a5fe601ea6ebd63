//! Where bytes live: a local path or an object storage URL, opened as an
//! `object_store` store and a path inside it.
//!
//! Owns: parsing a location (`/a/path`, `relative/path`, `file://`,
//! `memory://`, `s3://`, `gs://`, `az://`) into the [`ObjectAddress`] it
//! names (decoded and normalised: the one form authorisation checks) and
//! opening that address as a [`Location`], with credentials and endpoints
//! from the usual environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ...). Not here: who may name what (the
//! coordinator's `server::access` compares addresses), what is stored
//! (datasets are read by `data`, checkpoints written by `checkpoint`).
//!
//! `memory://` is one store per process, so what one part of a program
//! writes there another can read (tests use it).

use std::path::{Component, Path, PathBuf};
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

/// What a location names, decoded and normalised: a local path with its
/// symlinks resolved, or a store and the object path inside it. Both the
/// coordinator's storage check and [`Location::parse`] go through
/// [`ObjectAddress::parse`], so what is authorised is exactly what is
/// opened: `file:///data/b/%2e%2e/a`, `/data/b/../a` and a symlink
/// `/data/b/link -> /data/a` all name `/data/a`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectAddress {
    /// A local file or folder: absolute, every `.`/`..` gone, symlinks in
    /// the part that exists resolved.
    Local(PathBuf),
    /// An object in a store other than the local disk.
    Remote {
        /// The store: `scheme://host[:port]`, plus the bucket or container
        /// when the URL carries it in its path.
        store: String,
        /// The object path in that store, percent-decoded.
        path: StorePath,
        /// The URL as normalised by the URL parser, which opens the store.
        url: url::Url,
    },
}

impl ObjectAddress {
    /// The address `location` names: a URL with a scheme (`file://` URLs
    /// become local paths) or a local path, relative to the working
    /// directory. Errors name `location` as given.
    pub fn parse(location: &str) -> Result<ObjectAddress, StorageError> {
        let fail = |message: String| StorageError {
            location: location.to_string(),
            message,
        };
        if !location.contains("://") {
            return resolve_local(Path::new(location))
                .map(ObjectAddress::Local)
                .map_err(|e| fail(e.to_string()));
        }
        // The URL parser removes `.` and `..` segments, `%2e%2e` included,
        // before anything reads the path.
        let url = url::Url::parse(location).map_err(|e| fail(format!("not a valid URL: {e}")))?;
        let (scheme, path) =
            ObjectStoreScheme::parse(&url).map_err(|e| fail(format!("not a storage URL: {e}")))?;
        if scheme == ObjectStoreScheme::Local {
            let file = url
                .to_file_path()
                .map_err(|()| fail("not a local file URL".into()))?;
            return resolve_local(&file)
                .map(ObjectAddress::Local)
                .map_err(|e| fail(e.to_string()));
        }
        let mut store = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        if let Some(port) = url.port() {
            store.push_str(&format!(":{port}"));
        }
        // Path-style URLs (`https://host/bucket/key`): the segments before
        // the object path name the bucket.
        let segments: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let bucket_segments = segments.len().saturating_sub(path.parts().count());
        for segment in &segments[..bucket_segments] {
            store.push('/');
            store.push_str(segment);
        }
        Ok(ObjectAddress::Remote { store, path, url })
    }

    /// Whether this address is `prefix` or below it: the same store and
    /// whole path components.
    pub fn is_within(&self, prefix: &ObjectAddress) -> bool {
        match (self, prefix) {
            (ObjectAddress::Local(path), ObjectAddress::Local(prefix)) => path.starts_with(prefix),
            (
                ObjectAddress::Remote { store, path, .. },
                ObjectAddress::Remote {
                    store: prefix_store,
                    path: prefix_path,
                    ..
                },
            ) => store == prefix_store && path.prefix_match(prefix_path).is_some(),
            _ => false,
        }
    }
}

impl std::fmt::Display for ObjectAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectAddress::Local(path) => write!(f, "{}", path.display()),
            ObjectAddress::Remote { store, path, .. } => write!(f, "{store}/{path}"),
        }
    }
}

impl Location {
    /// A local path (relative to the working directory) or a URL with a
    /// scheme, opened at its [`ObjectAddress`]. Errors name `location` as
    /// given.
    pub fn parse(location: &str) -> Result<Location, StorageError> {
        let fail = |message: String| StorageError {
            location: location.to_string(),
            message,
        };
        let name = location.trim_end_matches('/').to_string();
        match ObjectAddress::parse(location)? {
            ObjectAddress::Local(absolute) => {
                let path =
                    StorePath::from_absolute_path(&absolute).map_err(|e| fail(e.to_string()))?;
                Ok(Location {
                    store: Arc::new(LocalFileSystem::new().with_automatic_cleanup(true)),
                    path,
                    name,
                })
            }
            ObjectAddress::Remote { path, url, .. } => {
                let store = if url.scheme() == "memory" {
                    memory_store()
                } else {
                    let (store, _) = object_store::parse_url_opts(&url, store_options())
                        .map_err(|e| fail(format!("cannot open this store: {e}")))?;
                    Arc::from(store)
                };
                Ok(Location { store, path, name })
            }
        }
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

/// `path` made absolute: the longest part of it that exists with its
/// symlinks and `..` resolved by the operating system, the rest (which
/// does not exist, so holds no symlink) with `.` and `..` resolved by hand.
/// A path that does not exist still resolves, so that reading it says
/// "not found".
fn resolve_local(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    for existing in absolute.ancestors() {
        let Ok(mut resolved) = std::fs::canonicalize(existing) else {
            continue;
        };
        let rest = absolute
            .strip_prefix(existing)
            .expect("an ancestor is a prefix");
        for part in rest.components() {
            match part {
                Component::CurDir => {}
                Component::ParentDir => {
                    resolved.pop();
                }
                other => resolved.push(other),
            }
        }
        return Ok(resolved);
    }
    Err(std::io::Error::other("no part of this path exists"))
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
    fn encoded_dot_segments_are_resolved_before_any_check() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        let b = ObjectAddress::parse(root.join("b").to_str().unwrap()).unwrap();
        let a_file = ObjectAddress::Local(root.join("a/x.jsonl"));
        let root = root.display();
        for escape in [
            format!("file://{root}/b/%2e%2e/a/x.jsonl"),
            format!("file://{root}/b/.%2E/a/x.jsonl"),
            format!("file://{root}/b/%2E%2e/a/x.jsonl"),
            format!("{root}/b/../a/x.jsonl"),
            format!("{root}/b/./../a/x.jsonl"),
        ] {
            let address = ObjectAddress::parse(&escape).unwrap();
            assert_eq!(address, a_file, "{escape}");
            assert!(!address.is_within(&b), "{escape}");
            // What is opened is what was checked.
            let opened = Location::parse(&escape).unwrap();
            assert_eq!(
                opened.path(),
                &StorePath::from_absolute_path(format!("{root}/a/x.jsonl")).unwrap()
            );
        }
        let inside = ObjectAddress::parse(&format!("file://{root}/b/x%20y.jsonl")).unwrap();
        assert!(inside.is_within(&b));
    }

    #[test]
    fn symlinks_are_resolved_before_any_check() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("b/link")).unwrap();
        let b = ObjectAddress::parse(root.join("b").to_str().unwrap()).unwrap();
        for through_link in [
            root.join("b/link/x.jsonl"),
            root.join("b/link/new/folder"),
            root.join("b/link"),
        ] {
            let address = ObjectAddress::parse(through_link.to_str().unwrap()).unwrap();
            assert!(!address.is_within(&b), "{}", through_link.display());
            let url = format!("file://{}", through_link.display());
            assert!(!ObjectAddress::parse(&url).unwrap().is_within(&b), "{url}");
        }
        let plain = ObjectAddress::parse(root.join("b/new/x").to_str().unwrap()).unwrap();
        assert!(plain.is_within(&b));
    }

    #[test]
    fn object_store_prefixes_compare_decoded_components_and_stores() {
        let address = |s: &str| ObjectAddress::parse(s).unwrap();
        let prefix = address("s3://team-b/runs/");
        assert!(address("s3://team-b/runs/job/x").is_within(&prefix));
        assert!(address("s3://team-b/runs").is_within(&prefix));
        for outside in [
            "s3://team-b/runs/%2e%2e/secret",
            "s3://team-b/runs/.%2E/secret",
            "s3://team-b/runs/../secret",
            "s3://team-b/runsx/a",
            "s3://team-a/runs/a",
            "gs://team-b/runs/a",
            "s3://team-b:9000/runs/a",
        ] {
            assert!(!address(outside).is_within(&prefix), "{outside}");
        }
        // A decoded `..` is refused, not followed.
        assert!(ObjectAddress::parse("s3://team-b/runs/a%2F..%2F..%2Fb").is_err());
        assert!(!ObjectAddress::Local("/runs".into()).is_within(&prefix));
        assert!(address("az://container/p/q").is_within(&address("az://container/p")));
    }

    #[test]
    fn bad_locations_are_named() {
        let err = Location::parse("s3://").unwrap_err();
        assert!(err.to_string().starts_with("s3://:"), "{err}");
        let err = Location::parse("ftp://host/x").unwrap_err();
        assert!(err.to_string().contains("ftp://host/x"), "{err}");
    }
}
