//! Pages and actions of deployments: deploy, cancel, redeploy, promote, and the
//! deployment page with its live log.

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};

use super::{Csrf, Page, UiDeployment, UiForm, UiProject, duration, render, when};
use crate::api::error::ApiError;
use crate::app::AppState;
use crate::db::queries;
use crate::logs::history::lines_after;
use crate::names;

/// Lines the page renders itself; the live stream starts after the last of them.
const RENDERED_LINES: u64 = 5000;

pub async fn deploy(
    State(state): State<AppState>,
    UiProject(_, p): UiProject,
    _: UiForm,
) -> Response {
    match queries::queue_deployment(&state.db, p.id, &p.production_branch, None).await {
        Ok(d) => {
            state.deployment_queued();
            Redirect::to(&format!("/deployments/{}", d.id)).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub async fn promote(
    State(state): State<AppState>,
    UiProject(_, p): UiProject,
    UiForm(m): UiForm,
) -> Response {
    let id = m.get("deployment_id").cloned().unwrap_or_default();
    match crate::api::projects::promote_to_production(&state, &p, &id).await {
        Ok(()) => Redirect::to(&format!("/projects/{}?notice=promoted", p.name)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    UiDeployment(_, d, _): UiDeployment,
    _: UiForm,
) -> Response {
    match queries::cancel_deployment(&state.db, &d.id, None).await {
        Ok(true) => state.deployment_canceled(&d.id),
        Ok(false) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    Redirect::to(&format!("/deployments/{}", d.id)).into_response()
}

pub async fn redeploy(
    State(state): State<AppState>,
    UiDeployment(_, d, p): UiDeployment,
    _: UiForm,
) -> Response {
    match queries::queue_deployment(&state.db, p.id, &d.git_ref, d.commit_sha.as_deref()).await {
        Ok(new) => {
            state.deployment_queued();
            Redirect::to(&format!("/deployments/{}", new.id)).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

struct LineRow {
    seq: i64,
    stream: &'static str,
    /// As stored; the script draws its SGR colours, without JavaScript they are dropped
    /// by the browser as control characters.
    text: String,
}

#[derive(Template)]
#[template(path = "deployment.html")]
struct DeploymentPage {
    page: Page,
    id: String,
    short_id: String,
    project: String,
    status: &'static str,
    production: bool,
    git_ref: String,
    sha: Option<String>,
    message: String,
    created: String,
    started: Option<String>,
    finished: Option<String>,
    duration: String,
    url: String,
    error: Option<String>,
    cancelable: bool,
    finished_now: bool,
    lines: Vec<LineRow>,
    last_seq: i64,
}

pub async fn deployment_page(
    State(state): State<AppState>,
    csrf: Csrf,
    UiDeployment(me, d, p): UiDeployment,
) -> Response {
    let lines = match lines_after(&state.db, &d.id, 0, RENDERED_LINES).await {
        Ok(lines) => lines,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let last_seq = lines.last().map(|l| l.seq).unwrap_or(0);
    let status = d.status();
    render(&DeploymentPage {
        page: Page::new(&csrf, Some(&me)),
        url: state.site_url(&names::deployment_label(&p.name, &d.short_id)),
        production: p.production_deployment_id.as_deref() == Some(d.id.as_str()),
        status: status.as_str(),
        cancelable: !status.is_finished(),
        finished_now: status.is_finished(),
        sha: d.commit_sha.clone(),
        message: d.commit_message.clone().unwrap_or_default(),
        created: when(d.created_at),
        started: d.started_at.map(when),
        finished: d.finished_at.map(when),
        duration: duration(d.started_at, d.finished_at),
        error: d.error.clone(),
        lines: lines
            .into_iter()
            .map(|l| LineRow {
                seq: l.seq,
                stream: l.stream.as_str(),
                text: l.text,
            })
            .collect(),
        last_seq,
        project: p.name,
        id: d.id,
        short_id: d.short_id,
        git_ref: d.git_ref,
    })
}
