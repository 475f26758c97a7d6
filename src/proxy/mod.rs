//! The proxy: serves every deployment on its hostnames (`<label>.<base_domain>`)
//! straight from the object store, through an in-memory cache.
//!
//! # Layout
//! - `host.rs`: which site a request is for, from its Host; refuses ambiguous hosts.
//! - `routes.rs`: the in-memory route table, reloaded from the domains table on every
//!   route-change event and every 30 s as a safety net.
//! - `serve.rs`: the serving rules of API.md, ETags, ranges, cache headers.
//! - `cache.rs`: the bounded hot-object cache.
//!
//! A host that is not `base_domain` never reaches the dashboard's pages or cookies, and
//! the request path never touches the database.

pub mod cache;
pub mod host;
pub mod routes;
pub mod serve;

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Version, header};
use axum::response::{Html, IntoResponse, Response};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tower_http::compression::CompressionLayer;

use crate::app::AppState;
use crate::logs::SystemEvent;

/// The hostname label a request was routed by (set by `app::router`).
#[derive(Debug, Clone)]
pub struct SiteLabel(pub String);

const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// The router of every host that is not the dashboard.
pub fn router(state: AppState) -> Router {
    // Text only, never a partial or empty response, and not when it would not pay.
    let compressible =
        |status: StatusCode, _: Version, headers: &HeaderMap, _: &axum::http::Extensions| {
            let texty = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.contains("charset=utf-8"));
            let big = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_none_or(|n| n >= 256);
            (status == StatusCode::OK || status == StatusCode::NOT_FOUND) && texty && big
        };
    Router::new()
        .fallback(site)
        .layer(CompressionLayer::new().compress_when(compressible))
        .with_state(state)
}

async fn site(State(state): State<AppState>, req: Request) -> Response {
    let Some(SiteLabel(label)) = req.extensions().get::<SiteLabel>() else {
        return no_deployment().await;
    };
    let Some(route) = state.routes.get(label) else {
        return no_deployment().await;
    };
    serve::serve(&state, &route, req.method(), req.uri(), req.headers()).await
}

/// Keeps the route table current: reloads on every route-change event from the bus
/// (other processes) and every 30 s whatever happens.
pub async fn watch_routes(state: AppState, shutdown: CancellationToken) {
    let mut events = state.bus.subscribe_system().await.ok();
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    loop {
        let reload = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => true,
            e = async {
                match events.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => match e {
                Some(SystemEvent::RoutesChanged) => true,
                Some(_) => false,
                None => {
                    events = state.bus.subscribe_system().await.ok();
                    false
                }
            },
        };
        if reload {
            state.reload_routes().await;
        }
    }
}

/// The built-in page for a host that serves nothing.
pub async fn no_deployment() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "404 — no deployment here",
        "This hostname does not serve any deployment.",
    )
}

/// The built-in page for a path a deployment does not have.
pub async fn no_such_page() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "404 — page not found",
        "This deployment has no page at this address.",
    )
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;display:grid;place-items:center;min-height:90vh;color:#333}}\
main{{text-align:center}}h1{{font-size:1.4rem}}</style></head><body><main><h1>{title}</h1>\
<p>{text}</p></main></body></html>"
    );
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}
