//! Serving one request for a deployment, by the rules of API.md ("Serving a
//! deployment"): the file, `P/index.html` (with a 308 to add the slash), `P.html`, the
//! SPA fallback, the deployment's `404.html`, the built-in 404.
//!
//! Only paths in the deployment's manifest exist: nothing outside it (no symlink, no
//! other deployment, no host file) can ever be named. The path is percent-decoded
//! before it is checked; `..`, NUL and backslash are refused with 400.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, header};
use bytes::Bytes;

use super::cache::{Encoding, Site, SiteFile};
use super::routes::Route;
use crate::app::AppState;
use crate::body::{FileBody, ResponseBody};

/// What the proxy answers: its bodies are whole `Bytes`, never boxed.
pub type SiteResponse = Response<ResponseBody>;

const HTML_CACHE: HeaderValue = HeaderValue::from_static("public, max-age=0, must-revalidate");
const IMMUTABLE_CACHE: HeaderValue =
    HeaderValue::from_static("public, max-age=31536000, immutable");
const NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");

/// A path a request may name, or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestPath<'a> {
    /// Segments joined by `/` (no leading slash), and whether the URL ended in `/`.
    /// Borrowed from the request unless it had escapes or empty or `.` segments.
    Clean {
        rel: Cow<'a, str>,
        trailing_slash: bool,
    },
    Bad(&'static str),
}

/// Decodes and checks the path of a request.
pub fn clean_path(raw: &str) -> RequestPath<'_> {
    let Ok(decoded) = percent_encoding::percent_decode_str(raw).decode_utf8() else {
        return RequestPath::Bad("the path is not valid UTF-8");
    };
    if decoded.contains('\0') || decoded.contains('\\') {
        return RequestPath::Bad("the path holds NUL or a backslash");
    }
    let inner = decoded.strip_prefix('/').unwrap_or(&decoded);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    let mut tidy = true;
    for segment in inner.split('/') {
        match segment {
            ".." => return RequestPath::Bad("the path holds '..'"),
            "" | "." if !inner.is_empty() => tidy = false,
            _ => {}
        }
    }
    let trailing_slash = decoded.ends_with('/') || inner.is_empty();
    let rel = if tidy {
        match &decoded {
            Cow::Borrowed(d) => {
                let start = usize::from(d.starts_with('/'));
                Cow::Borrowed(&d[start..start + inner.len()])
            }
            Cow::Owned(_) => Cow::Owned(inner.to_string()),
        }
    } else {
        let parts: Vec<&str> = inner
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        Cow::Owned(parts.join("/"))
    };
    let trailing_slash = trailing_slash || rel.is_empty();
    RequestPath::Clean {
        rel,
        trailing_slash,
    }
}

/// What the rules picked.
enum Pick<'s> {
    File(&'s str, &'s SiteFile, StatusCode),
    Redirect,
    BuiltIn404,
}

fn pick<'s>(site: &'s Site, rel: &str, trailing_slash: bool, spa: bool) -> Pick<'s> {
    let find = |p: &str| site.files.get_key_value(p).map(|(k, f)| (&**k, f));
    let index = || {
        if rel.is_empty() {
            Cow::Borrowed("index.html")
        } else {
            Cow::Owned(format!("{rel}/index.html"))
        }
    };
    if trailing_slash {
        if let Some((k, f)) = find(&index()) {
            return Pick::File(k, f, StatusCode::OK);
        }
    } else {
        if let Some((k, f)) = find(rel) {
            return Pick::File(k, f, StatusCode::OK);
        }
        if find(&index()).is_some() {
            return Pick::Redirect;
        }
        if let Some((k, f)) = find(&format!("{rel}.html")) {
            return Pick::File(k, f, StatusCode::OK);
        }
    }
    if spa && let Some((k, f)) = find("index.html") {
        return Pick::File(k, f, StatusCode::OK);
    }
    if let Some((k, f)) = find("404.html") {
        return Pick::File(k, f, StatusCode::NOT_FOUND);
    }
    Pick::BuiltIn404
}

/// A short plain-text answer.
pub fn plain(status: StatusCode, text: impl Into<Bytes>) -> SiteResponse {
    let mut res = Response::new(ResponseBody::from(text.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// Answers `method path` for the deployment of `route`.
pub async fn serve(
    state: &AppState,
    route: &Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> SiteResponse {
    if method != Method::GET && method != Method::HEAD {
        let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    let (rel, trailing_slash) = match clean_path(uri.path()) {
        RequestPath::Clean {
            rel,
            trailing_slash,
        } => (rel, trailing_slash),
        RequestPath::Bad(why) => {
            return plain(StatusCode::BAD_REQUEST, format!("bad request: {why}\n"));
        }
    };
    let site = match state
        .site_cache
        .site(&state.store, &route.deployment_id)
        .await
    {
        Ok(site) => site,
        Err(e) => {
            tracing::error!(deployment = %route.deployment_id, error = %e, "manifest unavailable");
            return plain(
                StatusCode::BAD_GATEWAY,
                "the deployment's files are unavailable\n",
            );
        }
    };
    match pick(&site, &rel, trailing_slash, route.spa) {
        Pick::Redirect => {
            let location = match uri.query() {
                Some(q) => format!("{}/?{q}", uri.path()),
                None => format!("{}/", uri.path()),
            };
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
            if let Ok(location) = HeaderValue::try_from(location) {
                res.headers_mut().insert(header::LOCATION, location);
            }
            res
        }
        Pick::BuiltIn404 => super::no_such_page(),
        Pick::File(path, file, status) => {
            file_response(state, route, path, file, status, method, headers).await
        }
    }
}

async fn file_response(
    state: &AppState,
    route: &Route,
    path: &str,
    file: &SiteFile,
    status: StatusCode,
    method: &Method,
    headers: &HeaderMap,
) -> SiteResponse {
    let whole = status == StatusCode::OK;
    // A range names bytes of the file as stored, so it is always served as stored.
    let range = if whole {
        requested_range(headers, file.size)
    } else {
        Range::Whole
    };
    let accepted = match range {
        Range::Whole => accepted_encoding(headers),
        _ => Encoding::Identity,
    };
    let encoding = state.site_cache.encoding_for(file, accepted);
    let etag = file.etag(encoding);
    let cache = if !whole {
        NO_CACHE
    } else if file.html || !route.immutable {
        HTML_CACHE
    } else {
        IMMUTABLE_CACHE
    };
    let mut res = Response::new(ResponseBody::empty());
    let h = res.headers_mut();
    h.reserve(10);
    h.insert(header::CONTENT_TYPE, file.content_type.clone());
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, cache);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    if file.compressible {
        h.insert(header::VARY, ACCEPT_ENCODING);
    }
    if let Some(value) = encoding.header() {
        h.insert(header::CONTENT_ENCODING, value);
    }
    if whole {
        h.insert(header::ACCEPT_RANGES, BYTES);
        if if_none_match(headers, etag) {
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            return res;
        }
    }
    let (status, start, end) = match range {
        Range::Unsatisfiable => {
            *res.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            set(
                &mut res,
                header::CONTENT_RANGE,
                format!("bytes */{}", file.size),
            );
            return res;
        }
        Range::Part(a, b) => {
            set(
                &mut res,
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{}", file.size),
            );
            (StatusCode::PARTIAL_CONTENT, a, b + 1)
        }
        Range::Whole => (status, 0, file.size),
    };
    *res.status_mut() = status;
    // HEAD gets the headers of GET; without the body when its length is known.
    if method == Method::HEAD && encoding == Encoding::Identity {
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        return res;
    }
    if encoding == Encoding::Identity
        && let Some(open) = state.site_cache.file(&route.deployment_id, path, file)
    {
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        *res.body_mut() = ResponseBody::File(FileBody {
            file: open,
            offset: start,
            len: end - start,
        });
        return res;
    }
    let body = match state
        .site_cache
        .body(&state.store, &route.deployment_id, path, file, encoding)
        .await
    {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(deployment = %route.deployment_id, path, error = %e, "file unavailable");
            return plain(StatusCode::BAD_GATEWAY, "the file is unavailable\n");
        }
    };
    let body = if encoding != Encoding::Identity || (start == 0 && end == body.len() as u64) {
        body
    } else {
        body.slice(start as usize..(end as usize).min(body.len()))
    };
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if method != Method::HEAD {
        *res.body_mut() = ResponseBody::from(body);
    }
    res
}

const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("accept-encoding");
const BYTES: HeaderValue = HeaderValue::from_static("bytes");

fn set(res: &mut SiteResponse, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        res.headers_mut().insert(name, value);
    }
}

/// The best encoding `Accept-Encoding` allows: brotli, then gzip, else none.
fn accepted_encoding(headers: &HeaderMap) -> Encoding {
    let (mut br, mut gzip) = (false, false);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            match name {
                "br" => br = true,
                "gzip" | "x-gzip" => gzip = true,
                "*" => (br, gzip) = (true, true),
                _ => {}
            }
        }
    }
    if br {
        Encoding::Brotli
    } else if gzip {
        Encoding::Gzip
    } else {
        Encoding::Identity
    }
}

fn if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t.as_bytes() == etag || t == "*")
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
