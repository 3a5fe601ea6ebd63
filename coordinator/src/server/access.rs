//! Who may do what: the coordinator's config file (tenants, their token
//! hashes, storage prefixes and quotas; operators; the cluster token's
//! hash), the single-tenant development setup used when there is no
//! config, and the checks every call goes through (bearer token, version,
//! job ownership, storage prefixes).
//!
//! Three kinds of caller: a tenant (its own jobs, files and storage), an
//! operator (the fleet: draining and undraining workers) and a worker (the
//! cluster token; each registered worker then proves its id with the
//! session secret `server::workers` gives it).
//!
//! Only SHA-256 hashes of tokens are kept, in memory and in the store; a
//! token is compared by hashing it.
//!
//! Not here: the services themselves (`jobs`, `workers`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tonic::Status;

use crate::api;
use trainer::storage::ObjectAddress;

use super::catalogue::{Catalogue, ModelFile};
use crate::store::{TenantId, TokenHash};
use job::spec::{JobSpec, ModelSpec, PathOrUrl, Validation};

/// Why the config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read coordinator config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("coordinator config {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The coordinator config file (YAML):
///
/// ```yaml
/// cluster_token_sha256: 3f2a...   # workers' LORAFLEET_CLUSTER_TOKEN, hashed
/// operators:                      # optional: who may drain and undrain workers
///   ops:
///     token_sha256: 51d0...
/// tenants:
///   team-a:
///     token_sha256: 9b1c...       # sha256 of the tenant's token, hex
///     storage: [/data/team-a, s3://team-a/]
///     max_workers: 4              # optional quota on busy workers
/// models:                         # optional: the OpenAI API's base models
///   smollm2-135m:                 #   (see `catalogue`)
///     path: /models/SmolLM2-135M
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    cluster_token_sha256: String,
    #[serde(default)]
    operators: BTreeMap<String, OperatorFile>,
    tenants: BTreeMap<String, TenantFile>,
    #[serde(default)]
    models: BTreeMap<String, ModelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorFile {
    token_sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    token_sha256: String,
    #[serde(default)]
    storage: Vec<String>,
    #[serde(default)]
    max_workers: Option<u32>,
}

/// One tenant's rights.
#[derive(Clone, Debug)]
pub struct TenantPolicy {
    pub id: TenantId,
    pub token_hash: TokenHash,
    /// Folders and URL prefixes its specs may name; `None`: anything (the
    /// development tenant).
    pub storage: Option<Vec<String>>,
    /// Most workers its jobs may hold at once.
    pub max_workers: Option<u32>,
}

/// Every tenant, operator and the cluster token, as the server checks
/// them.
#[derive(Clone, Debug)]
pub struct Access {
    tenants: HashMap<TokenHash, TenantPolicy>,
    /// Operators by token hash, with their names.
    operators: HashMap<TokenHash, String>,
    cluster: TokenHash,
    /// The base models the OpenAI-compatible API offers.
    catalogue: Catalogue,
}

/// Who a fleet call (`Workers.List`, `Drain`, `Undrain`) comes from.
#[derive(Clone, Debug)]
pub enum FleetCaller {
    /// Sees every worker and may drain and undrain them.
    Operator(String),
    /// Sees every worker, but only its own jobs on them.
    Tenant(TenantPolicy),
    /// A worker agent (the cluster token): sees the fleet.
    Worker,
}

/// Tokens minted for a development setup, to print once.
#[derive(Clone, Debug)]
pub struct DevTokens {
    pub tenant: String,
    pub cluster: String,
}

impl Access {
    /// The development setup: one tenant, `default`, that may name any
    /// storage and is also the operator, with token `tenant`, and workers
    /// joining with `cluster`.
    pub fn development(tokens: &DevTokens) -> Access {
        let id = TenantId::new("default").expect("a valid tenant name");
        let policy = TenantPolicy {
            id,
            token_hash: TokenHash::of_token(&tokens.tenant),
            storage: None,
            max_workers: None,
        };
        Access {
            operators: HashMap::from([(policy.token_hash, "default".to_string())]),
            tenants: HashMap::from([(policy.token_hash, policy)]),
            cluster: TokenHash::of_token(&tokens.cluster),
            catalogue: Catalogue::presets(),
        }
    }

    /// Reads the config file at `path`.
    pub fn from_file(path: &Path) -> Result<Access, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: ConfigFile = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let hash = |what: &str, hex: &str| {
            TokenHash::from_hex(hex).map_err(|_| {
                invalid(format!(
                    "{what}: expected the 64 hex digits of a SHA-256 hash (never the token itself)"
                ))
            })
        };
        let cluster = hash("cluster_token_sha256", &file.cluster_token_sha256)?;
        let mut operators = HashMap::new();
        for (name, operator) in file.operators {
            let token_hash = hash(
                &format!("operators.{name}.token_sha256"),
                &operator.token_sha256,
            )?;
            if token_hash == cluster || operators.contains_key(&token_hash) {
                return Err(invalid(format!(
                    "operators.{name}.token_sha256: the same token is used twice; give every operator and the cluster its own"
                )));
            }
            operators.insert(token_hash, name);
        }
        let mut tenants = HashMap::new();
        for (name, tenant) in file.tenants {
            let id = TenantId::new(&name).map_err(|e| invalid(format!("tenants.{name}: {e}")))?;
            let token_hash = hash(
                &format!("tenants.{name}.token_sha256"),
                &tenant.token_sha256,
            )?;
            if token_hash == cluster
                || tenants.contains_key(&token_hash)
                || operators.contains_key(&token_hash)
            {
                return Err(invalid(format!(
                    "tenants.{name}.token_sha256: the same token is used twice; give every tenant, operator and the cluster its own"
                )));
            }
            let policy = TenantPolicy {
                id,
                token_hash,
                storage: Some(tenant.storage),
                max_workers: tenant.max_workers,
            };
            tenants.insert(token_hash, policy);
        }
        if tenants.is_empty() {
            return Err(invalid("tenants: at least one tenant is needed".into()));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let catalogue = Catalogue::from_entries(file.models, dir).map_err(invalid)?;
        Ok(Access {
            tenants,
            operators,
            cluster,
            catalogue,
        })
    }

    /// The base models the OpenAI-compatible API offers.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Every tenant.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantPolicy> {
        self.tenants.values()
    }

    /// The tenant policy of `id`, if configured.
    pub fn tenant(&self, id: &TenantId) -> Option<&TenantPolicy> {
        self.tenants.values().find(|t| &t.id == id)
    }

    /// The tenant a client call comes from, after checking its version.
    pub fn client<T>(&self, request: &tonic::Request<T>) -> Result<&TenantPolicy, Status> {
        check_version(request)?;
        let token = bearer_token(request)?;
        self.tenant_of_token(token)
            .ok_or_else(|| refused("the token is not valid for this coordinator"))
    }

    /// The tenant whose token is `token`, if any (HTTP calls, which carry
    /// no lorafleet version).
    pub fn tenant_of_token(&self, token: &str) -> Option<&TenantPolicy> {
        self.tenants.get(&TokenHash::of_token(token))
    }

    /// Checks that a call comes from a worker (the cluster token).
    pub fn worker<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        check_version(request)?;
        let token = bearer_token(request)?;
        if TokenHash::of_token(token) == self.cluster {
            Ok(())
        } else {
            Err(refused(
                "the cluster token is not valid for this coordinator (check LORAFLEET_CLUSTER_TOKEN)",
            ))
        }
    }

    /// Who a fleet call comes from: an operator, a tenant or a worker.
    /// A token that is both a tenant's and the operator's (the development
    /// setup) counts as the operator.
    pub fn fleet<T>(&self, request: &tonic::Request<T>) -> Result<FleetCaller, Status> {
        check_version(request)?;
        let hash = TokenHash::of_token(bearer_token(request)?);
        if let Some(name) = self.operators.get(&hash) {
            return Ok(FleetCaller::Operator(name.clone()));
        }
        if let Some(tenant) = self.tenants.get(&hash) {
            return Ok(FleetCaller::Tenant(tenant.clone()));
        }
        if hash == self.cluster {
            return Ok(FleetCaller::Worker);
        }
        Err(refused("the token is not valid for this coordinator"))
    }

    /// Checks that a call comes from an operator: draining and undraining
    /// workers stop other tenants' jobs, so tenants may not.
    pub fn operator<T>(&self, request: &tonic::Request<T>) -> Result<String, Status> {
        match self.fleet(request)? {
            FleetCaller::Operator(name) => Ok(name),
            FleetCaller::Tenant(tenant) => Err(Status::permission_denied(format!(
                "tenant {} may not drain or undrain workers: that is an operator's call (an `operators` entry in the coordinator's config)",
                tenant.id
            ))),
            FleetCaller::Worker => Err(Status::permission_denied(
                "the cluster token may not drain or undrain workers: use an operator's token",
            )),
        }
    }
}

fn refused(message: &str) -> Status {
    tracing::warn!("refused a call: {message}");
    Status::unauthenticated(message)
}

fn bearer_token<T>(request: &tonic::Request<T>) -> Result<&str, Status> {
    api::token_of(request).ok_or_else(|| {
        refused(
            "no `authorization: Bearer <token>` on the call: set LORAFLEET_TOKEN or pass --token",
        )
    })
}

/// Refuses a sender of another lorafleet version, naming both.
fn check_version<T>(request: &tonic::Request<T>) -> Result<(), Status> {
    let ours = crate::PROTOCOL_VERSION;
    match api::version_of(request) {
        Some(theirs) if theirs == ours => Ok(()),
        Some(theirs) => Err(Status::failed_precondition(format!(
            "this is lorafleet {theirs} but the coordinator runs lorafleet {ours}: use the same release on both"
        ))),
        None => Err(Status::failed_precondition(format!(
            "the call does not say its lorafleet version; the coordinator runs lorafleet {ours}"
        ))),
    }
}

impl TenantPolicy {
    /// Checks that every place `spec` reads or writes is under this
    /// tenant's storage prefixes (or in `uploads`, its own upload folder).
    /// Returns every violation, one per line.
    pub fn check_storage(&self, spec: &JobSpec, uploads: &Path) -> Result<(), String> {
        let Some(allowed) = &self.storage else {
            return Ok(());
        };
        let mut named: Vec<(&str, &PathOrUrl)> = vec![("dataset.train", &spec.dataset.train)];
        if let Some(Validation::Data(v)) = &spec.dataset.validation {
            named.push(("dataset.validation", v));
        }
        if let ModelSpec::Path(p) = &spec.model {
            named.push(("model.path", p));
        }
        if let Some(init) = &spec.lora.init_adapter {
            named.push(("lora.init_adapter", init));
        }
        named.push(("checkpoint.storage", &spec.checkpoint.storage));
        let uploads = uploads.to_string_lossy();
        let problems: Vec<String> = named
            .into_iter()
            .filter(|(_, place)| {
                let place = place.to_string();
                !under(&place, &uploads) && !allowed.iter().any(|prefix| under(&place, prefix))
            })
            .map(|(key, place)| {
                format!(
                    "{key}: {place} is outside the storage tenant {} may use ({})",
                    self.id,
                    if allowed.is_empty() {
                        "none configured".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// Whether `place` is `prefix` or below it, compared as the addresses
/// both name once decoded and normalised (`trainer::storage::ObjectAddress`,
/// the same parse that opens them): whole path components, symlinks
/// resolved, the same store. A place that does not parse is not under
/// anything.
fn under(place: &str, prefix: &str) -> bool {
    match (ObjectAddress::parse(place), ObjectAddress::parse(prefix)) {
        (Ok(place), Ok(prefix)) => place.is_within(&prefix),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_components_and_buckets() {
        assert!(under("/data/a/x.jsonl", "/data/a"));
        assert!(under("file:///data/a/x.jsonl", "/data/a"));
        assert!(!under("/data/ab/x.jsonl", "/data/a"));
        assert!(!under("/data/a/../b/x.jsonl", "/data/a"));
        assert!(!under("file:///data/a/%2e%2e/b/x.jsonl", "file:///data/a"));
        assert!(!under("file:///data/a/.%2E/b/x.jsonl", "/data/a"));
        assert!(under("s3://team-a/runs", "s3://team-a/"));
        assert!(!under("s3://team-ab/runs", "s3://team-a"));
        assert!(!under("s3://team-a/../team-b", "s3://team-a/team-a"));
        assert!(!under("s3://team-a/x/%2e%2e/y", "s3://team-a/x"));
        assert!(!under("/s3/x", "s3://team-a"));
        assert!(!under("ftp://x/y", "ftp://x"));
    }

    #[test]
    fn config_keeps_hashes_and_refuses_plain_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        let a = TokenHash::of_token("token-a").to_hex();
        let cluster = TokenHash::of_token("cluster").to_hex();
        std::fs::write(
            &file,
            format!("cluster_token_sha256: {cluster}\ntenants:\n  team-a:\n    token_sha256: {a}\n    storage: [/data/a]\n"),
        )
        .unwrap();
        let access = Access::from_file(&file).unwrap();
        let tenant = access.tenants().next().unwrap();
        assert_eq!(tenant.id.as_str(), "team-a");
        assert_eq!(
            tenant.storage.as_deref(),
            Some(&["/data/a".to_string()][..])
        );

        std::fs::write(
            &file,
            format!(
                "cluster_token_sha256: {cluster}\ntenants:\n  team-a:\n    token_sha256: token-a\n"
            ),
        )
        .unwrap();
        let err = Access::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("tenants.team-a.token_sha256"), "{err}");
    }
}
