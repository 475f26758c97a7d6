//! `/api/v1/deployments/{id}/logs`: the stored log as JSON pages, and the live SSE
//! stream. Same ownership checks as every other route: another user's deployment is 404.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::deployments::find_deployment;
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::CurrentUser;
use crate::app::AppState;
use crate::db::DeploymentStatus;
use crate::logs::history::lines_after;
use crate::logs::{LogLine, stream};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_logs))
        .routes(routes!(stream_logs))
}

const DEFAULT_LIMIT: u64 = 1000;
const MAX_LIMIT: u64 = 10_000;

#[derive(Deserialize, IntoParams)]
pub struct LogQuery {
    /// Only lines with a greater seq.
    pub after: Option<i64>,
    /// At most this many lines (default 1000, at most 10000).
    pub limit: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct LogPage {
    pub status: DeploymentStatus,
    pub lines: Vec<LogLine>,
}

#[utoipa::path(get, path = "/api/v1/deployments/{id}/logs", tag = "logs", security(("bearer" = [])),
    params(("id" = String, Path), LogQuery),
    responses((status = 200, body = LogPage), (status = 404, body = crate::api::error::ErrorBody)))]
async fn get_logs(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let (d, _) = find_deployment(&state, me.user.id, &id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::validation(
            "limit",
            format!("must be 1 to {MAX_LIMIT}"),
        ));
    }
    let lines = lines_after(&state.db, &d.id, q.after.unwrap_or(0).max(0), limit).await?;
    Ok(Json(LogPage {
        status: d.status(),
        lines,
    }))
}

#[derive(Deserialize, IntoParams)]
pub struct StreamQuery {
    /// Start after this seq (the `Last-Event-ID` header wins when both are sent).
    pub after: Option<i64>,
}

/// `text/event-stream`: `log` events (`id` = seq), `status` events, then `end`.
#[utoipa::path(get, path = "/api/v1/deployments/{id}/logs/stream", tag = "logs", security(("bearer" = [])),
    params(("id" = String, Path), StreamQuery),
    responses((status = 200, content_type = "text/event-stream", body = String),
              (status = 404, body = crate::api::error::ErrorBody)))]
async fn stream_logs(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> ApiResult<impl IntoResponse> {
    let (d, _) = find_deployment(&state, me.user.id, &id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let after = last_event_id.or(q.after).unwrap_or(0).max(0);
    let body = stream::open(state.db.clone(), state.bus.clone(), d.id, after).await;
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    ))
}
