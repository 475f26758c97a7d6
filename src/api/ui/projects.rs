//! Pages of projects: the dashboard, the new-project form, a project's page, its
//! settings and deletion.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};

use super::{Csrf, Page, UiForm, UiProject, UiUser, ago, duration, render};
use crate::api::error::ApiError;
use crate::api::projects::{self as api_projects, NewProject, ProjectPatch};
use crate::app::AppState;
use crate::db::{DeploymentStatus, deployment, project, queries, user};
use crate::names;

struct ProjectCard {
    name: String,
    url: String,
    status: Option<&'static str>,
    commit: Option<String>,
    ago: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    page: Page,
    projects: Vec<ProjectCard>,
}

pub async fn dashboard(
    State(state): State<AppState>,
    csrf: Csrf,
    user: Result<UiUser, Response>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let me = match user {
        Ok(UiUser(me)) => me,
        Err(redirect) => {
            let any = user::Entity::find().count(&state.db).await.unwrap_or(1) > 0;
            return if any {
                redirect
            } else {
                Redirect::to("/setup").into_response()
            };
        }
    };
    let rows = match project::Entity::find()
        .filter(project::Column::OwnerId.eq(me.user.id))
        .order_by_asc(project::Column::Name)
        .all(&state.db)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut projects = Vec::with_capacity(rows.len());
    for p in rows {
        let latest = deployment::Entity::find()
            .filter(deployment::Column::ProjectId.eq(p.id))
            .order_by_desc(deployment::Column::CreatedAt)
            .one(&state.db)
            .await
            .ok()
            .flatten();
        projects.push(ProjectCard {
            url: state.site_url(&p.name),
            status: latest.as_ref().map(|d| d.status().as_str()),
            commit: latest.as_ref().and_then(|d| {
                d.commit_sha.as_ref().map(|sha| {
                    format!(
                        "{} {}",
                        &sha[..7.min(sha.len())],
                        d.commit_message.clone().unwrap_or_default()
                    )
                })
            }),
            ago: latest
                .as_ref()
                .map(|d| ago(d.created_at))
                .unwrap_or_default(),
            name: p.name,
        });
    }
    let page = Page::new(&csrf, Some(&me)).with_notice(q.get("notice").map(String::as_str));
    render(&Dashboard { page, projects })
}

/// The values of the project form, as typed.
#[derive(Default)]
pub struct ProjectForm {
    pub name: String,
    pub git_url: String,
    pub production_branch: String,
    pub root_dir: String,
    pub install_command: String,
    pub build_command: String,
    pub output_dir: String,
    pub image: String,
    pub spa: bool,
}

impl ProjectForm {
    fn from_map(m: &HashMap<String, String>) -> ProjectForm {
        let get = |k: &str| m.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
        ProjectForm {
            name: get("name"),
            git_url: get("git_url"),
            production_branch: get("production_branch"),
            root_dir: get("root_dir"),
            install_command: get("install_command"),
            build_command: get("build_command"),
            output_dir: get("output_dir"),
            image: get("image"),
            spa: m.get("spa").is_some_and(|v| v == "true"),
        }
    }

    fn from_project(p: &project::Model) -> ProjectForm {
        ProjectForm {
            name: p.name.clone(),
            git_url: names::redact_git_url(&p.git_url),
            production_branch: p.production_branch.clone(),
            root_dir: p.root_dir.clone(),
            install_command: p.install_command.clone().unwrap_or_default(),
            build_command: p.build_command.clone().unwrap_or_default(),
            output_dir: p.output_dir.clone().unwrap_or_default(),
            image: p.image.clone().unwrap_or_default(),
            spa: p.spa,
        }
    }
}

#[derive(Template)]
#[template(path = "project_form.html")]
struct ProjectFormPage {
    page: Page,
    heading: String,
    action: String,
    button: &'static str,
    creating: bool,
    form: ProjectForm,
    env_keys: Vec<String>,
    error: Option<String>,
    field: String,
    base_domain: String,
    default_image: String,
}

fn form_page(
    state: &AppState,
    page: Page,
    form: ProjectForm,
    creating: bool,
    env_keys: Vec<String>,
    error: Option<ApiError>,
) -> Response {
    let field = match &error {
        Some(ApiError::Validation { field, .. }) => {
            field.split('.').next().unwrap_or_default().to_string()
        }
        Some(ApiError::Conflict { .. }) => "name".into(),
        _ => String::new(),
    };
    let (heading, action, button) = if creating {
        (
            "New project".to_string(),
            "/projects/new".to_string(),
            "Create project",
        )
    } else {
        (
            format!("Settings of {}", form.name),
            format!("/projects/{}/settings", form.name),
            "Save settings",
        )
    };
    render(&ProjectFormPage {
        page,
        heading,
        action,
        button,
        creating,
        form,
        env_keys,
        error: error.map(|e| match &e {
            ApiError::Validation { field, message } => format!("{field}: {message}"),
            other => other.to_string(),
        }),
        field,
        base_domain: state.config.server.base_domain.clone(),
        default_image: state.config.builder.default_image.clone(),
    })
}

/// `KEY=value` lines into a map; the error names the line.
fn parse_env(text: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut env = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ApiError::validation(
                "env",
                format!("line {} is not KEY=value", n + 1),
            ));
        };
        env.insert(k.trim().to_string(), v.to_string());
    }
    Ok(env)
}

fn optional(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

pub async fn new_page(State(state): State<AppState>, csrf: Csrf, UiUser(me): UiUser) -> Response {
    let form = ProjectForm {
        production_branch: "main".into(),
        root_dir: ".".into(),
        ..Default::default()
    };
    form_page(
        &state,
        Page::new(&csrf, Some(&me)),
        form,
        true,
        vec![],
        None,
    )
}

pub async fn create(
    State(state): State<AppState>,
    csrf: Csrf,
    UiUser(me): UiUser,
    UiForm(m): UiForm,
) -> Response {
    let form = ProjectForm::from_map(&m);
    let result = async {
        let env = parse_env(m.get("env").map(String::as_str).unwrap_or_default())?;
        let body = NewProject {
            name: form.name.clone(),
            git_url: form.git_url.clone(),
            production_branch: optional(&form.production_branch),
            root_dir: optional(&form.root_dir),
            install_command: optional(&form.install_command),
            build_command: optional(&form.build_command),
            output_dir: optional(&form.output_dir),
            image: optional(&form.image),
            spa: Some(form.spa),
            env: Some(env),
        };
        api_projects::create(&state, me.user.id, body).await
    }
    .await;
    match result {
        Ok((p, _)) => Redirect::to(&format!("/projects/{}?notice=created", p.name)).into_response(),
        Err(e @ (ApiError::Validation { .. } | ApiError::Conflict { .. })) => form_page(
            &state,
            Page::new(&csrf, Some(&me)),
            form,
            true,
            vec![],
            Some(e),
        ),
        Err(e) => e.into_response(),
    }
}

struct DeploymentRow {
    id: String,
    short_id: String,
    git_ref: String,
    status: &'static str,
    production: bool,
    sha: Option<String>,
    message: String,
    duration: String,
    ago: String,
    url: String,
    cancelable: bool,
    promotable: bool,
    older_than_production: bool,
}

#[derive(Template)]
#[template(path = "project.html")]
struct ProjectPage {
    page: Page,
    name: String,
    url: String,
    git_url: String,
    branch: String,
    deployments: Vec<DeploymentRow>,
}

pub async fn project_page(
    State(state): State<AppState>,
    csrf: Csrf,
    UiProject(me, p): UiProject,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let rows = match deployment::Entity::find()
        .filter(deployment::Column::ProjectId.eq(p.id))
        .order_by_desc(deployment::Column::CreatedAt)
        .all(&state.db)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let production_created = rows
        .iter()
        .find(|d| p.production_deployment_id.as_deref() == Some(d.id.as_str()))
        .map(|d| d.created_at);
    let deployments = rows
        .into_iter()
        .map(|d| {
            let status = d.status();
            let production = p.production_deployment_id.as_deref() == Some(d.id.as_str());
            DeploymentRow {
                url: state.site_url(&names::deployment_label(&p.name, &d.short_id)),
                status: status.as_str(),
                production,
                cancelable: !status.is_finished(),
                promotable: status == DeploymentStatus::Ready && !production,
                older_than_production: production_created.is_some_and(|t| d.created_at < t),
                sha: d
                    .commit_sha
                    .as_ref()
                    .map(|s| s[..7.min(s.len())].to_string()),
                message: d.commit_message.clone().unwrap_or_default(),
                duration: duration(d.started_at, d.finished_at),
                ago: ago(d.created_at),
                id: d.id,
                short_id: d.short_id,
                git_ref: d.git_ref,
            }
        })
        .collect();
    let page = Page::new(&csrf, Some(&me)).with_notice(q.get("notice").map(String::as_str));
    render(&ProjectPage {
        page,
        url: state.site_url(&p.name),
        git_url: names::redact_git_url(&p.git_url),
        branch: p.production_branch,
        name: p.name,
        deployments,
    })
}

pub async fn settings_page(
    State(state): State<AppState>,
    csrf: Csrf,
    UiProject(me, p): UiProject,
) -> Response {
    let keys = queries::env_keys(&state.db, p.id).await.unwrap_or_default();
    form_page(
        &state,
        Page::new(&csrf, Some(&me)),
        ProjectForm::from_project(&p),
        false,
        keys,
        None,
    )
}

pub async fn save_settings(
    State(state): State<AppState>,
    csrf: Csrf,
    UiProject(me, p): UiProject,
    UiForm(m): UiForm,
) -> Response {
    let mut form = ProjectForm::from_map(&m);
    form.name = p.name.clone();
    let shown_url = names::redact_git_url(&p.git_url);
    let result = async {
        let env_text = m.get("env").map(String::as_str).unwrap_or_default();
        let env = if env_text.trim().is_empty() {
            None
        } else {
            Some(parse_env(env_text)?)
        };
        let patch = ProjectPatch {
            name: None,
            // The form shows the URL redacted; an unchanged field keeps the stored one.
            git_url: (form.git_url != shown_url).then(|| form.git_url.clone()),
            production_branch: Some(form.production_branch.clone()),
            root_dir: Some(optional(&form.root_dir).unwrap_or_else(|| ".".into())),
            install_command: Some(optional(&form.install_command)),
            build_command: Some(optional(&form.build_command)),
            output_dir: Some(optional(&form.output_dir)),
            image: Some(optional(&form.image)),
            spa: Some(form.spa),
            env,
        };
        api_projects::update(&state, p.clone(), patch).await
    }
    .await;
    match result {
        Ok(p) => Redirect::to(&format!("/projects/{}?notice=saved", p.name)).into_response(),
        Err(e @ ApiError::Validation { .. }) => {
            let keys = queries::env_keys(&state.db, p.id).await.unwrap_or_default();
            form_page(
                &state,
                Page::new(&csrf, Some(&me)),
                form,
                false,
                keys,
                Some(e),
            )
        }
        Err(e) => e.into_response(),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    csrf: Csrf,
    UiProject(me, p): UiProject,
    UiForm(m): UiForm,
) -> Response {
    if m.get("confirm").map(|c| c.trim()) != Some(p.name.as_str()) {
        let keys = queries::env_keys(&state.db, p.id).await.unwrap_or_default();
        let error = ApiError::validation(
            "confirm",
            format!("type '{}' to delete the project", p.name),
        );
        return form_page(
            &state,
            Page::new(&csrf, Some(&me)),
            ProjectForm::from_project(&p),
            false,
            keys,
            Some(error),
        );
    }
    match api_projects::delete(&state, p).await {
        Ok(()) => Redirect::to("/?notice=deleted").into_response(),
        Err(e) => e.into_response(),
    }
}
