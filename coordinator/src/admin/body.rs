//! What the admin socket reads and how it says no: strict JSON bodies and
//! query strings (unknown fields refused by name, see
//! [`gantry_common::strict`]), bodies bounded (413 beyond), and every error,
//! a 404 or 405 included, as `{"error": "...", "field": "..."}`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gantry_common::api::ApiError;
use serde::de::DeserializeOwned;

/// Largest request body (a workload spec is at most 256 KiB encoded).
pub const MAX_BODY: usize = 1024 * 1024;
/// Time a client has to send a whole body once its headers arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// An error answer.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
    /// Extra headers (e.g. `gantry-outcome: unknown`).
    pub outcome_unknown: bool,
}

impl Failure {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Failure {
        Failure { status, error: error.into(), field: None, outcome_unknown: false }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError { error: self.error, field: self.field };
        let mut resp = (self.status, Json(body)).into_response();
        if self.outcome_unknown {
            resp.headers_mut().insert(OUTCOME_HEADER, HeaderValue::from_static("unknown"));
        }
        resp
    }
}

/// Set on a write whose outcome is unknown (retrying with the same
/// `Idempotency-Key` is safe).
pub const OUTCOME_HEADER: &str = "gantry-outcome";

/// A JSON body read strictly.
pub struct StrictJson<T, const LIMIT: usize = MAX_BODY>(pub T);

/// Most bytes of a batch of workloads (`POST /v1/workload-batches`).
pub const MAX_BATCH_BODY: usize = 32 * 1024 * 1024;

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S> for StrictJson<T, LIMIT> {
    type Rejection = Failure;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Failure> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim() == "application/json"));
        if !is_json {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request body: send it as content-type: application/json",
            ));
        }
        let bytes = read_body(req.into_body(), LIMIT).await?;
        gantry_common::strict::json(&bytes).map(StrictJson).map_err(|e| Failure {
            status: StatusCode::BAD_REQUEST,
            error: e.to_string(),
            field: Some(e.field),
            outcome_unknown: false,
        })
    }
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Failure> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            format!("request body: not received within {}s", BODY_TIMEOUT.as_secs()),
        )),
        Ok(Err(e)) if is_too_large(&e) => Err(Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: larger than {limit} bytes"),
        )),
        Ok(Err(e)) => Err(Failure::new(StatusCode::BAD_REQUEST, format!("request body: {e}"))),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

fn is_too_large(e: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A query string read strictly (`?follow=true&tail=100`).
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Failure> {
        // Query types refuse unknown parameters themselves (they are the
        // admin socket's own, never stored or sent on).
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query).map(StrictQuery).map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("query: {}", gantry_common::strict::words(&e.to_string())),
            )
        })
    }
}

/// The answer to a path no route has.
pub async fn not_found(uri: axum::http::Uri) -> Failure {
    Failure::new(StatusCode::NOT_FOUND, format!("no such route: {}", uri.path()))
}

/// The answer to a method a route does not take.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Failure {
    Failure::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}
