//! The admin socket: HTTP/1.1 + JSON on a local Unix socket, like Docker's.
//!
//! Handlers only parse HTTP into an [`ApiRequest`] and hand it to
//! [`Service::handle_api`]; they never touch Raft or state themselves. The
//! logs route streams instead, through [`Service::open_logs`].
//!
//! - Bodies and queries are read strictly ([`body`]): unknown fields are
//!   refused by name, a body over 1 MiB gets 413, and every error — 404 and
//!   405 included — is `{"error": "...", "field": "..."}`. Failures map to
//!   statuses by kind in [`status_of`] (one table, tested).
//! - Writes take an `Idempotency-Key` header (gantryctl sends one); a write
//!   whose outcome is unknown answers 503 with `gantry-outcome: unknown`.
//! - A read answered without a leader carries `gantry-stale` (JSON
//!   [`gantry_common::api::Staleness`]).
//! - Connections are limited and time out ([`server`]).
//!
//! | method | path                          | request                              |
//! |--------|-------------------------------|--------------------------------------|
//! | GET    | `/v1/status[?local=true]`     | `Status` / `LocalStatus`             |
//! | GET    | `/v1/nodes`                   | `Nodes`                              |
//! | GET    | `/v1/gpus`                    | `Gpus`                               |
//! | PUT    | `/v1/nodes/{name}/labels`     | `SetNodeLabels` (`{"set":{},"remove":[]}`) |
//! | POST   | `/v1/cluster/members`         | `AddMember` (`{"id":4,"addr":"…"}`)  |
//! | DELETE | `/v1/cluster/members/{id}`    | `RemoveMember`                       |
//! | POST   | `/v1/workloads`               | `SubmitWorkload` (a `WorkloadSpec`)  |
//! | POST   | `/v1/workload-batches`         | `SubmitWorkloads` (`{"specs":[…]}`, up to 32 MiB) |
//! | GET    | `/v1/workloads`               | `Workloads`                          |
//! | GET    | `/v1/workloads/{name}`        | `Workload`                           |
//! | DELETE | `/v1/workloads/{name}`        | `StopWorkload`                       |
//! | GET    | `/v1/allocs[?workload=NAME]`  | `Allocs`                             |
//! | GET    | `/v1/allocs/{id}/logs[?follow=true&tail=BYTES]` | the output as text, streamed ([`crate::alloc_logs`]) |
//! | PUT    | `/v1/nodes/{name}/drain`      | `DrainNode` (`{"drain":true}`)       |
//! | GET    | `/metrics`                    | Prometheus text 0.0.4, or OpenMetrics when `Accept` asks for it |
//! | GET    | `/healthz`                    | `ok` while the process serves        |

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use gantry_common::api::{
    ApiFailure, ApiRequest, ApiResponse, FailureKind, IDEMPOTENCY_HEADER, STALE_HEADER,
};
use gantry_common::http_server;
use gantry_common::wire::{LogsError, LogsRequest};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::metrics::instruments::{observe, AdminRequestLabels};
use crate::metrics::Metrics;
use crate::service::Service;

pub mod body;

use body::{Failure, StrictJson, StrictQuery};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {reason}")]
    Bind { path: String, reason: String },
}

#[derive(Clone)]
struct AdminState {
    service: Service,
    metrics: Metrics,
}

/// Binds the admin socket: removes a stale socket file, refuses to steal a
/// live one, and sets mode 0660 (group `gantry` when that group exists).
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let err = |reason: String| AdminError::Bind { path: path.display().to_string(), reason };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another process is already serving on it".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| err(e.to_string()))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name("gantry") {
        // Best effort: only root (or a member of the group) may change it.
        let _ = nix::unistd::chown(path, None, Some(group.gid));
    }
    Ok(listener)
}

/// Serves the admin API until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    service: Service,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(AdminState { service, metrics });
    http_server::serve(
        listener,
        app,
        http_server::Limits { name: "admin socket", ..http_server::Limits::default() },
        shutdown,
    )
    .await
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/nodes", get(nodes))
        .route("/v1/gpus", get(gpus))
        .route("/v1/nodes/{name}/labels", put(set_labels))
        .route("/v1/cluster/members", post(add_member))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .route("/v1/workloads", post(submit_workload).get(workloads))
        .route("/v1/workload-batches", post(submit_workloads))
        .route("/v1/workloads/{name}", get(workload).delete(stop_workload))
        .route("/v1/allocs", get(allocs))
        .route("/v1/allocs/{id}/logs", get(alloc_logs))
        .route("/v1/nodes/{name}/drain", put(drain_node))
        .fallback(body::not_found)
        .method_not_allowed_fallback(body::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), record_request))
        .with_state(state)
}

/// Times every request into `gantry_admin_request_duration_seconds`, by
/// method, the route it matched (its pattern, or `unmatched`) and status.
async fn record_request(
    AxState(s): AxState<AdminState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = match req.method().as_str() {
        m @ ("GET" | "PUT" | "POST" | "DELETE" | "HEAD" | "PATCH" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    let labels = AdminRequestLabels { method, route, status: response.status().as_u16() };
    observe(&s.service.instruments.admin_requests.get_or_create(&labels), started.elapsed());
    response
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsBody {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    id: u64,
    addr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    drain: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocsQuery {
    workload: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoQuery {}

async fn submit_workload(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    body: Result<StrictJson<gantry_common::workload::WorkloadSpec>, Failure>,
) -> Response {
    match body {
        Ok(StrictJson(spec)) => run(&s, &headers, ApiRequest::SubmitWorkload { spec: Box::new(spec) }).await,
        Err(f) => f.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    specs: Vec<gantry_common::workload::WorkloadSpec>,
}

async fn submit_workloads(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    body: Result<StrictJson<BatchBody, { body::MAX_BATCH_BODY }>, Failure>,
) -> Response {
    match body {
        Ok(StrictJson(BatchBody { specs })) => run(&s, &headers, ApiRequest::SubmitWorkloads { specs }).await,
        Err(f) => f.into_response(),
    }
}

async fn workloads(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    q: Result<StrictQuery<NoQuery>, Failure>,
) -> Response {
    if let Err(f) = q {
        return f.into_response();
    }
    run(&s, &headers, ApiRequest::Workloads).await
}

async fn workload(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    run(&s, &headers, ApiRequest::Workload { name }).await
}

async fn stop_workload(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> Response {
    run(&s, &headers, ApiRequest::StopWorkload { name }).await
}

async fn allocs(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    q: Result<StrictQuery<AllocsQuery>, Failure>,
) -> Response {
    match q {
        Ok(StrictQuery(q)) => run(&s, &headers, ApiRequest::Allocs { workload: q.workload }).await,
        Err(f) => f.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    tail: Option<u64>,
}

async fn alloc_logs(
    AxState(s): AxState<AdminState>,
    UrlPath(alloc): UrlPath<String>,
    q: Result<StrictQuery<LogsQuery>, Failure>,
) -> Response {
    let q = match q {
        Ok(StrictQuery(q)) => q,
        Err(f) => return f.into_response(),
    };
    let req = LogsRequest { alloc, follow: q.follow, tail: q.tail };
    match s.service.open_logs(req, true).await {
        Ok(output) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            axum::body::Body::from_stream(crate::alloc_logs::body_stream(output)),
        )
            .into_response(),
        Err(e @ LogsError::NotFound(_)) => Failure::new(StatusCode::NOT_FOUND, e.to_string()).into_response(),
        Err(e @ LogsError::Unavailable(_)) => {
            Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
        Err(e @ LogsError::Failed(_)) => Failure::new(StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn drain_node(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    UrlPath(node): UrlPath<String>,
    body: Result<StrictJson<DrainBody>, Failure>,
) -> Response {
    match body {
        Ok(StrictJson(b)) => run(&s, &headers, ApiRequest::DrainNode { node, drain: b.drain }).await,
        Err(f) => f.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    #[serde(default)]
    local: bool,
}

async fn status(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    q: Result<StrictQuery<StatusQuery>, Failure>,
) -> Response {
    match q {
        Ok(StrictQuery(q)) => {
            run(&s, &headers, if q.local { ApiRequest::LocalStatus } else { ApiRequest::Status }).await
        }
        Err(f) => f.into_response(),
    }
}

async fn nodes(AxState(s): AxState<AdminState>, headers: HeaderMap) -> Response {
    run(&s, &headers, ApiRequest::Nodes).await
}

async fn gpus(AxState(s): AxState<AdminState>, headers: HeaderMap) -> Response {
    run(&s, &headers, ApiRequest::Gpus).await
}

async fn set_labels(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    UrlPath(node): UrlPath<String>,
    body: Result<StrictJson<LabelsBody>, Failure>,
) -> Response {
    match body {
        Ok(StrictJson(b)) => {
            run(&s, &headers, ApiRequest::SetNodeLabels { node, set: b.set, remove: b.remove }).await
        }
        Err(f) => f.into_response(),
    }
}

async fn add_member(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    body: Result<StrictJson<MemberBody>, Failure>,
) -> Response {
    match body {
        Ok(StrictJson(b)) => run(&s, &headers, ApiRequest::AddMember { id: b.id, addr: b.addr }).await,
        Err(f) => f.into_response(),
    }
}

async fn remove_member(
    AxState(s): AxState<AdminState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    match id.parse::<u64>() {
        Ok(id) => run(&s, &headers, ApiRequest::RemoveMember { id }).await,
        Err(_) => Failure {
            field: Some("id".into()),
            ..Failure::new(StatusCode::BAD_REQUEST, format!("id: {id:?} is not a number"))
        }
        .into_response(),
    }
}

async fn metrics(AxState(s): AxState<AdminState>, headers: axum::http::HeaderMap) -> Response {
    match s.metrics.render(&s.service).await {
        Ok(text) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (kind, body) = gantry_common::exposition::negotiate(accept, text);
            ([(header::CONTENT_TYPE, kind)], body).into_response()
        }
        Err(e) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")).into_response(),
    }
}

/// The HTTP status of each kind of failure.
pub fn status_of(kind: FailureKind) -> StatusCode {
    match kind {
        FailureKind::Invalid => StatusCode::BAD_REQUEST,
        FailureKind::NotFound => StatusCode::NOT_FOUND,
        FailureKind::Conflict => StatusCode::CONFLICT,
        FailureKind::Unavailable | FailureKind::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
        FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn run(s: &AdminState, headers: &HeaderMap, req: ApiRequest) -> Response {
    let key = match headers.get(IDEMPOTENCY_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) => Some(k.to_string()),
        Some(Err(_)) => {
            return failure(ApiFailure::invalid(format!("{IDEMPOTENCY_HEADER}: not ASCII")));
        }
    };
    let answer = match s.service.handle_api(req, key).await {
        Ok(a) => a,
        Err(f) => return failure(f),
    };
    let mut resp = match answer.response {
        ApiResponse::Status(v) => Json(v).into_response(),
        ApiResponse::Nodes(v) => Json(v).into_response(),
        ApiResponse::Gpus(v) => Json(v).into_response(),
        ApiResponse::Committed { log_index } => {
            Json(serde_json::json!({ "log_index": log_index })).into_response()
        }
        ApiResponse::Submitted(v) => Json(v).into_response(),
        ApiResponse::SubmittedBatch(v) => Json(v).into_response(),
        ApiResponse::Workloads(v) => Json(v).into_response(),
        ApiResponse::Workload(v) => Json(v).into_response(),
        ApiResponse::Allocs(v) => Json(v).into_response(),
    };
    if let Some(stale) = answer.stale {
        if let Ok(Ok(v)) = serde_json::to_string(&stale).map(HeaderValue::try_from) {
            resp.headers_mut().insert(STALE_HEADER, v);
        }
    }
    resp
}

fn failure(f: ApiFailure) -> Response {
    Failure {
        status: status_of(f.kind),
        outcome_unknown: f.kind == FailureKind::OutcomeUnknown,
        error: f.message,
        field: f.field,
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_kind_has_its_status() {
        let table = [
            (FailureKind::Invalid, 400),
            (FailureKind::NotFound, 404),
            (FailureKind::Conflict, 409),
            (FailureKind::Unavailable, 503),
            (FailureKind::OutcomeUnknown, 503),
            (FailureKind::Internal, 500),
        ];
        for (kind, code) in table {
            assert_eq!(status_of(kind).as_u16(), code, "{kind:?}");
        }
    }

    #[test]
    fn each_kind_of_refusal_has_its_status() {
        use crate::state::RejectKind;
        let table = [(RejectKind::Invalid, 400), (RejectKind::NotFound, 404), (RejectKind::Conflict, 409)];
        for (kind, code) in table {
            assert_eq!(status_of(crate::service::api::failure_kind(kind)).as_u16(), code, "{kind:?}");
        }
    }
}
