//! The names users give and the names ScaleMesh derives from them: project names,
//! hostnames, git refs and URLs, env keys, branch slugs.
//!
//! Everything here is pure and decides only "acceptable or not, and why"; callers turn
//! a `Err(reason)` into a 422 naming the field. Nothing accepted here can start with
//! `-` (so it never reads as an option), hold a control character, or climb out of a
//! directory.

/// Words that cannot be project names: they are, or may become, hostnames of ScaleMesh
/// itself, or would confuse users for one.
pub const RESERVED_NAMES: &[&str] = &[
    "admin",
    "api",
    "app",
    "assets",
    "auth",
    "cdn",
    "dashboard",
    "docs",
    "git",
    "login",
    "mail",
    "metrics",
    "new",
    "scalemesh",
    "static",
    "status",
    "www",
];

/// Longest project name the API accepts (one DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Whether `s` is one DNS label: 1–63 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks a project name against the rules of API.md.
pub fn check_project_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may hold only lowercase letters a-z, digits and '-'".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must not start or end with '-'".into());
    }
    if name.get(2..4) == Some("--") {
        return Err("must not have '--' at positions 3-4".into());
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!("'{name}' is reserved"));
    }
    Ok(())
}

/// Checks a git ref (branch, tag or commit) the way `git check-ref-format` would,
/// and refuses anything that could be read as an option.
pub fn check_git_ref(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("must not be empty".into());
    }
    if r.len() > 255 {
        return Err("must be at most 255 characters".into());
    }
    if r.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if r.chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c))
    {
        return Err("must not hold spaces, control characters or any of ~^:?*[\\".into());
    }
    if r.contains("..") || r.contains("@{") || r.contains("//") {
        return Err("must not contain '..', '@{' or '//'".into());
    }
    if r.starts_with('/') || r.ends_with('/') || r.ends_with('.') || r.ends_with(".lock") {
        return Err("must not start or end with '/', or end with '.' or '.lock'".into());
    }
    if r.split('/').any(|part| part.starts_with('.')) {
        return Err("no part may start with '.'".into());
    }
    Ok(())
}

/// Checks an env var key: `[A-Za-z_][A-Za-z0-9_]*`, at most 256 characters.
pub fn check_env_key(k: &str) -> Result<(), String> {
    let mut bytes = k.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') || k.len() > 256 {
        return Err(format!(
            "key '{}' must match [A-Za-z_][A-Za-z0-9_]* (at most 256 characters)",
            k.escape_debug()
        ));
    }
    Ok(())
}

/// A relative directory inside the repository or build (`root_dir`, `output_dir`).
pub fn check_relative_dir(d: &str) -> Result<(), String> {
    if d.len() > 512 {
        return Err("must be at most 512 characters".into());
    }
    if d.starts_with('/') || d.contains('\\') || d.chars().any(|c| c.is_control()) {
        return Err("must be a relative path without '\\' or control characters".into());
    }
    if d.split('/').any(|p| p == "..") {
        return Err("must not contain '..'".into());
    }
    if d.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    Ok(())
}

/// The kinds of git URL a project may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitUrlKind {
    Https,
    Ssh,
    /// `file://` or a local path; only with `builder.allow_local_git`.
    Local,
}

/// Checks a git URL; `allow_local` is `builder.allow_local_git`.
pub fn check_git_url(u: &str, allow_local: bool) -> Result<GitUrlKind, String> {
    if u.is_empty() {
        return Err("must not be empty".into());
    }
    if u.len() > 2048 {
        return Err("must be at most 2048 characters".into());
    }
    if u.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if u.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not hold spaces or control characters".into());
    }
    let kind = if let Some(rest) = u.strip_prefix("https://") {
        check_remote_host(rest)?;
        GitUrlKind::Https
    } else if let Some(rest) = u.strip_prefix("ssh://") {
        check_remote_host(rest)?;
        GitUrlKind::Ssh
    } else if let Some(rest) = u.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err("file:// URLs need an absolute path".into());
        }
        GitUrlKind::Local
    } else if u.starts_with('/') || u.starts_with("./") || u.starts_with("../") {
        GitUrlKind::Local
    } else if let Some((user_host, path)) = u.split_once(':')
        && !user_host.contains('/')
        && user_host.contains('@')
        && !path.is_empty()
    {
        check_remote_host(&format!("{user_host}/{path}"))?;
        GitUrlKind::Ssh
    } else {
        return Err("must be an https://, ssh:// or git@host:path URL".into());
    };
    if kind == GitUrlKind::Local && !allow_local {
        return Err(
            "file:// URLs and local paths are disabled (builder.allow_local_git = false)".into(),
        );
    }
    Ok(kind)
}

/// `rest` is what follows `scheme://`: `[user[:pass]@]host[:port]/path`.
fn check_remote_host(rest: &str) -> Result<(), String> {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    if host.is_empty() || host.starts_with('-') {
        return Err("needs a host name".into());
    }
    Ok(())
}

/// `git_url` with any credentials replaced by `***`, for every output and log line.
pub fn redact_git_url(u: &str) -> String {
    for scheme in ["https://", "http://", "ssh://"] {
        if let Some(rest) = u.strip_prefix(scheme) {
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            if let Some(at) = authority.rfind('@') {
                let userinfo = &authority[..at];
                let host = &authority[at + 1..];
                // An ssh user alone ("git@") is no secret; a password or an https
                // username (often a token) is.
                let kept = match (scheme, userinfo.split_once(':')) {
                    ("ssh://", None) => userinfo.to_string(),
                    ("ssh://", Some((user, _))) => format!("{user}:***"),
                    _ => "***".to_string(),
                };
                return format!("{scheme}{kept}@{host}{path}");
            }
            return u.to_string();
        }
    }
    u.to_string()
}

/// The slug of a branch for `<project>-git-<slug>`: lowercase, runs of other characters
/// turned into one `-`, trimmed so the whole label stays within 63 characters.
pub fn branch_slug(branch: &str, room: usize) -> String {
    let mut slug = String::new();
    for c in branch.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_matches('-').chars().take(room).collect();
    slug.trim_end_matches('-').to_string()
}

/// Length of a deployment's `short_id`.
pub const SHORT_ID_LEN: usize = 8;

/// Cuts `label` to one DNS label (63 characters) without a trailing `-`.
fn fit_label(label: String) -> String {
    if label.len() <= 63 {
        return label;
    }
    label[..63].trim_end_matches('-').to_string()
}

/// `<project>-<short_id>`, the hostname label of one deployment forever. A long project
/// name is cut so the label stays a DNS label; the short id is always whole.
pub fn deployment_label(project: &str, short_id: &str) -> String {
    let room = 63 - short_id.len() - 1;
    let project = project[..project.len().min(room)].trim_end_matches('-');
    format!("{project}-{short_id}")
}

/// `<project>-git-<branch-slug>`, the label of a branch's latest ready deployment.
pub fn branch_label(project: &str, branch: &str) -> String {
    fit_label(format!("{project}-git-{}", branch_slug(branch, 63)))
}

/// Checks a container image reference (`node:22`, `ghcr.io/a/b@sha256:…`).
pub fn check_image(image: &str) -> Result<(), String> {
    let ok = !image.is_empty()
        && image.len() <= 255
        && !image.starts_with('-')
        && image
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"./:@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("must be an image reference like node:22-bookworm-slim (a-z 0-9 . / : @ _ -)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names() {
        for ok in ["a", "my-site", "a1", "x".repeat(63).as_str(), "ab-c--d"] {
            assert!(check_project_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "my_site",
            "a.b",
            "xn--abc",
            "ab--c",
            "api",
            "www",
            "admin",
            "a b",
            "é",
            &"x".repeat(64),
            "a;b",
            "../x",
        ] {
            assert!(check_project_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn git_urls() {
        assert_eq!(
            check_git_url("https://github.com/a/b.git", false),
            Ok(GitUrlKind::Https)
        );
        assert_eq!(
            check_git_url("ssh://git@host/a/b", false),
            Ok(GitUrlKind::Ssh)
        );
        assert_eq!(
            check_git_url("git@github.com:a/b.git", false),
            Ok(GitUrlKind::Ssh)
        );
        assert_eq!(
            check_git_url("file:///srv/repo", true),
            Ok(GitUrlKind::Local)
        );
        assert_eq!(check_git_url("/srv/repo", true), Ok(GitUrlKind::Local));
        for bad in [
            "file:///srv/repo",
            "/srv/repo",
            "--upload-pack=touch /tmp/x",
            "-u",
            "http://example.com/a",
            "ftp://x/y",
            "https://",
            "https://-oProxyCommand=x/y",
            "https://host/a b",
            "https://host/a\nb",
            "ext::sh -c touch% /tmp/pwned",
            "git@host:",
            "",
        ] {
            assert!(check_git_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_git_url("file://relative", true).is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_git_url("https://user:ghp_secret@github.com/a/b"),
            "https://***@github.com/a/b"
        );
        assert_eq!(redact_git_url("https://TOKEN@host/a"), "https://***@host/a");
        assert_eq!(redact_git_url("https://host/a@b"), "https://host/a@b");
        assert_eq!(redact_git_url("ssh://git@host/a"), "ssh://git@host/a");
        assert_eq!(
            redact_git_url("ssh://git:pw@host/a"),
            "ssh://git:***@host/a"
        );
        assert_eq!(redact_git_url("git@host:a/b"), "git@host:a/b");
    }

    #[test]
    fn refs_and_keys_and_dirs() {
        for ok in ["main", "feature/x", "v1.2.3", "0123abcd"] {
            assert!(check_git_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "--upload-pack",
            "a..b",
            "a b",
            "a;b~",
            "/a",
            "a/",
            "x.lock",
            ".a",
            "a/.b",
            "a\u{1b}b",
        ] {
            assert!(check_git_ref(bad).is_err(), "{bad}");
        }
        assert!(check_env_key("NODE_ENV").is_ok());
        assert!(check_env_key("_x1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "A=B", "É"] {
            assert!(check_env_key(bad).is_err(), "{bad}");
        }
        assert!(check_relative_dir("apps/web").is_ok());
        assert!(check_relative_dir(".").is_ok());
        for bad in ["/etc", "../x", "a/../../b", "a\\b", "-x"] {
            assert!(check_relative_dir(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_stay_dns_labels() {
        assert_eq!(deployment_label("web", "abcd1234"), "web-abcd1234");
        let long = "a".repeat(63);
        let l = deployment_label(&long, "abcd1234");
        assert_eq!(l.len(), 63);
        assert!(l.ends_with("-abcd1234") && is_dns_label(&l));
        assert_eq!(branch_label("web", "feature/X"), "web-git-feature-x");
        assert!(is_dns_label(&branch_label(&long, "main")));
        assert!(check_image("node:22-bookworm-slim").is_ok());
        assert!(check_image("-v").is_err());
        assert!(check_image("a b").is_err());
    }

    #[test]
    fn slugs() {
        assert_eq!(branch_slug("feature/New_Thing", 40), "feature-new-thing");
        assert_eq!(branch_slug("--x--", 40), "x");
        assert_eq!(branch_slug("abcdef", 3), "abc");
        assert_eq!(branch_slug("ab-cdef", 3), "ab");
    }
}
