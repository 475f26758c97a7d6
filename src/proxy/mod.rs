//! The proxy: serves every deployment on its hostnames (`<label>.<base_domain>`).
//!
//! # Layout
//! - `host.rs`: which site a request is for, from its Host; refuses ambiguous hosts.
//! - `routes.rs`: the in-memory route table, reloaded from the domains table.
//!
//! A host that is not `base_domain` never reaches the dashboard's pages or cookies.
//! Serving files from the object store comes with the proxy issue; until then a known
//! hostname and an unknown one both get the "no deployment here" page.

pub mod host;
pub mod routes;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::app::AppState;

/// The router of every host that is not the dashboard.
pub fn router(state: AppState) -> Router {
    Router::new().fallback(no_deployment).with_state(state)
}

/// The built-in page for a host that serves nothing.
pub async fn no_deployment() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CACHE_CONTROL, "no-store")],
        Html(NO_DEPLOYMENT_PAGE),
    )
        .into_response()
}

const NO_DEPLOYMENT_PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>No deployment here</title>\
<style>body{font:16px/1.5 system-ui,sans-serif;display:grid;place-items:center;min-height:90vh;color:#333}\
main{text-align:center}h1{font-size:1.4rem}</style></head><body><main><h1>404 — no deployment here</h1>\
<p>This hostname does not serve any deployment.</p></main></body></html>";
