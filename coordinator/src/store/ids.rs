//! Readable, prefixed identifiers: `job-3f9a1c0b7e2d4a61`,
//! `wkr-0c4e…`, and tenant names such as `team-a`.
//!
//! Job and worker ids are made here from 8 random bytes; tenant ids are the
//! names a coordinator's config gives its tenants, checked because they
//! become part of storage paths (`{storage}/{tenant}/{job_id}/`).

use std::fmt;

use rand::Rng;

use super::StoreError;

/// `prefix-` followed by 16 lowercase hex digits of fresh randomness.
fn random_id(prefix: &str) -> String {
    format!("{prefix}-{}", random_hex(8))
}

/// `bytes` random bytes as hex digits.
pub(super) fn random_hex(bytes: usize) -> String {
    let bytes: Vec<u8> = (0..bytes).map(|_| rand::rng().random()).collect();
    hex::encode(bytes)
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id! {
    /// A job's id, `job-` and 16 hex digits, assigned at submit.
    JobId
}

string_id! {
    /// A worker's id, `wkr-` and 16 hex digits, assigned at registration.
    WorkerId
}

string_id! {
    /// A tenant's name: 1 to 63 of `a-z`, `0-9`, `-`, `_`, starting with a
    /// letter or digit.
    TenantId
}

impl JobId {
    pub fn generate() -> JobId {
        JobId(random_id("job"))
    }
}

impl WorkerId {
    pub fn generate() -> WorkerId {
        WorkerId(random_id("wkr"))
    }
}

/// Ids a client typed or a row held: kept as given. A wrong one is simply
/// not found.
impl From<&str> for JobId {
    fn from(text: &str) -> JobId {
        JobId(text.to_string())
    }
}

impl From<String> for JobId {
    fn from(text: String) -> JobId {
        JobId(text)
    }
}

impl From<&str> for WorkerId {
    fn from(text: &str) -> WorkerId {
        WorkerId(text.to_string())
    }
}

impl From<String> for WorkerId {
    fn from(text: String) -> WorkerId {
        WorkerId(text)
    }
}

impl TenantId {
    /// The longest tenant name.
    pub const MAX_LEN: usize = 63;

    /// Checks `name` against the tenant name rules.
    pub fn new(name: &str) -> Result<TenantId, StoreError> {
        let invalid = |reason| StoreError::InvalidValue {
            what: "tenant name",
            value: name.to_string(),
            reason,
        };
        if name.is_empty() || name.len() > TenantId::MAX_LEN {
            return Err(invalid("must be 1 to 63 characters long"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(invalid("may hold only a-z, 0-9, '-' and '_'"));
        }
        if name.starts_with(['-', '_']) {
            return Err(invalid("must start with a letter or a digit"));
        }
        Ok(TenantId(name.to_string()))
    }

    /// A name read back from the database, where only checked names go.
    pub(super) fn from_row(name: String) -> TenantId {
        TenantId(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_prefixed_hex_and_distinct() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert_ne!(a, b);
        let hex_part = a.as_str().strip_prefix("job-").unwrap();
        assert_eq!(hex_part.len(), 16);
        assert!(hex_part.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(WorkerId::generate().as_str().starts_with("wkr-"));
    }

    #[test]
    fn tenant_names_are_checked() {
        assert_eq!(TenantId::new("team-a_2").unwrap().as_str(), "team-a_2");
        for bad in ["", "Team", "a/b", "-a", "_a", "a b", &"x".repeat(64)] {
            let error = TenantId::new(bad).unwrap_err();
            assert!(
                error.to_string().starts_with("invalid tenant name"),
                "{error}"
            );
        }
    }
}
