//! The web UI: server-rendered pages (askama templates in `templates/`, CSS and a little
//! JavaScript in `static/`), on the dashboard host only.
//!
//! # Layout
//! - `mod.rs`: the router, the session and CSRF plumbing every page shares, statics.
//! - `account.rs`: first-run setup, login, logout, API tokens.
//! - `projects.rs`: dashboard, new project, project page, settings, delete.
//! - `deployments.rs`: deploy, cancel, redeploy, promote, the deployment page.
//!
//! Sessions live in an HttpOnly, SameSite=Lax cookie (Secure when `public_url` is
//! https). Every form carries a CSRF token that must equal the `scalemesh_csrf` cookie
//! (double submit); a POST without it gets 403. Every user-controlled string reaches
//! HTML through askama's escaping; the log view builds DOM nodes from text, never HTML.

mod account;
mod deployments;
mod projects;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};

use crate::api::extract::cookie;
use crate::app::AppState;
use crate::auth::{self, Principal};

/// The CSRF cookie; forms echo its value in the `csrf` field.
pub const CSRF_COOKIE: &str = "scalemesh_csrf";
/// Changes with every release, so cached CSS and JS are refreshed.
const ASSET_VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(projects::dashboard))
        .route("/setup", get(account::setup_page).post(account::setup))
        .route("/login", get(account::login_page).post(account::login))
        .route("/logout", post(account::logout))
        .route(
            "/tokens",
            get(account::tokens_page).post(account::create_token),
        )
        .route("/tokens/{id}/revoke", post(account::revoke_token))
        .route(
            "/projects/new",
            get(projects::new_page).post(projects::create),
        )
        .route("/projects/{name}", get(projects::project_page))
        .route(
            "/projects/{name}/settings",
            get(projects::settings_page).post(projects::save_settings),
        )
        .route("/projects/{name}/delete", post(projects::delete))
        .route("/projects/{name}/deploy", post(deployments::deploy))
        .route("/projects/{name}/promote", post(deployments::promote))
        .route("/deployments/{id}", get(deployments::deployment_page))
        .route("/deployments/{id}/cancel", post(deployments::cancel))
        .route("/deployments/{id}/redeploy", post(deployments::redeploy))
        .route("/static/{file}", get(asset))
}

/// The UI router with its CSRF layer, for `api::router` to merge.
pub fn layered(state: AppState) -> Router<AppState> {
    router().layer(middleware::from_fn_with_state(state, csrf_cookie))
}

/// What every page's frame needs.
pub struct Page {
    pub csrf: String,
    pub user_email: Option<String>,
    pub notice: Option<&'static str>,
    pub asset_version: &'static str,
}

impl Page {
    pub fn new(csrf: &Csrf, user: Option<&Principal>) -> Page {
        Page {
            csrf: csrf.0.clone(),
            user_email: user.map(|u| u.user.email.clone()),
            notice: None,
            asset_version: ASSET_VERSION,
        }
    }

    pub fn with_notice(mut self, notice: Option<&str>) -> Page {
        self.notice = notice.and_then(notice_text);
        self
    }
}

/// Fixed notices by key, so a URL can never put arbitrary text on a page.
fn notice_text(key: &str) -> Option<&'static str> {
    Some(match key {
        "created" => "Project created. Deploy it when you are ready.",
        "deployed" => "Deployment queued.",
        "saved" => "Settings saved.",
        "deleted" => "Project deleted.",
        "canceled" => "Deployment canceled.",
        "promoted" => "Production now serves the chosen deployment.",
        "revoked" => "Token revoked.",
        _ => return None,
    })
}

/// Renders a template into a response (500 on a template error, logged).
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// The CSRF token of this browser (the cookie's value, made on first visit).
#[derive(Clone)]
pub struct Csrf(pub String);

impl Csrf {
    /// Whether a submitted form carries this browser's token.
    pub fn matches(&self, submitted: Option<&String>) -> bool {
        submitted.is_some_and(|s| !s.is_empty() && s.as_bytes() == self.0.as_bytes())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Csrf {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, StatusCode> {
        parts
            .extensions
            .get::<Csrf>()
            .cloned()
            .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Gives every browser a CSRF cookie, and every handler its value.
async fn csrf_cookie(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let existing = cookie(req.headers(), CSRF_COOKIE)
        .filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string);
    let fresh = existing.is_none();
    let token = existing.unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
    req.extensions_mut().insert(Csrf(token.clone()));
    let secure = state.config.server.public_url.starts_with("https://");
    let mut response = next.run(req).await;
    if fresh {
        let value = format!(
            "{CSRF_COOKIE}={token}; Path=/; SameSite=Lax; HttpOnly{}",
            if secure { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// A submitted form whose CSRF token matched this browser's (else the 403 page).
pub struct UiForm(pub std::collections::HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for UiForm {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let csrf = req.extensions().get::<Csrf>().cloned();
        let axum::Form(map) =
            axum::Form::<std::collections::HashMap<String, String>>::from_request(req, state)
                .await
                .map_err(IntoResponse::into_response)?;
        match csrf {
            Some(csrf) if csrf.matches(map.get("csrf")) => Ok(UiForm(map)),
            _ => Err(csrf_failed()),
        }
    }
}

/// The project named in the path, if the signed-in user owns it (else 404, or the
/// login redirect).
pub struct UiProject(pub Principal, pub crate::db::project::Model);

impl FromRequestParts<AppState> for UiProject {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let UiUser(me) = UiUser::from_request_parts(parts, state).await?;
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        match crate::db::queries::owned_project(&state.db, me.user.id, &name).await {
            Ok(Some(p)) => Ok(UiProject(me, p)),
            Ok(None) => Err(not_found(State(state.clone())).await),
            Err(e) => Err(crate::api::error::ApiError::from(e).into_response()),
        }
    }
}

/// The deployment named in the path with its project, if the signed-in user owns it.
pub struct UiDeployment(
    pub Principal,
    pub crate::db::deployment::Model,
    pub crate::db::project::Model,
);

impl FromRequestParts<AppState> for UiDeployment {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let UiUser(me) = UiUser::from_request_parts(parts, state).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        match crate::db::queries::owned_deployment(&state.db, me.user.id, &id).await {
            Ok(Some((d, p))) => Ok(UiDeployment(me, d, p)),
            Ok(None) => Err(not_found(State(state.clone())).await),
            Err(e) => Err(crate::api::error::ApiError::from(e).into_response()),
        }
    }
}

/// 403 for a form without the right CSRF token.
pub fn csrf_failed() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html(
            "<!doctype html><title>Forbidden</title><h1>403 — form expired</h1>\
        <p>The form was missing its security token. Go back, reload the page and try again.</p>",
        ),
    )
        .into_response()
}

/// The signed-in user of a page, from the session cookie; else a redirect to log in.
pub struct UiUser(pub Principal);

impl FromRequestParts<AppState> for UiUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(token) = cookie(&parts.headers, auth::SESSION_COOKIE) else {
            return Err(Redirect::to("/login").into_response());
        };
        match auth::authenticate(&state.db, token).await {
            Ok(Some(p)) => Ok(UiUser(p)),
            Ok(None) => Err(Redirect::to("/login").into_response()),
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                Err((StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response())
            }
        }
    }
}

/// `Set-Cookie` value of a new session.
pub fn session_cookie(state: &AppState, token: &str) -> String {
    let secure = state.config.server.public_url.starts_with("https://");
    format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        auth::SESSION_COOKIE,
        auth::SESSION_DAYS * 24 * 3600,
        if secure { "; Secure" } else { "" }
    )
}

/// `3 min ago`, `2 h ago`, `5 d ago`.
pub fn ago(t: DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0..=59 => "just now".into(),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// `42 s`, `3 min 5 s`.
pub fn duration(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    let (Some(a), Some(b)) = (from, to) else {
        return "—".into();
    };
    let s = (b - a).num_milliseconds().max(0) as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {} s", s as u64 / 60, s as u64 % 60)
    }
}

pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

const APP_CSS: &str = include_str!("../../../static/app.css");
const LOG_JS: &str = include_str!("../../../static/log.js");
const FAVICON: &str = include_str!("../../../static/favicon.svg");

/// The UI's static files, embedded in the binary, cached for a day (the pages ask for
/// them with `?v=<version>`).
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "log.js" => (LOG_JS, "text/javascript; charset=utf-8"),
        "favicon.svg" => (FAVICON, "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

/// The HTML 404 of the dashboard for paths outside `/api`.
pub async fn not_found(State(_): State<AppState>) -> Response {
    (StatusCode::NOT_FOUND, Html("<!doctype html><title>Not found</title><h1>404 — not found</h1><p><a href=\"/\">Projects</a></p>"))
        .into_response()
}
