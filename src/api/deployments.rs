//! `/api/v1/projects/{name}/deployments` and `/api/v1/deployments/{id}`: queue, list,
//! read, cancel and redeploy deployments. The builder turns the queued rows into builds.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{CurrentUser, OptionalJson};
use crate::api::projects::find_project;
use crate::app::AppState;
use crate::db::{DeploymentStatus, deployment, project, queries};
use crate::names;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_deployment, list_deployments))
        .routes(routes!(get_deployment))
        .routes(routes!(cancel))
        .routes(routes!(redeploy))
}

/// A deployment as the API returns it.
#[derive(Serialize, ToSchema)]
pub struct DeploymentView {
    pub id: String,
    pub short_id: String,
    /// The project's name.
    pub project: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit_sha: Option<String>,
    pub commit_message: Option<String>,
    pub status: DeploymentStatus,
    /// True while it is the project's production deployment.
    pub production: bool,
    /// `<project>-<short_id>`, this deployment forever.
    pub url: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// For a queued deployment: 1 when it is the next to start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
}

impl DeploymentView {
    pub fn new(state: &AppState, d: deployment::Model, p: &project::Model) -> DeploymentView {
        DeploymentView {
            production: p.production_deployment_id.as_deref() == Some(d.id.as_str()),
            url: state.site_url(&names::deployment_label(&p.name, &d.short_id)),
            project: p.name.clone(),
            status: d.status(),
            id: d.id,
            short_id: d.short_id,
            git_ref: d.git_ref,
            commit_sha: d.commit_sha,
            commit_message: d.commit_message,
            created_at: d.created_at,
            started_at: d.started_at,
            finished_at: d.finished_at,
            error: d.error,
            queue_position: None,
        }
    }

    /// The view with the queue position filled in for a queued deployment.
    pub async fn with_position(
        state: &AppState,
        d: deployment::Model,
        p: &project::Model,
    ) -> ApiResult<DeploymentView> {
        let position = if d.status() == DeploymentStatus::Queued {
            Some(crate::builder::queue::position(&state.db, &d).await?)
        } else {
            None
        };
        Ok(DeploymentView {
            queue_position: position,
            ..DeploymentView::new(state, d, p)
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentView>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    /// A branch or commit; the project's production branch when absent.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
}

/// Queues a deployment.
#[utoipa::path(post, path = "/api/v1/projects/{name}/deployments", tag = "deployments",
    security(("bearer" = [])), params(("name" = String, Path)), request_body = NewDeployment,
    responses((status = 202, body = DeploymentView), (status = 404, body = crate::api::error::ErrorBody),
              (status = 422, body = crate::api::error::ErrorBody)))]
async fn create_deployment(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(name): Path<String>,
    OptionalJson(body): OptionalJson<NewDeployment>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    let p = find_project(&state, me.user.id, &name).await?;
    let git_ref = body.git_ref.unwrap_or_else(|| p.production_branch.clone());
    names::check_git_ref(&git_ref).map_err(|m| ApiError::validation("ref", m))?;
    let d = queries::queue_deployment(&state.db, p.id, &git_ref, None).await?;
    tracing::info!(project = %p.name, deployment = %d.short_id, %git_ref, "deployment queued");
    state.deployment_queued();
    Ok((
        StatusCode::ACCEPTED,
        Json(DeploymentView::new(&state, d, &p)),
    ))
}

#[utoipa::path(get, path = "/api/v1/projects/{name}/deployments", tag = "deployments",
    security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = DeploymentList), (status = 404, body = crate::api::error::ErrorBody)))]
async fn list_deployments(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<Json<DeploymentList>> {
    let p = find_project(&state, me.user.id, &name).await?;
    let rows = deployment::Entity::find()
        .filter(deployment::Column::ProjectId.eq(p.id))
        .order_by_desc(deployment::Column::CreatedAt)
        .order_by_desc(deployment::Column::Id)
        .all(&state.db)
        .await?;
    let deployments = rows
        .into_iter()
        .map(|d| DeploymentView::new(&state, d, &p))
        .collect();
    Ok(Json(DeploymentList { deployments }))
}

/// The deployment `id` of the current user, or 404.
pub async fn find_deployment(
    state: &AppState,
    owner: i32,
    id: &str,
) -> ApiResult<(deployment::Model, project::Model)> {
    queries::owned_deployment(&state.db, owner, id)
        .await?
        .ok_or(ApiError::NotFound("deployment"))
}

#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments",
    security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = DeploymentView), (status = 404, body = crate::api::error::ErrorBody)))]
async fn get_deployment(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    let (d, p) = find_deployment(&state, me.user.id, &id).await?;
    Ok(Json(DeploymentView::with_position(&state, d, &p).await?))
}

/// Cancels a queued or building deployment.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/cancel", tag = "deployments",
    security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = DeploymentView), (status = 404, body = crate::api::error::ErrorBody),
              (status = 409, body = crate::api::error::ErrorBody)))]
async fn cancel(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    let (d, p) = find_deployment(&state, me.user.id, &id).await?;
    if !queries::cancel_deployment(&state.db, &d.id, None).await? {
        return Err(ApiError::Conflict {
            code: "not_cancelable",
            message: format!("deployment {} is already {}", d.short_id, d.status),
        });
    }
    tracing::info!(deployment = %d.short_id, "deployment canceled");
    state.deployment_canceled(&d.id);
    let (d, p) = (
        deployment::Entity::find_by_id(d.id.clone())
            .one(&state.db)
            .await?
            .unwrap_or(d),
        p,
    );
    Ok(Json(DeploymentView::new(&state, d, &p)))
}

/// Queues a new deployment of the same ref, pinned to the same commit when it is known.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/redeploy", tag = "deployments",
    security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 202, body = DeploymentView), (status = 404, body = crate::api::error::ErrorBody)))]
async fn redeploy(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    let (d, p) = find_deployment(&state, me.user.id, &id).await?;
    let new =
        queries::queue_deployment(&state.db, p.id, &d.git_ref, d.commit_sha.as_deref()).await?;
    state.deployment_queued();
    Ok((
        StatusCode::ACCEPTED,
        Json(DeploymentView::new(&state, new, &p)),
    ))
}
