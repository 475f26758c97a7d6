//! Router tests with `oneshot`: every validation rule of API.md answered with 422 and
//! the field at fault, without a socket in between.

mod common;

use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt;
use scalemesh::app::{self, AppState};
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    router: axum::Router,
    _dir: tempfile::TempDir,
    token: String,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::test_config(dir.path());
        config.builder.allow_local_git = false;
        let state = AppState::build(config).await.unwrap();
        let router = app::router(state);
        let mut h = Harness {
            router,
            _dir: dir,
            token: String::new(),
        };
        let (status, body) = h
            .send(
                "POST",
                "/api/v1/auth/signup",
                Some(json!({"email": "a@example.com", "password": "password123"})),
            )
            .await;
        assert_eq!(status, 201);
        h.token = body["token"].as_str().unwrap().to_string();
        h
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, common::BASE);
        if !self.token.is_empty() {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn expect_field(&self, method: &str, path: &str, body: Value, field: &str) {
        let (status, resp) = self.send(method, path, Some(body.clone())).await;
        assert_eq!(status, 422, "{body} → {resp}");
        assert_eq!(resp["error"]["code"], "validation_failed", "{resp}");
        assert_eq!(resp["error"]["field"], field, "{body} → {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}

fn project(name: &str) -> Value {
    json!({"name": name, "git_url": "https://git.example.com/a/b.git"})
}

#[tokio::test]
async fn project_names_follow_the_rules() {
    let h = Harness::new().await;
    let long = "a".repeat(64);
    for bad in [
        "",
        "-web",
        "web-",
        "Web",
        "my_site",
        "my.site",
        "xn--web",
        "ab--c",
        "api",
        "www",
        "admin",
        "a b",
        "web;rm",
        "../web",
        "wéb",
        long.as_str(),
        "\u{1b}[31mred",
    ] {
        h.expect_field("POST", "/api/v1/projects", project(bad), "name")
            .await;
    }
    let max = "a".repeat(63);
    for good in ["a", "web-2", "a-b--c", max.as_str()] {
        let (status, body) = h
            .send("POST", "/api/v1/projects", Some(project(good)))
            .await;
        assert_eq!(status, 201, "{good}: {body}");
    }
}

#[tokio::test]
async fn git_urls_follow_the_rules() {
    let h = Harness::new().await;
    for bad in [
        "file:///etc",
        "/srv/repo",
        "./repo",
        "--upload-pack=touch /tmp/x",
        "-x",
        "http://git.example.com/a",
        "ftp://h/a",
        "ext::sh -c id",
        "https://",
        "git@host:",
        "https://host/a b",
        "https://-oProxyCommand=x/a",
        "https://h/\u{0}",
    ] {
        let mut body = project("web");
        body["git_url"] = json!(bad);
        h.expect_field("POST", "/api/v1/projects", body, "git_url")
            .await;
    }
    for good in [
        "https://github.com/a/b.git",
        "ssh://git@host:22/a/b",
        "git@github.com:a/b.git",
    ] {
        let mut body = project(&format!("p{}", good.len()));
        body["git_url"] = json!(good);
        let (status, resp) = h.send("POST", "/api/v1/projects", Some(body)).await;
        assert_eq!(status, 201, "{good}: {resp}");
    }
}

#[tokio::test]
async fn other_project_fields_follow_the_rules() {
    let h = Harness::new().await;
    let cases: Vec<(&str, Value)> = vec![
        ("env", json!({"env": {"1BAD": "x"}})),
        ("env", json!({"env": {"A-B": "x"}})),
        ("env", json!({"env": {"": "x"}})),
        ("env", json!({"env": {"A B": "x"}})),
        ("env.OK", json!({"env": {"OK": 5}})),
        (
            "production_branch",
            json!({"production_branch": "--upload-pack"}),
        ),
        ("production_branch", json!({"production_branch": "a..b"})),
        ("root_dir", json!({"root_dir": "../other"})),
        ("root_dir", json!({"root_dir": "/etc"})),
        ("output_dir", json!({"output_dir": "../../etc"})),
        ("image", json!({"image": "--privileged"})),
        ("image", json!({"image": "Node:22"})),
        ("spa", json!({"spa": "yes"})),
        ("install_command", json!({"install_command": "a\u{0}b"})),
        ("surprise", json!({"surprise": 1})),
    ];
    for (field, extra) in cases {
        let mut body = project("web");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        h.expect_field("POST", "/api/v1/projects", body, field)
            .await;
    }
    let (status, _) = h
        .send("POST", "/api/v1/projects", Some(project("web")))
        .await;
    assert_eq!(status, 201);
    h.expect_field(
        "PATCH",
        "/api/v1/projects/web",
        json!({"git_url": "file:///x"}),
        "git_url",
    )
    .await;
    h.expect_field(
        "PATCH",
        "/api/v1/projects/web",
        json!({"root_dir": "a/../../b"}),
        "root_dir",
    )
    .await;
    h.expect_field(
        "PATCH",
        "/api/v1/projects/web",
        json!({"name": "x"}),
        "name",
    )
    .await;
    h.expect_field(
        "PUT",
        "/api/v1/projects/web/env",
        json!({"BAD KEY": "1"}),
        "env",
    )
    .await;
    h.expect_field(
        "POST",
        "/api/v1/projects/web/deployments",
        json!({"ref": "-x"}),
        "ref",
    )
    .await;
}

#[tokio::test]
async fn accounts_follow_the_rules() {
    let h = Harness::new().await;
    for (field, body) in [
        (
            "email",
            json!({"email": "not-an-email", "password": "password123"}),
        ),
        ("email", json!({"email": "a@b", "password": "password123"})),
        (
            "email",
            json!({"email": "a b@c.de", "password": "password123"}),
        ),
        (
            "password",
            json!({"email": "new@example.com", "password": "short"}),
        ),
        ("password", json!({"email": "new@example.com"})),
    ] {
        h.expect_field("POST", "/api/v1/auth/signup", body, field)
            .await;
    }
}

#[tokio::test]
async fn local_git_needs_the_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(dir.path());
    assert!(config.builder.allow_local_git);
    let router = app::router(AppState::build(config).await.unwrap());
    let signup = Request::post("/api/v1/auth/signup")
        .header(header::HOST, common::BASE)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"email": "a@example.com", "password": "password123"}).to_string(),
        ))
        .unwrap();
    let resp = router.clone().oneshot(signup).await.unwrap();
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let token = body["token"].as_str().unwrap();
    let create = Request::post("/api/v1/projects")
        .header(header::HOST, common::BASE)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"name": "local", "git_url": "file:///srv/repo"}).to_string(),
        ))
        .unwrap();
    let resp = router.oneshot(create).await.unwrap();
    assert_eq!(
        resp.status(),
        201,
        "file:// is allowed with builder.allow_local_git"
    );
}
