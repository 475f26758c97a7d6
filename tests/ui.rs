//! Router tests of the web UI: every page renders what the user must see, forms reject
//! bad input with the message, a form without its CSRF token gets 403, and user text is
//! escaped.

mod common;

use common::{Backend, TestServer};
use reqwest::Method;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

/// A browser-like session: keeps the cookies the server sets.
struct Session<'a> {
    srv: &'a TestServer,
    cookies: Vec<(String, String)>,
}

impl<'a> Session<'a> {
    fn new(srv: &'a TestServer) -> Self {
        Session {
            srv,
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(SET_COOKIE) {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !val.is_empty() {
                self.cookies.push((k.to_string(), val.to_string()));
            }
        }
    }

    fn csrf(&self) -> String {
        self.cookies
            .iter()
            .find(|(k, _)| k == "scalemesh_csrf")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    async fn get(&mut self, path: &str) -> (u16, String, Option<String>) {
        let resp = self
            .srv
            .request(Method::GET, path)
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&resp);
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        (status, resp.text().await.unwrap(), location)
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String, Option<String>) {
        let resp = self
            .srv
            .request(Method::POST, path)
            .header(COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep(&resp);
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        (status, resp.text().await.unwrap(), location)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_forms_csrf_and_escaping() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let mut s = Session::new(&srv);

    let (status, _, location) = s.get("/").await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/setup")),
        "first run goes to setup"
    );
    let (status, page, _) = s.get("/setup").await;
    assert_eq!(status, 200);
    assert!(page.contains("Create the admin account"));
    let csrf = s.csrf();
    assert_eq!(csrf.len(), 32);

    let (status, _, _) = s
        .post(
            "/setup",
            &[("email", "me@example.com"), ("password", "a-long-password")],
        )
        .await;
    assert_eq!(status, 403, "no CSRF token, no account");
    let (status, page, _) = s
        .post(
            "/setup",
            &[
                ("csrf", &csrf),
                ("email", "me@example.com"),
                ("password", "short"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("must be at least 8 characters"), "{page}");
    let (status, _, location) = s
        .post(
            "/setup",
            &[
                ("csrf", &csrf),
                ("email", "me@example.com"),
                ("password", "a-long-password"),
            ],
        )
        .await;
    assert_eq!((status, location.as_deref()), (303, Some("/")));
    let session = s
        .cookies
        .iter()
        .find(|(k, _)| k == "scalemesh_session")
        .expect("a session cookie");
    assert!(session.1.starts_with("sms_"));

    let (_, page, _) = s.get("/").await;
    assert!(page.contains("No projects yet") && page.contains("me@example.com"));
    let (_, page, _) = s.get("/projects/new").await;
    assert!(
        page.contains("Git repository URL") && page.contains("npm ci"),
        "detected defaults are explained"
    );

    // Inline validation errors, then a project with hostile text in its fields.
    let (status, page, _) = s
        .post(
            "/projects/new",
            &[
                ("csrf", &csrf),
                ("name", "Bad Name"),
                ("git_url", "https://h/x"),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        page.contains("name: may hold only lowercase") && page.contains("aria-invalid=\"true\""),
        "{page}"
    );
    let (status, page, _) = s
        .post(
            "/projects/new",
            &[("csrf", &csrf), ("name", "web"), ("git_url", "ftp://x")],
        )
        .await;
    assert!(
        status == 200 && page.contains("git_url: must be an https://"),
        "{page}"
    );
    let (status, _, location) = s
        .post(
            "/projects/new",
            &[
                ("csrf", &csrf),
                ("name", "web"),
                ("git_url", "https://user:hunter2@git.example.com/a.git"),
                ("build_command", "echo '<script>alert(1)</script>'"),
                ("env", "API_KEY=secret-value\nNODE_ENV=production"),
            ],
        )
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/projects/web?notice=created"))
    );
    let (_, page, _) = s.get("/projects/web?notice=created").await;
    assert!(page.contains("Project created") && page.contains("https://***@git.example.com/a.git"));
    assert!(!page.contains("hunter2"));
    let (_, page, _) = s.get("/projects/web?notice=<b>injected</b>").await;
    assert!(!page.contains("<b>injected</b>"), "notices are fixed texts");
    let (_, page, _) = s.get("/projects/web/settings").await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") || page.contains("&#60;script&#62;"),
        "escaped"
    );
    assert!(!page.contains("<script>alert(1)</script>"));
    assert!(
        page.contains("API_KEY, NODE_ENV") && !page.contains("secret-value"),
        "env values are write-only"
    );

    // Deploy, the deployment page, cancel.
    let (status, _, location) = s.post("/projects/web/deploy", &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    let deployment = location.unwrap();
    assert!(deployment.starts_with("/deployments/"));
    let (_, page, _) = s.get(&deployment).await;
    assert!(page.contains("Build log") && page.contains("queued") && page.contains("/logs/stream"));
    let (status, _, _) = s.post(&format!("{deployment}/cancel"), &[]).await;
    assert_eq!(status, 403);
    let (status, _, _) = s
        .post(&format!("{deployment}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(status, 303);
    let (_, page, _) = s.get(&deployment).await;
    assert!(page.contains("canceled"));
    let (_, page, _) = s.get("/projects/web").await;
    assert!(page.contains("canceled") && page.contains("Redeploy"));

    // Tokens: shown once, then listed by name only.
    let (_, page, _) = s
        .post("/tokens", &[("csrf", &csrf), ("name", "<i>ci</i>")])
        .await;
    assert!(page.contains("shown only once") && page.contains("smt_"));
    assert!(page.contains("&lt;i&gt;ci&lt;/i&gt;") || page.contains("&#60;i&#62;"));
    let (_, page, _) = s.get("/tokens").await;
    assert!(!page.contains("smt_"));

    // Settings: delete needs the typed name.
    let (_, page, _) = s
        .post(
            "/projects/web/delete",
            &[("csrf", &csrf), ("confirm", "nope")],
        )
        .await;
    assert!(
        page.contains("type &#39;web&#39; to delete")
            || page.contains("type 'web' to delete")
            || page.contains("type &#x27;web&#x27;"),
        "{page}"
    );
    let (status, _, location) = s
        .post(
            "/projects/web/delete",
            &[("csrf", &csrf), ("confirm", "web")],
        )
        .await;
    assert_eq!(
        (status, location.as_deref()),
        (303, Some("/?notice=deleted"))
    );
    let (status, _, _) = s.get("/projects/web").await;
    assert_eq!(status, 404);

    // Static files with cache headers; logout ends the session.
    let resp = srv
        .request(Method::GET, "/static/app.css")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "public, max-age=86400");
    assert_eq!(resp.headers()["content-type"], "text/css; charset=utf-8");
    let (status, _, location) = s.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!((status, location.as_deref()), (303, Some("/login")));
    let (status, _, location) = s.get("/").await;
    assert_eq!((status, location.as_deref()), (303, Some("/login")));
    let (_, page, _) = s.get("/login").await;
    assert!(page.contains("Log in"));
    let (_, page, _) = s
        .post(
            "/login",
            &[
                ("csrf", &csrf),
                ("email", "me@example.com"),
                ("password", "wrong-password"),
            ],
        )
        .await;
    assert!(page.contains("email or password is wrong"));
    srv.stop().await;
}
