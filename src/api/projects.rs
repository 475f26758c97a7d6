//! `/api/v1/projects`: create, list, read, change and delete projects, their env vars,
//! and promotion.
//!
//! Every input is checked by `crate::names` before it is stored; a git URL leaves this
//! module only redacted.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{ApiJson, CurrentUser};
use crate::app::AppState;
use crate::db::{DeploymentStatus, deployment, domain, env_var, project, queries};
use crate::names;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project, list_projects))
        .routes(routes!(get_project, patch_project, delete_project))
        .routes(routes!(put_env))
        .routes(routes!(promote))
}

/// A project as the API returns it.
#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    pub id: i32,
    pub name: String,
    /// Credentials replaced by `***`.
    pub git_url: String,
    pub production_branch: String,
    pub root_dir: String,
    pub install_command: Option<String>,
    pub build_command: Option<String>,
    pub output_dir: Option<String>,
    pub image: Option<String>,
    pub spa: bool,
    pub env_keys: Vec<String>,
    pub production_deployment_id: Option<String>,
    /// The production hostname as a full URL.
    pub url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProjectView {
    pub async fn load(state: &AppState, p: project::Model) -> ApiResult<ProjectView> {
        let env_keys = queries::env_keys(&state.db, p.id).await?;
        Ok(ProjectView::new(state, p, env_keys))
    }

    fn new(state: &AppState, p: project::Model, env_keys: Vec<String>) -> ProjectView {
        ProjectView {
            id: p.id,
            url: state.site_url(&p.name),
            git_url: names::redact_git_url(&p.git_url),
            name: p.name,
            production_branch: p.production_branch,
            root_dir: p.root_dir,
            install_command: p.install_command,
            build_command: p.build_command,
            output_dir: p.output_dir,
            image: p.image,
            spa: p.spa,
            env_keys,
            production_deployment_id: p.production_deployment_id,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<ProjectView>,
}

/// The body of `POST /projects`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub name: String,
    pub git_url: String,
    pub production_branch: Option<String>,
    pub root_dir: Option<String>,
    pub install_command: Option<String>,
    pub build_command: Option<String>,
    pub output_dir: Option<String>,
    pub image: Option<String>,
    pub spa: Option<bool>,
    pub env: Option<BTreeMap<String, String>>,
}

/// The body of `PATCH /projects/{name}`: absent fields stay, `null` clears a nullable one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    /// Cannot be changed; present only to give a clear error.
    #[serde(default)]
    #[schema(ignore)]
    pub name: Option<serde_json::Value>,
    pub git_url: Option<String>,
    pub production_branch: Option<String>,
    pub root_dir: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub install_command: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub build_command: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub output_dir: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub image: Option<Option<String>>,
    pub spa: Option<bool>,
    pub env: Option<BTreeMap<String, String>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

const MAX_COMMAND: usize = 4096;
const MAX_ENV_VARS: usize = 500;
const MAX_ENV_VALUE: usize = 64 * 1024;

fn check(field: &str, result: Result<(), String>) -> ApiResult<()> {
    result.map_err(|m| ApiError::validation(field, m))
}

fn check_command(field: &str, c: &Option<String>) -> ApiResult<()> {
    match c {
        Some(c) if c.len() > MAX_COMMAND || c.contains('\0') => Err(ApiError::validation(
            field,
            format!("must be at most {MAX_COMMAND} bytes without NUL"),
        )),
        _ => Ok(()),
    }
}

fn check_env(env: &BTreeMap<String, String>) -> ApiResult<()> {
    if env.len() > MAX_ENV_VARS {
        return Err(ApiError::validation(
            "env",
            format!("at most {MAX_ENV_VARS} variables"),
        ));
    }
    for (k, v) in env {
        check("env", names::check_env_key(k))?;
        if v.len() > MAX_ENV_VALUE || v.contains('\0') {
            return Err(ApiError::validation(
                "env",
                format!("value of {k} must be at most {MAX_ENV_VALUE} bytes without NUL"),
            ));
        }
    }
    Ok(())
}

fn check_optional_dir(field: &str, d: &Option<String>) -> ApiResult<()> {
    match d {
        Some(d) => check(field, names::check_relative_dir(d)),
        None => Ok(()),
    }
}

fn check_optional_image(i: &Option<String>) -> ApiResult<()> {
    match i {
        Some(i) => check("image", names::check_image(i)),
        None => Ok(()),
    }
}

/// Replaces all env vars of a project inside `txn`.
async fn replace_env(
    txn: &impl sea_orm::ConnectionTrait,
    project_id: i32,
    env: &BTreeMap<String, String>,
) -> ApiResult<()> {
    env_var::Entity::delete_many()
        .filter(env_var::Column::ProjectId.eq(project_id))
        .exec(txn)
        .await?;
    if !env.is_empty() {
        env_var::Entity::insert_many(env.iter().map(|(k, v)| env_var::ActiveModel {
            project_id: Set(project_id),
            key: Set(k.clone()),
            value: Set(v.clone()),
        }))
        .exec(txn)
        .await?;
    }
    Ok(())
}

fn name_taken() -> ApiError {
    ApiError::Conflict {
        code: "name_taken",
        message: "a project with this name exists".into(),
    }
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", security(("bearer" = [])),
    request_body = NewProject,
    responses((status = 201, body = ProjectView), (status = 409, body = crate::api::error::ErrorBody),
              (status = 422, body = crate::api::error::ErrorBody)))]
async fn create_project(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    ApiJson(body): ApiJson<NewProject>,
) -> ApiResult<(StatusCode, Json<ProjectView>)> {
    let (created, keys) = create(&state, me.user.id, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(ProjectView::new(&state, created, keys)),
    ))
}

/// Checks and stores a new project of `owner`; returns it with its env keys. The API
/// and the UI both create projects through here.
pub async fn create(
    state: &AppState,
    owner: i32,
    body: NewProject,
) -> ApiResult<(project::Model, Vec<String>)> {
    check("name", names::check_project_name(&body.name))?;
    names::check_git_url(&body.git_url, state.config.builder.allow_local_git)
        .map_err(|m| ApiError::validation("git_url", m))?;
    let branch = body.production_branch.unwrap_or_else(|| "main".into());
    check("production_branch", names::check_git_ref(&branch))?;
    let root_dir = body.root_dir.unwrap_or_else(|| ".".into());
    check("root_dir", names::check_relative_dir(&root_dir))?;
    check_command("install_command", &body.install_command)?;
    check_command("build_command", &body.build_command)?;
    check_optional_dir("output_dir", &body.output_dir)?;
    check_optional_image(&body.image)?;
    let env = body.env.unwrap_or_default();
    check_env(&env)?;
    // A name may not shadow a hostname another project already serves.
    if domain::Entity::find_by_id(body.name.clone())
        .one(&state.db)
        .await?
        .is_some()
    {
        return Err(name_taken());
    }
    let now = Utc::now();
    let txn = state.db.begin().await?;
    let created = project::ActiveModel {
        owner_id: Set(owner),
        name: Set(body.name),
        git_url: Set(body.git_url),
        production_branch: Set(branch),
        root_dir: Set(root_dir),
        install_command: Set(body.install_command),
        build_command: Set(body.build_command),
        output_dir: Set(body.output_dir),
        image: Set(body.image),
        spa: Set(body.spa.unwrap_or(false)),
        production_deployment_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(&txn)
    .await
    .map_err(|e| match e.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => name_taken(),
        _ => e.into(),
    })?;
    replace_env(&txn, created.id, &env).await?;
    txn.commit().await?;
    tracing::info!(project = %created.name, "project created");
    Ok((created, env.into_keys().collect()))
}

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", security(("bearer" = [])),
    responses((status = 200, body = ProjectList)))]
async fn list_projects(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
) -> ApiResult<Json<ProjectList>> {
    let rows = project::Entity::find()
        .filter(project::Column::OwnerId.eq(me.user.id))
        .order_by_asc(project::Column::Name)
        .all(&state.db)
        .await?;
    let mut projects = Vec::with_capacity(rows.len());
    for p in rows {
        projects.push(ProjectView::load(&state, p).await?);
    }
    Ok(Json(ProjectList { projects }))
}

/// The project `name` of the current user, or 404.
pub async fn find_project(state: &AppState, owner: i32, name: &str) -> ApiResult<project::Model> {
    queries::owned_project(&state.db, owner, name)
        .await?
        .ok_or(ApiError::NotFound("project"))
}

#[utoipa::path(get, path = "/api/v1/projects/{name}", tag = "projects", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = ProjectView), (status = 404, body = crate::api::error::ErrorBody)))]
async fn get_project(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<Json<ProjectView>> {
    let p = find_project(&state, me.user.id, &name).await?;
    Ok(Json(ProjectView::load(&state, p).await?))
}

#[utoipa::path(patch, path = "/api/v1/projects/{name}", tag = "projects", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = ProjectPatch,
    responses((status = 200, body = ProjectView), (status = 404, body = crate::api::error::ErrorBody),
              (status = 422, body = crate::api::error::ErrorBody)))]
async fn patch_project(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ProjectPatch>,
) -> ApiResult<Json<ProjectView>> {
    let p = find_project(&state, me.user.id, &name).await?;
    let updated = update(&state, p, body).await?;
    Ok(Json(ProjectView::load(&state, updated).await?))
}

/// Checks and applies a change to a project. The API and the UI both change projects
/// through here.
pub async fn update(
    state: &AppState,
    p: project::Model,
    body: ProjectPatch,
) -> ApiResult<project::Model> {
    if body.name.is_some() {
        return Err(ApiError::validation("name", "a project cannot be renamed"));
    }
    let mut active: project::ActiveModel = p.clone().into();
    if let Some(url) = body.git_url {
        names::check_git_url(&url, state.config.builder.allow_local_git)
            .map_err(|m| ApiError::validation("git_url", m))?;
        active.git_url = Set(url);
    }
    if let Some(branch) = body.production_branch {
        check("production_branch", names::check_git_ref(&branch))?;
        active.production_branch = Set(branch);
    }
    if let Some(dir) = body.root_dir {
        check("root_dir", names::check_relative_dir(&dir))?;
        active.root_dir = Set(dir);
    }
    if let Some(c) = body.install_command {
        check_command("install_command", &c)?;
        active.install_command = Set(c);
    }
    if let Some(c) = body.build_command {
        check_command("build_command", &c)?;
        active.build_command = Set(c);
    }
    if let Some(d) = body.output_dir {
        check_optional_dir("output_dir", &d)?;
        active.output_dir = Set(d);
    }
    if let Some(i) = body.image {
        check_optional_image(&i)?;
        active.image = Set(i);
    }
    if let Some(spa) = body.spa {
        active.spa = Set(spa);
    }
    if let Some(env) = &body.env {
        check_env(env)?;
    }
    active.updated_at = Set(Utc::now());
    let txn = state.db.begin().await?;
    let updated = active.update(&txn).await?;
    if let Some(env) = &body.env {
        replace_env(&txn, p.id, env).await?;
    }
    txn.commit().await?;
    if updated.spa != p.spa {
        state.routes_changed().await;
    }
    Ok(updated)
}

#[utoipa::path(delete, path = "/api/v1/projects/{name}", tag = "projects", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = crate::api::error::ErrorBody)))]
async fn delete_project(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let p = find_project(&state, me.user.id, &name).await?;
    delete(&state, p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a project with its deployments, logs, hostnames and artifacts.
pub async fn delete(state: &AppState, p: project::Model) -> ApiResult<()> {
    let deployment_ids: Vec<String> = deployment::Entity::find()
        .filter(deployment::Column::ProjectId.eq(p.id))
        .all(&state.db)
        .await?
        .into_iter()
        .map(|d| d.id)
        .collect();
    // Foreign keys cascade to env vars, deployments, their log lines and domains.
    project::Entity::delete_by_id(p.id).exec(&state.db).await?;
    state.routes_changed().await;
    let store = state.store.clone();
    tokio::spawn(async move {
        for id in deployment_ids {
            if let Err(e) = crate::storage::delete_deployment(store.as_ref(), &id).await {
                tracing::warn!(deployment = %id, error = %e, "artifacts not removed");
            }
        }
    });
    tracing::info!(project = %p.name, "project deleted");
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct EnvKeys {
    pub env_keys: Vec<String>,
}

/// Replaces all env vars; values are never returned.
#[utoipa::path(put, path = "/api/v1/projects/{name}/env", tag = "projects", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = BTreeMap<String, String>,
    responses((status = 200, body = EnvKeys), (status = 422, body = crate::api::error::ErrorBody)))]
async fn put_env(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(name): Path<String>,
    ApiJson(env): ApiJson<BTreeMap<String, String>>,
) -> ApiResult<Json<EnvKeys>> {
    let p = find_project(&state, me.user.id, &name).await?;
    check_env(&env)?;
    let txn = state.db.begin().await?;
    replace_env(&txn, p.id, &env).await?;
    txn.commit().await?;
    Ok(Json(EnvKeys {
        env_keys: env.into_keys().collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    pub deployment_id: String,
}

/// Makes a `ready` deployment of this project production (also a rollback).
#[utoipa::path(post, path = "/api/v1/projects/{name}/promote", tag = "projects", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = PromoteBody,
    responses((status = 200, body = ProjectView), (status = 404, body = crate::api::error::ErrorBody),
              (status = 409, body = crate::api::error::ErrorBody)))]
async fn promote(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PromoteBody>,
) -> ApiResult<Json<ProjectView>> {
    let p = find_project(&state, me.user.id, &name).await?;
    promote_to_production(&state, &p, &body.deployment_id).await?;
    let p = find_project(&state, me.user.id, &name).await?;
    Ok(Json(ProjectView::load(&state, p).await?))
}

/// Makes deployment `id` of `p` production, if it is ready.
pub async fn promote_to_production(
    state: &AppState,
    p: &project::Model,
    id: &str,
) -> ApiResult<()> {
    let d = deployment::Entity::find_by_id(id.to_string())
        .filter(deployment::Column::ProjectId.eq(p.id))
        .one(&state.db)
        .await?
        .ok_or(ApiError::NotFound("deployment"))?;
    if d.status() != DeploymentStatus::Ready {
        return Err(ApiError::Conflict {
            code: "not_ready",
            message: format!("deployment {} is {}, not ready", d.short_id, d.status),
        });
    }
    crate::db::domains::set_production(&state.db, p, &d).await?;
    state.routes_changed().await;
    Ok(())
}
