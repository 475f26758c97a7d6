//! The proxy: serves every deployment on its hostnames (`<label>.<base_domain>`)
//! straight from the object store, through an in-memory cache.
//!
//! # Layout
//! - `host.rs`: which site a request is for, from its Host; refuses ambiguous hosts.
//! - `routes.rs`: the in-memory route table, reloaded from the domains table on every
//!   route-change event and every 30 s as a safety net.
//! - `serve.rs`: the serving rules of API.md, ETags, ranges, cache headers.
//! - `cache.rs`: the bounded hot-object cache: prepared manifests, bodies as stored
//!   and compressed once.
//!
//! The listener calls [`site`] directly, without a router in between: the request
//! path of a deployment is a host check, two map lookups and a few header copies.
//!
//! A host that is not `base_domain` never reaches the dashboard's pages or cookies, and
//! the request path never touches the database.

pub mod cache;
pub mod host;
pub mod routes;
pub mod serve;

use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::body::ResponseBody;
use crate::logs::SystemEvent;
pub use serve::SiteResponse;

const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// Answers a request for the hostname label `label` (`<label>.<base_domain>`).
pub async fn site(
    state: &AppState,
    label: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> SiteResponse {
    match state.routes.get(label) {
        Some(route) => serve::serve(state, &route, method, uri, headers).await,
        None => no_deployment(),
    }
}

/// Keeps the route table current: reloads on every route-change event from another
/// process (this one reloads as it changes the table) and every 30 s whatever happens.
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
                Some(SystemEvent::RoutesChanged { by }) => by != state.instance,
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
pub fn no_deployment() -> SiteResponse {
    static PAGE: LazyLock<Bytes> = LazyLock::new(|| {
        page(
            "404 — no deployment here",
            "This hostname does not serve any deployment.",
        )
    });
    not_found(&PAGE)
}

/// The built-in page for a path a deployment does not have.
pub fn no_such_page() -> SiteResponse {
    static PAGE: LazyLock<Bytes> = LazyLock::new(|| {
        page(
            "404 — page not found",
            "This deployment has no page at this address.",
        )
    });
    not_found(&PAGE)
}

fn not_found(page: &Bytes) -> SiteResponse {
    let mut res = SiteResponse::new(ResponseBody::from(page.clone()));
    *res.status_mut() = StatusCode::NOT_FOUND;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn page(title: &str, text: &str) -> Bytes {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;display:grid;place-items:center;min-height:90vh;color:#333}}\
main{{text-align:center}}h1{{font-size:1.4rem}}</style></head><body><main><h1>{title}</h1>\
<p>{text}</p></main></body></html>"
    )
    .into()
}
