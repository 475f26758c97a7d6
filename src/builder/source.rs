//! Source: fetching one ref of a project's repository into a workspace with git2.
//!
//! No git binary and no shell: libgit2 runs in this process on the blocking pool. Only
//! the requested ref is fetched, shallow where the transport allows it; submodules are
//! never fetched. Credentials in the URL are handed to libgit2 through its credential
//! callback and never appear in a message: every error names the redacted URL.

use std::path::Path;

use git2::{AutotagOption, Cred, FetchOptions, Oid, RemoteCallbacks, Repository};

use crate::names::{GitUrlKind, check_git_url, redact_git_url};

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub commit_sha: String,
    /// First line of the commit message.
    pub message: String,
}

/// Why a source could not be fetched; the message is meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("branch or ref '{0}' not found in the repository")]
    RefNotFound(String),
    #[error("commit {0} not found on '{1}'")]
    CommitNotFound(String, String),
    #[error("repository not reachable: {0}")]
    Unreachable(String),
    #[error("repository refused the credentials: {0}")]
    Auth(String),
    #[error("{0}")]
    Refused(String),
    #[error("checkout failed: {0}")]
    Checkout(String),
}

/// Fetches `git_ref` (a branch, tag or full commit sha) of `url` into `dest` and checks
/// it out; `pinned` names the exact commit to take from that ref (a redeploy).
pub fn fetch(
    url: &str,
    git_ref: &str,
    pinned: Option<&str>,
    dest: &Path,
    allow_local: bool,
) -> Result<Checkout, SourceError> {
    let kind = check_git_url(url, allow_local).map_err(SourceError::Refused)?;
    let shown = redact_git_url(url);
    let (fetch_url, user, password) = split_credentials(url, kind);
    let repo =
        Repository::init(dest).map_err(|e| SourceError::Checkout(e.message().to_string()))?;
    let mut remote = repo
        .remote_anonymous(&fetch_url)
        .map_err(|e| SourceError::Refused(format!("bad URL {shown}: {}", e.message())))?;

    let is_sha = git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit());
    let target = "refs/scalemesh/target";
    let refspecs: Vec<String> = if is_sha {
        vec![format!("+{git_ref}:{target}")]
    } else {
        vec![
            format!("+refs/heads/{git_ref}:{target}"),
            format!("+refs/tags/{git_ref}:{target}"),
        ]
    };
    // A pinned commit may be behind the tip: fetch the whole branch history then.
    let depth = if pinned.is_some() || kind == GitUrlKind::Local {
        0
    } else {
        1
    };
    let mut last_err = None;
    for spec in &refspecs {
        let mut opts = fetch_options(user.clone(), password.clone(), depth);
        match remote.fetch(&[spec.as_str()], Some(&mut opts), None) {
            Ok(()) if repo.find_reference(target).is_ok() => {
                last_err = None;
                break;
            }
            Ok(()) => last_err = Some(SourceError::RefNotFound(git_ref.to_string())),
            Err(e) => {
                last_err = Some(classify(e, git_ref, &shown));
                if !matches!(last_err, Some(SourceError::RefNotFound(_))) {
                    break;
                }
            }
        }
    }
    if let Some(e) = last_err {
        return Err(e);
    }
    let tip = repo
        .find_reference(target)
        .and_then(|r| r.peel_to_commit())
        .map_err(|_| SourceError::RefNotFound(git_ref.to_string()))?;
    let commit = match pinned {
        Some(sha) => {
            let oid = Oid::from_str(sha)
                .map_err(|_| SourceError::CommitNotFound(sha.into(), git_ref.into()))?;
            repo.find_commit(oid)
                .map_err(|_| SourceError::CommitNotFound(sha.into(), git_ref.into()))?
        }
        None => tip,
    };
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.force();
    repo.checkout_tree(commit.as_object(), Some(&mut checkout))
        .and_then(|()| repo.set_head_detached(commit.id()))
        .map_err(|e| SourceError::Checkout(e.message().to_string()))?;
    let message = String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default())
        .chars()
        .take(500)
        .collect();
    Ok(Checkout {
        commit_sha: commit.id().to_string(),
        message,
    })
}

fn fetch_options<'a>(
    user: Option<String>,
    password: Option<String>,
    depth: i32,
) -> FetchOptions<'a> {
    let mut callbacks = RemoteCallbacks::new();
    let mut tries = 0;
    callbacks.credentials(move |_url, username_from_url, allowed| {
        tries += 1;
        if tries > 3 {
            return Err(git2::Error::from_str("authentication failed"));
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT)
            && let Some(u) = &user
        {
            return Cred::userpass_plaintext(u, password.as_deref().unwrap_or(""));
        }
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            return Cred::ssh_key_from_agent(username_from_url.unwrap_or("git"));
        }
        Err(git2::Error::from_str("the repository needs credentials"))
    });
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks)
        .download_tags(AutotagOption::None)
        .depth(depth);
    opts
}

/// Splits `https://user:pass@host/path` into the URL without credentials and them.
fn split_credentials(url: &str, kind: GitUrlKind) -> (String, Option<String>, Option<String>) {
    if kind != GitUrlKind::Https {
        return (url.to_string(), None, None);
    }
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() => {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let user = decode(u.username());
            let password = u.password().map(decode);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            (u.to_string(), Some(user), password)
        }
        _ => (url.to_string(), None, None),
    }
}

fn classify(e: git2::Error, git_ref: &str, shown: &str) -> SourceError {
    let msg = e.message().to_string();
    let lower = msg.to_lowercase();
    if e.code() == git2::ErrorCode::NotFound && lower.contains("ref")
        || lower.contains("couldn't find remote ref")
        || lower.contains("not our ref")
        || lower.contains("no matching")
    {
        return SourceError::RefNotFound(git_ref.to_string());
    }
    if e.code() == git2::ErrorCode::Auth
        || e.class() == git2::ErrorClass::Http && lower.contains("401")
    {
        return SourceError::Auth(shown.to_string());
    }
    // Never echo libgit2's text verbatim: it may hold the URL as typed.
    let detail = msg.replace(shown, "<url>");
    SourceError::Unreachable(format!("{shown} ({})", redact_all(&detail)))
}

/// Removes anything that looks like `user:pass@` from a message.
fn redact_all(s: &str) -> String {
    s.split(' ')
        .map(redact_git_url)
        .collect::<Vec<_>>()
        .join(" ")
}
