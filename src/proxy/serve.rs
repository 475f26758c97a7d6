//! Serving one request for a deployment, by the rules of API.md ("Serving a
//! deployment"): the file, `P/index.html` (with a 308 to add the slash), `P.html`, the
//! SPA fallback, the deployment's `404.html`, the built-in 404.
//!
//! Only paths in the deployment's manifest exist: nothing outside it (no symlink, no
//! other deployment, no host file) can ever be named. The path is percent-decoded
//! before it is checked; `..`, NUL and backslash are refused with 400.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::routes::Route;
use crate::app::AppState;
use crate::builder::upload::{Manifest, ManifestEntry};

const HTML_CACHE: &str = "public, max-age=0, must-revalidate";
const IMMUTABLE_CACHE: &str = "public, max-age=31536000, immutable";

/// A path a request may name, or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestPath {
    /// Segments joined by `/` (no leading slash), and whether the URL ended in `/`.
    Clean {
        rel: String,
        trailing_slash: bool,
    },
    Bad(&'static str),
}

/// Decodes and checks the path of a request.
pub fn clean_path(raw: &str) -> RequestPath {
    let decoded = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
    let Ok(decoded) = String::from_utf8(decoded) else {
        return RequestPath::Bad("the path is not valid UTF-8");
    };
    if decoded.contains('\0') || decoded.contains('\\') {
        return RequestPath::Bad("the path holds NUL or a backslash");
    }
    let mut parts = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return RequestPath::Bad("the path holds '..'"),
            s => parts.push(s),
        }
    }
    RequestPath::Clean {
        rel: parts.join("/"),
        trailing_slash: decoded.ends_with('/') || parts.is_empty(),
    }
}

/// What the rules picked.
enum Pick<'m> {
    File(&'m str, &'m ManifestEntry, StatusCode),
    Redirect,
    BuiltIn404,
}

fn pick<'m>(m: &'m Manifest, rel: &str, trailing_slash: bool, spa: bool) -> Pick<'m> {
    let find = |p: &str| m.files.get_key_value(p).map(|(k, e)| (k.as_str(), e));
    let index = if rel.is_empty() {
        "index.html".to_string()
    } else {
        format!("{rel}/index.html")
    };
    if trailing_slash {
        if let Some((k, e)) = find(&index) {
            return Pick::File(k, e, StatusCode::OK);
        }
    } else {
        if let Some((k, e)) = find(rel) {
            return Pick::File(k, e, StatusCode::OK);
        }
        if find(&index).is_some() {
            return Pick::Redirect;
        }
        if let Some((k, e)) = find(&format!("{rel}.html")) {
            return Pick::File(k, e, StatusCode::OK);
        }
    }
    if spa && let Some((k, e)) = find("index.html") {
        return Pick::File(k, e, StatusCode::OK);
    }
    if let Some((k, e)) = find("404.html") {
        return Pick::File(k, e, StatusCode::NOT_FOUND);
    }
    Pick::BuiltIn404
}

/// Answers `method path` for the deployment of `route`.
pub async fn serve(
    state: &AppState,
    route: &Route,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "method not allowed\n",
        )
            .into_response();
    }
    let (rel, trailing_slash) = match clean_path(uri.path()) {
        RequestPath::Clean {
            rel,
            trailing_slash,
        } => (rel, trailing_slash),
        RequestPath::Bad(why) => {
            return (StatusCode::BAD_REQUEST, format!("bad request: {why}\n")).into_response();
        }
    };
    let manifest = match state
        .site_cache
        .manifest(&state.store, &route.deployment_id)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(deployment = %route.deployment_id, error = %e, "manifest unavailable");
            return (
                StatusCode::BAD_GATEWAY,
                "the deployment's files are unavailable\n",
            )
                .into_response();
        }
    };
    match pick(&manifest, &rel, trailing_slash, route.spa) {
        Pick::Redirect => {
            let location = match uri.query() {
                Some(q) => format!("{}/?{q}", uri.path()),
                None => format!("{}/", uri.path()),
            };
            (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response()
        }
        Pick::BuiltIn404 => super::no_such_page().await,
        Pick::File(path, entry, status) => {
            file_response(state, route, path, entry, status, method, headers).await
        }
    }
}

async fn file_response(
    state: &AppState,
    route: &Route,
    path: &str,
    entry: &ManifestEntry,
    status: StatusCode,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let etag = format!("\"{}\"", &entry.sha256[..32.min(entry.sha256.len())]);
    let cache = if status != StatusCode::OK {
        "no-cache"
    } else if entry.content_type.starts_with("text/html") || !route.immutable {
        HTML_CACHE
    } else {
        IMMUTABLE_CACHE
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, &entry.content_type)
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, cache)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if status == StatusCode::OK {
        builder = builder.header(header::ACCEPT_RANGES, "bytes");
        if if_none_match(headers, &etag) {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .unwrap_or_default();
        }
    }
    let range = if status == StatusCode::OK {
        requested_range(headers, entry.size)
    } else {
        Range::Whole
    };
    if let Range::Unsatisfiable = range {
        return builder
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{}", entry.size))
            .body(Body::empty())
            .unwrap_or_default();
    }
    let (status, start, end) = match range {
        Range::Part(a, b) => {
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{}", entry.size),
            );
            (StatusCode::PARTIAL_CONTENT, a, b + 1)
        }
        _ => (status, 0, entry.size),
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if method == Method::HEAD {
        return builder.body(Body::empty()).unwrap_or_default();
    }
    match state
        .site_cache
        .file(&state.store, &route.deployment_id, path, entry.size)
        .await
    {
        Ok(bytes) => {
            let body = if start == 0 && end == bytes.len() as u64 {
                bytes
            } else {
                bytes.slice(start as usize..(end as usize).min(bytes.len()))
            };
            builder.body(Body::from(body)).unwrap_or_default()
        }
        Err(e) => {
            tracing::error!(deployment = %route.deployment_id, path, error = %e, "file unavailable");
            (StatusCode::BAD_GATEWAY, "the file is unavailable\n").into_response()
        }
    }
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

enum Range {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range; several ranges, or a malformed header, serve the whole file.
fn requested_range(headers: &HeaderMap, size: u64) -> Range {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Range::Whole;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), Some(end)) if start <= end => Some((start, end.min(size.saturating_sub(1)))),
        (Some(start), None) if b.is_empty() => Some((start, size.saturating_sub(1))),
        (None, Some(n)) if a.is_empty() && n > 0 => {
            Some((size.saturating_sub(n), size.saturating_sub(1)))
        }
        _ => return Range::Whole,
    };
    match parsed {
        Some((start, end)) if size > 0 && start < size => Range::Part(start, end),
        _ => Range::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/x",
            "/a/..%2f..%2fb",
            "/a%5cb",
            "/a%00b",
            "/a/%2E%2E",
            "/x\\y",
        ] {
            assert!(matches!(clean_path(bad), RequestPath::Bad(_)), "{bad}");
        }
        assert_eq!(
            clean_path("//etc/passwd"),
            RequestPath::Clean {
                rel: "etc/passwd".into(),
                trailing_slash: false
            }
        );
        assert_eq!(
            clean_path("/"),
            RequestPath::Clean {
                rel: "".into(),
                trailing_slash: true
            }
        );
        assert_eq!(
            clean_path("/a%20b/"),
            RequestPath::Clean {
                rel: "a b".into(),
                trailing_slash: true
            }
        );
        assert_eq!(
            clean_path("/./a"),
            RequestPath::Clean {
                rel: "a".into(),
                trailing_slash: false
            }
        );
    }

    #[test]
    fn ranges() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(matches!(
            requested_range(&h("bytes=0-9"), 100),
            Range::Part(0, 9)
        ));
        assert!(matches!(
            requested_range(&h("bytes=90-"), 100),
            Range::Part(90, 99)
        ));
        assert!(matches!(
            requested_range(&h("bytes=-10"), 100),
            Range::Part(90, 99)
        ));
        assert!(matches!(
            requested_range(&h("bytes=50-500"), 100),
            Range::Part(50, 99)
        ));
        assert!(matches!(
            requested_range(&h("bytes=100-"), 100),
            Range::Unsatisfiable
        ));
        assert!(matches!(
            requested_range(&h("bytes=0-1,5-6"), 100),
            Range::Whole
        ));
        assert!(matches!(
            requested_range(&h("items=0-1"), 100),
            Range::Whole
        ));
    }
}
