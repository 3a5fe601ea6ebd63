//! Who an HTTP call comes from: the tenant whose token is in
//! `Authorization: Bearer TOKEN` (the same tokens as over gRPC), and the
//! bridge that lets a handler call the `Jobs` service as that tenant.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::api;

use super::super::Coordinator;
use super::super::access::TenantPolicy;
use super::ApiError;

/// An authenticated tenant's call.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub tenant: TenantPolicy,
    /// The bearer token, to call the gRPC service as this tenant.
    token: String,
}

impl Caller {
    /// `message` as a call of this tenant to the `Jobs` service.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        grpc_request(&self.token, message)
    }
}

/// `message` as a gRPC request carrying `token` and this build's version,
/// to call a service method in the same process.
pub(crate) fn grpc_request<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(api::bearer(token)) {
        metadata.insert(api::AUTHORIZATION, value);
    }
    metadata.insert(
        api::VERSION_HEADER,
        MetadataValue::from_static(crate::PROTOCOL_VERSION),
    );
    tonic::Request::from_parts(metadata, Default::default(), message)
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub(crate) fn bearer_of(headers: &HeaderMap) -> Option<&str> {
    api::token_in(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

impl FromRequestParts<Coordinator> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        coordinator: &Coordinator,
    ) -> Result<Caller, ApiError> {
        let unauthenticated = |message: &str| ApiError {
            status: axum::http::StatusCode::UNAUTHORIZED,
            message: message.to_string(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key".into()),
        };
        let token = bearer_of(&parts.headers).ok_or_else(|| {
            unauthenticated("no `Authorization: Bearer <token>` header: send a tenant's token")
        })?;
        let tenant = coordinator
            .config()
            .access
            .tenant_of_token(token)
            .ok_or_else(|| unauthenticated("the token is not valid for this coordinator"))?;
        Ok(Caller {
            tenant: tenant.clone(),
            token: token.to_string(),
        })
    }
}
