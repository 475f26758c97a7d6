//! End-to-end tests of the API contract (API.md: Auth, Projects, Deployments, System,
//! Hosts) against a real server on a real socket, once on SQLite and once on PostgreSQL.

mod common;

use common::{Backend, TestServer, error_code};
use reqwest::Method;
use serde_json::{Value, json};

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(super::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $name() { super::$name(super::Backend::Postgres).await })*
        }
    };
}

on_both_databases!(
    accounts_and_sessions,
    api_tokens,
    login_is_rate_limited,
    projects_crud,
    deployments_records,
    users_cannot_see_each_other,
    system_routes,
    hosts_split_dashboard_from_sites,
    errors_are_json,
);

async fn accounts_and_sessions(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let token = srv.signup("Admin@Example.com").await;
    let (status, me) = srv
        .call(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        me["user"]["email"], "admin@example.com",
        "email is lowercased"
    );
    assert_eq!(me["user"]["is_admin"], true, "the first account is admin");

    // Signup is closed once an account exists.
    let (status, body) = srv
        .call(
            Method::POST,
            "/api/v1/auth/signup",
            None,
            Some(json!({"email": "second@example.com", "password": "password123"})),
        )
        .await;
    assert_eq!((status, error_code(&body).as_str()), (403, "signup_closed"));

    // The same 401 for a wrong password and for an unknown email.
    let (s1, wrong) = srv
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "admin@example.com", "password": "wrong-password"})),
        )
        .await;
    let (s2, unknown) = srv
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "nobody@example.com", "password": "wrong-password"})),
        )
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong, unknown);
    assert_eq!(error_code(&wrong), "invalid_credentials");

    let (status, login) = srv
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "ADMIN@example.com", "password": "password123"})),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let second = login["token"].as_str().unwrap().to_string();
    assert_ne!(second, token);

    // Logout revokes only the token used.
    let (status, _) = srv
        .call(Method::POST, "/api/v1/auth/logout", Some(&second), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = srv
        .call(Method::GET, "/api/v1/me", Some(&second), None)
        .await;
    assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));
    let (status, _) = srv
        .call(Method::GET, "/api/v1/me", Some(&token), None)
        .await;
    assert_eq!(status, 200);

    for bad in [None, Some("sms_nonsense"), Some("smt_0000"), Some("")] {
        let (status, body) = srv.call(Method::GET, "/api/v1/me", bad, None).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (401, "unauthorized"),
            "{bad:?}"
        );
    }
    srv.stop().await;
}

async fn api_tokens(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let login = srv.signup("a@example.com").await;
    let (status, created) = srv
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&login),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["token"].as_str().unwrap().to_string();
    assert_eq!(created["name"], "ci");

    let (status, me) = srv
        .call(Method::GET, "/api/v1/me", Some(&secret), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["user"]["email"], "a@example.com");

    let (_, list) = srv
        .call(Method::GET, "/api/v1/tokens", Some(&login), None)
        .await;
    let tokens = list["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(
        tokens[0].get("token").is_none(),
        "the secret is shown only once"
    );
    assert!(
        tokens[0]["last_used_at"].is_string(),
        "use is recorded: {list}"
    );

    let (status, body) = srv
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&login),
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("name"))
    );

    let id = created["id"].as_i64().unwrap();
    let (status, _) = srv
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&login),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = srv
        .call(Method::GET, "/api/v1/me", Some(&secret), None)
        .await;
    assert_eq!(status, 401, "a revoked token stops working");
    let (status, _) = srv
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&login),
            None,
        )
        .await;
    assert_eq!(status, 404);

    srv.stop().await;
}

async fn login_is_rate_limited(backend: Backend) {
    let srv = TestServer::start(backend).await;
    srv.signup("a@example.com").await;
    // Fired at once, so the limiter's slow refill cannot blur the count.
    let attempts = (0..15).map(|_| {
        srv.call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "a@example.com", "password": "not-the-password"})),
        )
    });
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let denied = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(denied + limited, 15, "{statuses:?}");
    assert!(
        (10..=11).contains(&denied),
        "10 attempts a minute per account: {statuses:?}"
    );
    let resp = srv
        .request(Method::POST, "/api/v1/auth/login")
        .json(&json!({"email": "a@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "even the right password waits");
    assert!(resp.headers().contains_key("retry-after"));
    srv.stop().await;
}

async fn projects_crud(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let t = srv.signup("a@example.com").await;
    let p = srv
        .create_project(
            &t,
            json!({
                "name": "web",
                "git_url": "https://user:s3cret-token@git.example.com/a/web.git",
                "env": {"API_KEY": "value-never-returned", "NODE_ENV": "production"},
            }),
        )
        .await;
    assert_eq!(p["name"], "web");
    assert_eq!(p["git_url"], "https://***@git.example.com/a/web.git");
    assert_eq!(p["production_branch"], "main");
    assert_eq!(p["root_dir"], ".");
    assert_eq!(p["spa"], false);
    assert_eq!(p["output_dir"], Value::Null);
    assert_eq!(p["env_keys"], json!(["API_KEY", "NODE_ENV"]));
    assert_eq!(p["url"], "http://web.sm.test:8080");
    assert_eq!(p["production_deployment_id"], Value::Null);

    let (status, body) = srv
        .call(
            Method::POST,
            "/api/v1/projects",
            Some(&t),
            Some(json!({"name": "web", "git_url": "https://git.example.com/b"})),
        )
        .await;
    assert_eq!((status, error_code(&body).as_str()), (409, "name_taken"));

    let (status, got) = srv
        .call(Method::GET, "/api/v1/projects/web", Some(&t), None)
        .await;
    assert_eq!(status, 200);
    let text = got.to_string();
    assert!(
        !text.contains("s3cret") && !text.contains("value-never-returned"),
        "{text}"
    );

    let (status, patched) = srv
        .call(
            Method::PATCH,
            "/api/v1/projects/web",
            Some(&t),
            Some(json!({
                "build_command": "npm run export", "output_dir": "out", "spa": true,
                "production_branch": "release",
            })),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["build_command"], "npm run export");
    assert_eq!(patched["output_dir"], "out");
    assert_eq!(patched["spa"], true);
    assert_eq!(patched["production_branch"], "release");
    let (_, cleared) = srv
        .call(
            Method::PATCH,
            "/api/v1/projects/web",
            Some(&t),
            Some(json!({"output_dir": null})),
        )
        .await;
    assert_eq!(cleared["output_dir"], Value::Null, "null clears");
    assert_eq!(cleared["build_command"], "npm run export", "absent stays");
    let (status, body) = srv
        .call(
            Method::PATCH,
            "/api/v1/projects/web",
            Some(&t),
            Some(json!({"name": "other"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("name"))
    );

    let (status, env) = srv
        .call(
            Method::PUT,
            "/api/v1/projects/web/env",
            Some(&t),
            Some(json!({"ONLY": "1"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(env, json!({"env_keys": ["ONLY"]}));

    srv.create_project(
        &t,
        json!({"name": "api-docs", "git_url": "git@github.com:a/docs.git"}),
    )
    .await;
    let (_, list) = srv
        .call(Method::GET, "/api/v1/projects", Some(&t), None)
        .await;
    let names: Vec<&str> = list["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api-docs", "web"]);

    let (_, d) = srv
        .call(
            Method::POST,
            "/api/v1/projects/web/deployments",
            Some(&t),
            None,
        )
        .await;
    let (status, _) = srv
        .call(Method::DELETE, "/api/v1/projects/web", Some(&t), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = srv
        .call(Method::GET, "/api/v1/projects/web", Some(&t), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{}", d["id"].as_str().unwrap()),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 404, "its deployments go with it");
    srv.stop().await;
}

async fn deployments_records(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let t = srv.signup("a@example.com").await;
    srv.create_project(
        &t,
        json!({"name": "site", "git_url": "https://git.example.com/site"}),
    )
    .await;

    let (status, first) = srv
        .call(
            Method::POST,
            "/api/v1/projects/site/deployments",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["status"], "queued");
    assert_eq!(first["ref"], "main");
    assert_eq!(first["project"], "site");
    assert_eq!(first["production"], false);
    let short = first["short_id"].as_str().unwrap();
    assert_eq!(short.len(), 8);
    assert!(
        short
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    assert_eq!(first["url"], format!("http://site-{short}.sm.test:8080"));

    let (status, second) = srv
        .call(
            Method::POST,
            "/api/v1/projects/site/deployments",
            Some(&t),
            Some(json!({"ref": "feature/login"})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(second["ref"], "feature/login");
    for bad in ["--upload-pack=x", "a..b", "a b", ""] {
        let (status, body) = srv
            .call(
                Method::POST,
                "/api/v1/projects/site/deployments",
                Some(&t),
                Some(json!({"ref": bad})),
            )
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some("ref")),
            "{bad}"
        );
    }

    let (_, list) = srv
        .call(
            Method::GET,
            "/api/v1/projects/site/deployments",
            Some(&t),
            None,
        )
        .await;
    let ids: Vec<&Value> = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(ids, [&second["id"], &first["id"]], "newest first");

    let id = first["id"].as_str().unwrap();
    let (status, got) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{id}"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["short_id"], short);

    let (status, canceled) = srv
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/cancel"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(canceled["status"], "canceled");
    assert!(canceled["finished_at"].is_string());
    let (status, body) = srv
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/cancel"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "not_cancelable")
    );

    let (status, again) = srv
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/redeploy"),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(again["status"], "queued");
    assert_eq!(again["ref"], "main");
    assert_ne!(again["id"], first["id"]);

    let (status, _) = srv
        .call(
            Method::GET,
            "/api/v1/deployments/00000000-0000-0000-0000-000000000000",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // An empty body with a JSON content type is no body (curl -X POST -H …json).
    let resp = srv
        .request(Method::POST, "/api/v1/projects/site/deployments")
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let latest: Value = resp.json().await.unwrap();
    let (_, again_now) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{}", again["id"].as_str().unwrap()),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(
        again_now["status"], "canceled",
        "the newer one of the same ref supersedes it"
    );
    assert_eq!(
        again_now["error"],
        format!("superseded by {}", latest["short_id"].as_str().unwrap())
    );

    srv.stop().await;
}

async fn users_cannot_see_each_other(backend: Backend) {
    let srv = TestServer::start_with(backend, |c| c.auth.allow_signup = true).await;
    let a = srv.signup("a@example.com").await;
    let b = srv.signup("b@example.com").await;
    let (_, me_b) = srv.call(Method::GET, "/api/v1/me", Some(&b), None).await;
    assert_eq!(
        me_b["user"]["is_admin"], false,
        "only the first account is admin"
    );
    srv.create_project(
        &a,
        json!({"name": "secret", "git_url": "https://git.example.com/s"}),
    )
    .await;
    let (_, d) = srv
        .call(
            Method::POST,
            "/api/v1/projects/secret/deployments",
            Some(&a),
            None,
        )
        .await;
    let id = d["id"].as_str().unwrap();
    let (_, tok) = srv
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&a),
            Some(json!({"name": "x"})),
        )
        .await;
    let tok_id = tok["id"].as_i64().unwrap();

    let attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/v1/projects/secret".into(), None),
        (
            Method::PATCH,
            "/api/v1/projects/secret".into(),
            Some(json!({"spa": true})),
        ),
        (Method::DELETE, "/api/v1/projects/secret".into(), None),
        (
            Method::PUT,
            "/api/v1/projects/secret/env".into(),
            Some(json!({"X": "1"})),
        ),
        (
            Method::POST,
            "/api/v1/projects/secret/promote".into(),
            Some(json!({"deployment_id": id})),
        ),
        (
            Method::POST,
            "/api/v1/projects/secret/deployments".into(),
            None,
        ),
        (
            Method::GET,
            "/api/v1/projects/secret/deployments".into(),
            None,
        ),
        (Method::GET, format!("/api/v1/deployments/{id}"), None),
        (
            Method::POST,
            format!("/api/v1/deployments/{id}/cancel"),
            None,
        ),
        (
            Method::POST,
            format!("/api/v1/deployments/{id}/redeploy"),
            None,
        ),
        (Method::DELETE, format!("/api/v1/tokens/{tok_id}"), None),
    ];
    for (method, path, body) in attempts {
        let (status, resp) = srv.call(method.clone(), &path, Some(&b), body).await;
        assert_eq!(
            (status, error_code(&resp).as_str()),
            (404, "not_found"),
            "{method} {path}"
        );
    }
    let (_, list) = srv
        .call(Method::GET, "/api/v1/projects", Some(&b), None)
        .await;
    assert_eq!(list["projects"], json!([]));
    let (status, body) = srv
        .call(
            Method::POST,
            "/api/v1/projects",
            Some(&b),
            Some(json!({"name": "secret", "git_url": "https://git.example.com/s"})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (409, "name_taken"),
        "names are global"
    );
    // A's data is untouched.
    let (status, p) = srv
        .call(Method::GET, "/api/v1/projects/secret", Some(&a), None)
        .await;
    assert_eq!((status, p["spa"].clone()), (200, json!(false)));
    let (_, d2) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{id}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(d2["status"], "queued");
    srv.stop().await;
}

async fn system_routes(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let healthz = srv.request(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.text().await.unwrap(), "ok");
    let readyz = srv.request(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(readyz.status(), 200);
    srv.call(Method::GET, "/api/v1/projects", None, None).await;
    let metrics = srv
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"scalemesh_http_requests_total{method="GET",route="/api/v1/projects",status="401"} 1"#
        ),
        "{metrics}"
    );
    let (status, doc) = srv
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/auth/signup",
        "/api/v1/projects/{name}",
        "/api/v1/deployments/{id}/cancel",
        "/api/v1/projects/{name}/promote",
        "/api/v1/tokens/{id}",
        "/healthz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    srv.stop().await;
}

async fn hosts_split_dashboard_from_sites(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let token = srv.signup("a@example.com").await;
    for host in [
        "nothing.sm.test",
        "127.0.0.1",
        "sm.test.evil.com",
        "a.b.sm.test",
        "evil.com",
    ] {
        let resp = srv
            .request_host(Method::GET, host, "/api/v1/me")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{host}");
        let body = resp.text().await.unwrap();
        assert!(body.contains("no deployment here"), "{host}: {body}");
        assert!(!body.contains("a@example.com"));
    }
    for host in ["SM.TEST", "sm.test.", "sm.test:8080"] {
        let resp = srv
            .request_host(Method::GET, host, "/api/v1/me")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{host} is the dashboard");
    }
    let resp = srv
        .request_host(Method::GET, "bad host!", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    srv.stop().await;
}

async fn errors_are_json(backend: Backend) {
    let srv = TestServer::start(backend).await;
    let t = srv.signup("a@example.com").await;
    let (status, body) = srv.call(Method::GET, "/api/v1/nope", Some(&t), None).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "not_found"));
    let (status, body) = srv.call(Method::DELETE, "/api/v1/me", Some(&t), None).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (405, "method_not_allowed")
    );

    let resp = srv
        .request(Method::POST, "/api/v1/projects")
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(&resp.json().await.unwrap()), "invalid_json");

    let resp = srv
        .request(Method::POST, "/api/v1/projects")
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);

    let huge =
        json!({"name": "big", "git_url": "https://h/x", "env": {"X": "y".repeat(1_100_000)}});
    let resp = srv
        .request(Method::POST, "/api/v1/projects")
        .bearer_auth(&t)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(error_code(&resp.json().await.unwrap()), "payload_too_large");

    let (status, body) = srv
        .call(
            Method::POST,
            "/api/v1/projects",
            Some(&t),
            Some(json!({"git_url": "https://h/x"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("name")),
        "{body}"
    );
    let (status, body) = srv
        .call(
            Method::POST,
            "/api/v1/projects",
            Some(&t),
            Some(json!({"name": 5, "git_url": "https://h/x"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("name")),
        "{body}"
    );
    srv.stop().await;
}
