//! The builder end to end: real git repositories made here, real Docker builds in the
//! test images, real stores on disk. Each test follows a deployment from
//! `POST …/deployments` to its final status and checks what a user would see.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestServer, fixtures, images, stored_log, wait_finished, wait_status};
use reqwest::Method;
use scalemesh::builder::upload::read_manifest;
use scalemesh::config::Config;
use serde_json::{Value, json};

async fn builder_server(tweak: impl FnOnce(&mut Config)) -> TestServer {
    common::building_server(|c| {
        c.builder.timeout_secs = 120;
        c.builder.memory_mb = 256;
        tweak(c);
    })
    .await
}

/// Signs up, creates project `name` from `repo` with `extra` fields, and deploys `git_ref`.
async fn deploy(
    srv: &TestServer,
    repo: &std::path::Path,
    name: &str,
    extra: Value,
) -> (String, Value) {
    let token = match srv
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "dev@example.com", "password": "password123"})),
        )
        .await
    {
        (200, body) => body["token"].as_str().unwrap().to_string(),
        _ => srv.signup("dev@example.com").await,
    };
    let mut body = json!({"name": name, "git_url": format!("file://{}", repo.display())});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    srv.create_project(&token, body).await;
    let (status, d) = srv
        .call(
            Method::POST,
            &format!("/api/v1/projects/{name}/deployments"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{d}");
    (token, d)
}

fn texts(log: &[(i64, String, String)]) -> String {
    log.iter().map(|(_, s, t)| format!("{s}: {t}\n")).collect()
}

async fn stored_file(srv: &TestServer, id: &str, path: &str) -> String {
    let loc = scalemesh::builder::upload::file_location(id, path);
    let bytes = object_store::ObjectStoreExt::get(srv.state.store.as_ref(), &loc)
        .await
        .unwrap_or_else(|e| panic!("{path} not stored: {e}"))
        .bytes()
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn static_site_reaches_ready_and_is_stored() {
    let srv = builder_server(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(
        src.path(),
        &[
            ("index.html", "<h1>hello</h1>"),
            ("about/index.html", "about"),
            ("css/site.css", "body{}"),
        ],
    );
    let (token, d) = deploy(&srv, &repo, "plain", json!({})).await;
    let id = d["id"].as_str().unwrap();
    let done = wait_finished(&srv, &token, id, 60).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(
        done["production"], true,
        "the production branch becomes production at once"
    );
    assert_eq!(done["commit_message"], "Initial commit");
    assert_eq!(done["commit_sha"].as_str().unwrap().len(), 40);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    let manifest = read_manifest(srv.state.store.as_ref(), id).await.unwrap();
    let paths: Vec<&String> = manifest.files.keys().collect();
    assert_eq!(
        paths,
        ["about/index.html", "css/site.css", "index.html"],
        ".git is not uploaded"
    );
    assert_eq!(stored_file(&srv, id, "index.html").await, "<h1>hello</h1>");
    assert_eq!(
        manifest.files["css/site.css"].content_type,
        "text/css; charset=utf-8"
    );

    let log = texts(&stored_log(&srv, id).await);
    for expected in [
        "Cloning file://",
        "Commit ",
        "Plan: static files",
        "Uploaded 3 files",
        "Deployment ready",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    let (_, project) = srv
        .call(Method::GET, "/api/v1/projects/plain", Some(&token), None)
        .await;
    assert_eq!(project["production_deployment_id"], d["id"]);
    let short = d["short_id"].as_str().unwrap();
    assert!(srv.state.routes.get(&format!("plain-{short}")).is_some());
    assert_eq!(&*srv.state.routes.get("plain").unwrap().deployment_id, id);
    let builds = std::fs::read_dir(srv.data_dir().join("builds"))
        .unwrap()
        .count();
    assert_eq!(builds, 0, "the workspace is removed afterwards");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn build_command_gets_the_project_env_and_nothing_else() {
    let srv = builder_server(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(src.path(), &[("src/page.txt", "from the repo")]);
    let probe = "mkdir -p dist && cat src/page.txt > dist/index.html && echo \"$GREETING\" > dist/env.txt \
                 && env > dist/all-env.txt && grep -E '^(CapEff|NoNewPrivs)' /proc/self/status > dist/status.txt \
                 && (ls -l /var/run/docker.sock /run/docker.sock 2>&1 || true) > dist/socket.txt \
                 && echo building for real";
    let (token, d) = deploy(
        &srv,
        &repo,
        "envy",
        json!({
            "build_command": probe, "env": {"GREETING": "hi <b>there</b>"}
        }),
    )
    .await;
    let id = d["id"].as_str().unwrap();
    let done = wait_finished(&srv, &token, id, 60).await;
    assert_eq!(
        done["status"],
        "ready",
        "{done}\n{}",
        texts(&stored_log(&srv, id).await)
    );
    assert_eq!(stored_file(&srv, id, "index.html").await, "from the repo");
    assert_eq!(stored_file(&srv, id, "env.txt").await, "hi <b>there</b>\n");
    let env = stored_file(&srv, id, "all-env.txt").await;
    assert!(
        !env.contains("SCALEMESH") && !env.contains("AWS_") && !env.contains("DATABASE"),
        "{env}"
    );
    let status = stored_file(&srv, id, "status.txt").await;
    assert!(
        status.contains("CapEff:\t0000000000000000"),
        "no capabilities: {status}"
    );
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let socket = stored_file(&srv, id, "socket.txt").await;
    assert!(
        socket.contains("No such file"),
        "no Docker socket inside: {socket}"
    );
    let log = stored_log(&srv, id).await;
    assert!(
        log.iter()
            .any(|(_, s, t)| s == "stdout" && t == "building for real"),
        "{}",
        texts(&log)
    );
    assert!(
        !texts(&log).contains("hi <b>there</b>"),
        "env values are not logged"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_projects_are_detected_and_built() {
    let srv = builder_server(|c| c.builder.default_image = images::NODE.into()).await;
    let src = tempfile::tempdir().unwrap();
    let package = r#"{"name": "site", "version": "1.0.0", "private": true,
        "scripts": {"build": "node build.js"}}"#;
    let lock = r#"{"name": "site", "version": "1.0.0", "lockfileVersion": 3, "requires": true,
        "packages": {"": {"name": "site", "version": "1.0.0"}}}"#;
    let build = "const fs = require('fs'); fs.mkdirSync('dist', {recursive: true}); \
                 fs.writeFileSync('dist/index.html', '<p>built by node ' + process.version + '</p>'); \
                 console.log('wrote dist'); console.error('a warning');";
    let repo = fixtures::repo(
        src.path(),
        &[
            ("web/package.json", package),
            ("web/package-lock.json", lock),
            ("web/build.js", build),
            ("README.md", "monorepo"),
        ],
    );
    let (token, d) = deploy(&srv, &repo, "nodey", json!({"root_dir": "web"})).await;
    let id = d["id"].as_str().unwrap();
    let done = wait_finished(&srv, &token, id, 120).await;
    let log = stored_log(&srv, id).await;
    assert_eq!(done["status"], "ready", "{done}\n{}", texts(&log));
    let page = stored_file(&srv, id, "index.html").await;
    assert!(page.starts_with("<p>built by node v"), "{page}");
    let text = texts(&log);
    for expected in [
        "Plan: Node.js (npm) in 'web'",
        "install: npm ci",
        "build: npm run build",
        "output: first of dist, build, out, public",
        "Running install command: npm ci",
        "stdout: wrote dist",
        "stderr: a warning",
    ] {
        assert!(text.contains(expected), "log lacks {expected:?}:\n{text}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_end_with_a_clear_message() {
    let srv = builder_server(|c| {
        c.builder.timeout_secs = 4;
        c.builder.memory_mb = 32;
    })
    .await;
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(src.path(), &[("index.html", "x")]);
    let cases = [
        (
            "exits",
            json!({"build_command": "echo boom >&2; exit 3"}),
            "build command exited with status 3",
        ),
        (
            "slow",
            json!({"build_command": "sleep 60"}),
            "build timed out after 4 s",
        ),
        (
            "nodist",
            json!({"build_command": "true", "output_dir": "dist"}),
            "output directory 'dist' does not exist",
        ),
        (
            "noroot",
            json!({"root_dir": "missing"}),
            "root_dir 'missing' does not exist",
        ),
        (
            "noimage",
            json!({"build_command": "true", "image": "scalemesh-test/absent:1"}),
            "image scalemesh-test/absent:1 is not available",
        ),
        (
            "hungry",
            // dd fills a 200 MB buffer at once: more than the container may have.
            json!({"build_command": "dd if=/dev/zero of=/dev/null bs=200M count=1"}),
            "build command ran out of memory (builder.memory_mb = 32) and was killed",
        ),
    ];
    let mut token = String::new();
    let mut ids = Vec::new();
    for (name, extra, _) in &cases {
        let (t, d) = deploy(&srv, &repo, name, extra.clone()).await;
        token = t;
        ids.push(d["id"].as_str().unwrap().to_string());
    }
    for ((name, _, message), id) in cases.iter().zip(&ids) {
        let done = wait_finished(&srv, &token, id, 60).await;
        assert_eq!(done["status"], "failed", "{name}: {done}");
        let error = done["error"].as_str().unwrap();
        assert!(
            error.contains(message),
            "{name}: {error:?} lacks {message:?}"
        );
        let log = texts(&stored_log(&srv, id).await);
        assert!(
            log.contains(&format!("Build failed: {error}")),
            "{name}:\n{log}"
        );
        assert!(common::containers_with_label(&format!("scalemesh.deployment={id}")).is_empty());
    }
    let log = stored_log(&srv, &ids[0]).await;
    assert!(
        log.iter().any(|(_, s, t)| s == "stderr" && t == "boom"),
        "{}",
        texts(&log)
    );
    let (_, p) = srv
        .call(Method::GET, "/api/v1/projects/exits", Some(&token), None)
        .await;
    assert_eq!(
        p["production_deployment_id"],
        Value::Null,
        "a failed build is never production"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn git_errors_are_explained() {
    let srv = builder_server(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(src.path(), &[("index.html", "x")]);
    let (token, _) = deploy(&srv, &repo, "gitty", json!({})).await;
    let (_, d) = srv
        .call(
            Method::POST,
            "/api/v1/projects/gitty/deployments",
            Some(&token),
            Some(json!({"ref": "nope"})),
        )
        .await;
    let done = wait_finished(&srv, &token, d["id"].as_str().unwrap(), 30).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(
        done["error"],
        "branch or ref 'nope' not found in the repository"
    );

    srv.create_project(
        &token,
        json!({"name": "gone", "git_url": "file:///nonexistent/repo"}),
    )
    .await;
    let (_, d) = srv
        .call(
            Method::POST,
            "/api/v1/projects/gone/deployments",
            Some(&token),
            None,
        )
        .await;
    let done = wait_finished(&srv, &token, d["id"].as_str().unwrap(), 30).await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .starts_with("repository not reachable"),
        "{done}"
    );

    // A branch other than production gets its own alias and stays out of production.
    fixtures::branch(&repo, "feature/x");
    let (_, d) = srv
        .call(
            Method::POST,
            "/api/v1/projects/gitty/deployments",
            Some(&token),
            Some(json!({"ref": "feature/x"})),
        )
        .await;
    let done = wait_finished(&srv, &token, d["id"].as_str().unwrap(), 30).await;
    assert_eq!(done["status"], "ready", "{done}");
    assert_eq!(done["production"], false);
    let route = srv.state.routes.get("gitty-git-feature-x").unwrap();
    assert_eq!(&*route.deployment_id, d["id"].as_str().unwrap());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_supersede_and_concurrency() {
    let srv = builder_server(|c| c.builder.concurrency = 1).await;
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(src.path(), &[("index.html", "x")]);
    let (token, running) = deploy(
        &srv,
        &repo,
        "busy",
        json!({"build_command": "echo started; sleep 60"}),
    )
    .await;
    let running_id = running["id"].as_str().unwrap();
    wait_status(&srv, &token, running_id, "building", 30).await;

    // Concurrency 1: another project's deployment waits in the queue.
    let (_, other) = deploy(&srv, &repo, "waiting", json!({})).await;
    let other_id = other["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, still) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{other_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(still["status"], "queued", "concurrency 1 holds it back");
    assert_eq!(still["queue_position"], 1);

    // A newer queued deployment of the same ref supersedes the older one.
    let (_, newer) = srv
        .call(
            Method::POST,
            "/api/v1/projects/waiting/deployments",
            Some(&token),
            None,
        )
        .await;
    let (_, old) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{other_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(old["status"], "canceled");
    assert_eq!(
        old["error"],
        format!("superseded by {}", newer["short_id"].as_str().unwrap())
    );

    // Cancel of a queued one is immediate.
    let (_, queued) = srv
        .call(
            Method::POST,
            "/api/v1/projects/busy/deployments",
            Some(&token),
            None,
        )
        .await;
    let (status, c) = srv
        .call(
            Method::POST,
            &format!(
                "/api/v1/deployments/{}/cancel",
                queued["id"].as_str().unwrap()
            ),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, c["status"].as_str()), (200, Some("canceled")));

    // Cancel of a running one stops its container within 5 s.
    let label = format!("scalemesh.deployment={running_id}");
    assert_eq!(common::containers_with_label(&label).len(), 1);
    let asked = Instant::now();
    let (status, c) = srv
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{running_id}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, c["status"].as_str()), (200, Some("canceled")));
    while !common::containers_with_label(&label).is_empty() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "container still there after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = texts(&stored_log(&srv, running_id).await);
    assert!(log.contains("stdout: started"), "{log}");

    // The freed slot goes to the newer deployment.
    let done = wait_finished(&srv, &token, newer["id"].as_str().unwrap(), 60).await;
    assert_eq!(done["status"], "ready");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_in_the_output_are_skipped() {
    let srv = builder_server(|_| {}).await;
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(
        src.path(),
        &[
            ("public/index.html", "hi"),
            ("public/passwd", "->/etc/passwd"),
            ("public/up", "->.."),
        ],
    );
    let (token, d) = deploy(&srv, &repo, "linky", json!({})).await;
    let id = d["id"].as_str().unwrap();
    let done = wait_finished(&srv, &token, id, 60).await;
    assert_eq!(done["status"], "ready", "{done}");
    let manifest = read_manifest(srv.state.store.as_ref(), id).await.unwrap();
    assert_eq!(manifest.files.keys().collect::<Vec<_>>(), ["index.html"]);
    let log = texts(&stored_log(&srv, id).await);
    assert!(log.contains("warning: skipped symlink 'passwd'"), "{log}");

    // An output directory that is itself a symlink out of the repository fails.
    let src2 = tempfile::tempdir().unwrap();
    let repo2 = fixtures::repo(src2.path(), &[("public", "->/etc")]);
    let (_, d) = deploy(&srv, &repo2, "escape", json!({"output_dir": "public"})).await;
    let done = wait_finished(&srv, &token, d["id"].as_str().unwrap(), 60).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("symlink"),
        "{done}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_share_one_postgres_queue() {
    images::ensure();
    let db_url = common::fresh_postgres().await;
    let shared = tempfile::tempdir().unwrap();
    let store = format!("file://{}", shared.path().join("artifacts").display());
    let start = |db_url: String, store: String| {
        TestServer::start_with(Backend::Sqlite, move |c| {
            c.database.url = db_url;
            c.storage.url = store;
            c.builder.concurrency = 2;
            c.builder.default_image = images::BUSYBOX.into();
            c.builder.network = scalemesh::config::BuildNetwork::None;
        })
    };
    let a = start(db_url.clone(), store.clone()).await;
    let b = start(db_url, store).await;
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(src.path(), &[("index.html", "shared")]);
    fixtures::branch(&repo, "main-copy");
    let token = a.signup("dev@example.com").await;
    let mut ids = Vec::new();
    for name in ["p1", "p2", "p3"] {
        a.create_project(
            &token,
            json!({
                "name": name, "git_url": format!("file://{}", repo.display()),
                "build_command": "sleep 2; mkdir -p dist; cp index.html dist/",
            }),
        )
        .await;
        for git_ref in ["main", "main-copy"] {
            let (_, d) = b
                .call(
                    Method::POST,
                    &format!("/api/v1/projects/{name}/deployments"),
                    Some(&token),
                    Some(json!({"ref": git_ref})),
                )
                .await;
            ids.push(d["id"].as_str().unwrap().to_string());
        }
    }
    for id in &ids {
        let done = wait_finished(&a, &token, id, 120).await;
        assert_eq!(done["status"], "ready", "{done}");
    }
    use sea_orm::EntityTrait;
    let rows = scalemesh::db::deployment::Entity::find()
        .all(&a.state.db)
        .await
        .unwrap();
    let runs: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|d| d.claimed_by.as_deref())
        .map(|w| w.rsplit_once('/').unwrap().0.to_string())
        .collect();
    assert_eq!(
        runs.len(),
        2,
        "both servers took builds from the one queue: {runs:?}"
    );
    a.stop().await;
    b.stop().await;
}
