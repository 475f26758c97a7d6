//! Which site a request is for, from its `Host` header (HTTP/1.1) or `:authority`
//! (HTTP/2): lowercased, port and a trailing dot removed, then matched exactly.
//!
//! Only a request whose host is exactly `base_domain` ever reaches the dashboard;
//! everything else is a deployment's hostname or nothing.

use std::borrow::Cow;

use axum::http::{HeaderMap, Uri, header};

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// Exactly `base_domain`: the dashboard and the API.
    Dashboard,
    /// `<label>.<base_domain>`: look `label` up in the route table. Borrowed from the
    /// request when it was already lowercase, as it nearly always is.
    Site(Cow<'a, str>),
    /// Any other well-formed host: no deployment is there.
    Elsewhere,
}

/// Why a request's host was refused (400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has no Host header")]
    Missing,
    #[error("the request has more than one Host header")]
    Several,
    #[error("the Host header is not a valid host name")]
    Invalid,
    #[error("the request target names a different host than the Host header")]
    Mismatch,
}

/// Classifies a request by host against `base_domain` (already lowercase).
pub fn classify<'a>(
    headers: &'a HeaderMap,
    uri: &'a Uri,
    base_domain: &str,
) -> Result<Target<'a>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let header_host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Several);
    }
    let header_host = match header_host {
        Some(v) => Some(normalize(v.to_str().map_err(|_| HostError::Invalid)?)?),
        None => None,
    };
    let uri_host = match uri.authority() {
        Some(a) => Some(normalize(a.as_str())?),
        None => None,
    };
    let host = match (header_host, uri_host) {
        (Some(h), Some(u)) if h != u => return Err(HostError::Mismatch),
        (Some(h), _) => h,
        (None, Some(u)) => u,
        (None, None) => return Err(HostError::Missing),
    };
    if host == base_domain {
        return Ok(Target::Dashboard);
    }
    let label_len = match host
        .strip_suffix(base_domain)
        .and_then(|rest| rest.strip_suffix('.'))
    {
        Some(label) if crate::names::is_dns_label(label) => label.len(),
        _ => return Ok(Target::Elsewhere),
    };
    Ok(Target::Site(match host {
        Cow::Borrowed(h) => Cow::Borrowed(&h[..label_len]),
        Cow::Owned(mut h) => {
            h.truncate(label_len);
            Cow::Owned(h)
        }
    }))
}

/// `Example.COM.:8080` → `example.com`; refuses anything that is not a host name or
/// an IP literal. Allocates only when there is something to lowercase.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, HostError> {
    let raw = raw.rsplit('@').next().unwrap_or(raw);
    let host = if raw.starts_with('[') {
        let end = raw.find(']').ok_or(HostError::Invalid)?;
        let rest = &raw[end + 1..];
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return Err(HostError::Invalid);
        }
        return Ok(Cow::Owned(raw[..=end].to_ascii_lowercase()));
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return Err(HostError::Invalid),
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        Err(HostError::Invalid)
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Ok(Cow::Borrowed(host))
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_host(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn target(host: &str) -> Result<Target<'static>, HostError> {
        let (headers, uri) = (with_host(&[host]), Uri::from_static("/"));
        let target = classify(&headers, &uri, "sm.test")?;
        Ok(match target {
            Target::Site(label) => Target::Site(label.into_owned().into()),
            Target::Dashboard => Target::Dashboard,
            Target::Elsewhere => Target::Elsewhere,
        })
    }

    #[test]
    fn routes_by_exact_host() {
        assert_eq!(target("sm.test"), Ok(Target::Dashboard));
        assert_eq!(target("SM.Test.:8080"), Ok(Target::Dashboard));
        assert_eq!(target("web.sm.test"), Ok(Target::Site("web".into())));
        assert_eq!(target("WEB.sm.test."), Ok(Target::Site("web".into())));
        assert_eq!(target("x.web.sm.test"), Ok(Target::Elsewhere));
        assert_eq!(target("web.sm.test.evil.com"), Ok(Target::Elsewhere));
        assert_eq!(target("evilsm.test"), Ok(Target::Elsewhere));
        assert_eq!(target("127.0.0.1:8080"), Ok(Target::Elsewhere));
        assert_eq!(target("[::1]:8080"), Ok(Target::Elsewhere));
        assert_eq!(
            target(&format!("{}.sm.test", "a".repeat(70))),
            Err(HostError::Invalid)
        );
        assert_eq!(target("a b.sm.test"), Err(HostError::Invalid));
        assert_eq!(target("sm.test:80:80"), Err(HostError::Invalid));
        assert_eq!(target(""), Err(HostError::Invalid));
    }

    #[test]
    fn refuses_ambiguous_requests() {
        let two = with_host(&["a.sm.test", "sm.test"]);
        assert_eq!(
            classify(&two, &Uri::from_static("/"), "sm.test"),
            Err(HostError::Several)
        );
        let absolute = Uri::from_static("http://other.sm.test/x");
        assert_eq!(
            classify(&with_host(&["sm.test"]), &absolute, "sm.test"),
            Err(HostError::Mismatch)
        );
        assert_eq!(
            classify(&HeaderMap::new(), &absolute, "sm.test"),
            Ok(Target::Site("other".into()))
        );
        assert_eq!(
            classify(&HeaderMap::new(), &Uri::from_static("/"), "sm.test"),
            Err(HostError::Missing)
        );
    }
}
