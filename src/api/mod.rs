//! The HTTP API under `/api/v1` and the system routes, served on `base_domain` only.
//!
//! Each resource is one file exposing `router() -> OpenApiRouter<AppState>`; this file
//! merges them, collects the OpenAPI document from the same handlers (so it cannot
//! drift from the code), and adds the layers every route shares: metrics, a time limit
//! to the response head, the body limit, and JSON errors for unknown routes and methods.

pub mod auth;
pub mod deployments;
pub mod error;
pub mod extract;
pub mod logs;
pub mod projects;
pub mod system;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use error::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ScaleMesh API",
        description = "Deploy web apps from git: projects, deployments, logs. Errors are \
                       `{\"error\": {\"code\", \"message\", \"field\"?}}`."
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The dashboard host's router: API, system routes, and JSON 404/405.
pub fn router(state: AppState) -> Router {
    let (routes, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::router())
        .merge(projects::router())
        .merge(deployments::router())
        .merge(logs::router())
        .merge(system::router())
        .split_for_parts();
    let openapi = Arc::new(openapi);
    routes
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = openapi.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(ui::layered(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// JSON 404 under `/api`, the HTML page elsewhere.
async fn not_found(State(state): State<AppState>, req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        ApiError::NotFound("route").into_response()
    } else {
        ui::not_found(State(state)).await
    }
}

/// Counts every request by route and status, and bounds the time to the response head
/// (a streaming body, like the log stream, goes on after it).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let limit = Duration::from_secs(state.config.server.request_timeout_secs);
    let response = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    };
    state.metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
