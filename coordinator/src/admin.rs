//! The admin socket: HTTP/1.1 + JSON on a local Unix socket, like Docker's.
//!
//! Handlers only parse HTTP into an [`ApiRequest`] and hand it to
//! [`Service::handle_api`]; they never touch Raft or state themselves. The
//! logs route streams instead, through [`Service::open_logs`].
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
//! | GET    | `/v1/workloads`               | `Workloads`                          |
//! | GET    | `/v1/workloads/{name}`        | `Workload`                           |
//! | DELETE | `/v1/workloads/{name}`        | `StopWorkload`                       |
//! | GET    | `/v1/allocs[?workload=NAME]`  | `Allocs`                             |
//! | GET    | `/v1/allocs/{id}/logs[?follow=true&tail=BYTES]` | the output as text, streamed ([`crate::alloc_logs`]) |
//! | PUT    | `/v1/nodes/{name}/drain`      | `DrainNode` (`{"drain":true}`)       |
//! | GET    | `/metrics`                    | Prometheus text                      |
//! | GET    | `/healthz`                    | `ok` while the process serves        |

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use gantry_common::api::{ApiError, ApiRequest, ApiResponse};
use gantry_common::wire::{LogsError, LogsRequest};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::service::Service;

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
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = router(AdminState { service, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
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
        .route("/v1/workloads/{name}", get(workload).delete(stop_workload))
        .route("/v1/allocs", get(allocs))
        .route("/v1/allocs/{id}/logs", get(alloc_logs))
        .route("/v1/nodes/{name}/drain", put(drain_node))
        .with_state(state)
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

async fn submit_workload(
    AxState(s): AxState<AdminState>,
    body: Result<Json<gantry_common::workload::WorkloadSpec>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(spec)) => run(&s, ApiRequest::SubmitWorkload { spec: Box::new(spec) }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("request body: {}", e.body_text())),
    }
}

async fn workloads(AxState(s): AxState<AdminState>) -> Response {
    run(&s, ApiRequest::Workloads).await
}

async fn workload(AxState(s): AxState<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    run(&s, ApiRequest::Workload { name }).await
}

async fn stop_workload(AxState(s): AxState<AdminState>, UrlPath(name): UrlPath<String>) -> Response {
    run(&s, ApiRequest::StopWorkload { name }).await
}

async fn allocs(AxState(s): AxState<AdminState>, Query(q): Query<AllocsQuery>) -> Response {
    run(&s, ApiRequest::Allocs { workload: q.workload }).await
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
    Query(q): Query<LogsQuery>,
) -> Response {
    let req = LogsRequest { alloc, follow: q.follow, tail: q.tail };
    match s.service.open_logs(req, true).await {
        Ok(output) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            axum::body::Body::from_stream(crate::alloc_logs::body_stream(output)),
        )
            .into_response(),
        Err(e @ LogsError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ LogsError::Unavailable(_)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e @ LogsError::Failed(_)) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

async fn drain_node(
    AxState(s): AxState<AdminState>,
    UrlPath(node): UrlPath<String>,
    body: Result<Json<DrainBody>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(b)) => run(&s, ApiRequest::DrainNode { node, drain: b.drain }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("request body: {}", e.body_text())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    #[serde(default)]
    local: bool,
}

async fn status(AxState(s): AxState<AdminState>, Query(q): Query<StatusQuery>) -> Response {
    run(&s, if q.local { ApiRequest::LocalStatus } else { ApiRequest::Status }).await
}

async fn nodes(AxState(s): AxState<AdminState>) -> Response {
    run(&s, ApiRequest::Nodes).await
}

async fn gpus(AxState(s): AxState<AdminState>) -> Response {
    run(&s, ApiRequest::Gpus).await
}

async fn set_labels(
    AxState(s): AxState<AdminState>,
    UrlPath(node): UrlPath<String>,
    body: Result<Json<LabelsBody>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(b)) => run(&s, ApiRequest::SetNodeLabels { node, set: b.set, remove: b.remove }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("request body: {}", e.body_text())),
    }
}

async fn add_member(
    AxState(s): AxState<AdminState>,
    body: Result<Json<MemberBody>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(b)) => run(&s, ApiRequest::AddMember { id: b.id, addr: b.addr }).await,
        Err(e) => error(StatusCode::BAD_REQUEST, format!("request body: {}", e.body_text())),
    }
}

async fn remove_member(AxState(s): AxState<AdminState>, UrlPath(id): UrlPath<String>) -> Response {
    match id.parse::<u64>() {
        Ok(id) => run(&s, ApiRequest::RemoveMember { id }).await,
        Err(_) => error(StatusCode::BAD_REQUEST, format!("id: {id:?} is not a number")),
    }
}

async fn metrics(AxState(s): AxState<AdminState>) -> Response {
    match s.metrics.render(&s.service).await {
        Ok(text) => {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                .into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")),
    }
}

async fn run(s: &AdminState, req: ApiRequest) -> Response {
    match s.service.handle_api(req).await {
        Ok(ApiResponse::Status(v)) => Json(v).into_response(),
        Ok(ApiResponse::Nodes(v)) => Json(v).into_response(),
        Ok(ApiResponse::Gpus(v)) => Json(v).into_response(),
        Ok(ApiResponse::Committed { log_index }) => {
            Json(serde_json::json!({ "log_index": log_index })).into_response()
        }
        Ok(ApiResponse::Submitted(v)) => Json(v).into_response(),
        Ok(ApiResponse::Workloads(v)) => Json(v).into_response(),
        Ok(ApiResponse::Workload(v)) => Json(v).into_response(),
        Ok(ApiResponse::Allocs(v)) => Json(v).into_response(),
        Err(e) if e.contains("does not exist") || e.contains("is not registered") => {
            error(StatusCode::NOT_FOUND, e)
        }
        Err(e) if e.starts_with("no leader") || e.starts_with("forwarding") => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(ApiError { error: message })).into_response()
}
