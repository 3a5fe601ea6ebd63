//! Tenants and their bearer tokens.
//!
//! A token is 256 random bits ([`new_token`]); the store keeps only its
//! SHA-256 ([`TokenHash`]), and finds the tenant a request belongs to by
//! hashing the token it presents ([`Store::tenant_by_token`]). A stolen
//! database therefore gives no usable token. What a tenant may do (its
//! storage prefixes, its quota) comes from the coordinator's config, not
//! from here.

use rand::Rng;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{DbRow, Store, StoreError, TenantId, unix_now};

/// The prefix of every token [`new_token`] makes, so a leaked one is easy to
/// recognise in logs and secret scanners.
const TOKEN_PREFIX: &str = "lft_";

/// A fresh bearer token: `lft_` and 64 hex digits (256 random bits).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The SHA-256 of a bearer token: what the store and config files keep.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// The hash of a presented token, exactly as given (no trimming).
    pub fn of_token(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// A hash written as 64 hex digits, as in a config file.
    pub fn from_hex(text: &str) -> Result<TokenHash, StoreError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| StoreError::InvalidValue {
            what: "token hash",
            value: text.to_string(),
            reason: "expected the SHA-256 of the token as 64 hex digits",
        })?;
        Ok(TokenHash(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Shows only a prefix: enough to tell hashes apart in logs.
impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// A tenant as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub token_hash: TokenHash,
    pub created_at: i64,
}

impl Store {
    /// Creates tenant `id` with the given token hash, or replaces the hash
    /// of an existing one (a config reload rotates tokens this way).
    pub async fn put_tenant(
        &self,
        id: &TenantId,
        token_hash: &TokenHash,
    ) -> Result<Tenant, StoreError> {
        sqlx::query(
            "INSERT INTO tenants (id, token_sha256, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET token_sha256 = excluded.token_sha256",
        )
        .bind(id.as_str())
        .bind(token_hash.to_hex())
        .bind(unix_now())
        .execute(&self.pool)
        .await?;
        self.get_tenant(id).await
    }

    pub async fn get_tenant(&self, id: &TenantId) -> Result<Tenant, StoreError> {
        let row = sqlx::query("SELECT id, token_sha256, created_at FROM tenants WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::TenantNotFound(id.clone()))?;
        tenant_from_row(&row)
    }

    /// The tenant whose token is `token`, or `None` for an unknown token.
    /// Only the token's hash is sent to the database.
    pub async fn tenant_by_token(&self, token: &str) -> Result<Option<Tenant>, StoreError> {
        let hash = TokenHash::of_token(token);
        let row =
            sqlx::query("SELECT id, token_sha256, created_at FROM tenants WHERE token_sha256 = $1")
                .bind(hash.to_hex())
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    /// Every tenant, by name.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let rows = sqlx::query("SELECT id, token_sha256, created_at FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant_from_row).collect()
    }
}

fn tenant_from_row(row: &DbRow) -> Result<Tenant, StoreError> {
    let hash: String = row.try_get("token_sha256")?;
    Ok(Tenant {
        id: TenantId::from_row(row.try_get("id")?),
        token_hash: TokenHash::from_hex(&hash).map_err(|_| StoreError::Corrupt {
            what: "token hash",
            value: hash,
        })?,
        created_at: row.try_get("created_at")?,
    })
}
