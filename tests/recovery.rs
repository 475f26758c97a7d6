//! Nothing is lost: `kill -9` of a real `scalemesh serve` process in the middle of a
//! build, then a restart on the same data directory.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{containers_with_label, fixtures, images};
use serde_json::{Value, json};

struct Process {
    child: Child,
    port: u16,
}

fn start(config: &std::path::Path, port: u16) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_scalemesh"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("scalemesh starts");
    Process { child, port }
}

async fn call(
    client: &reqwest::Client,
    port: u16,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .header("host", common::BASE);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn wait_until(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_build_then_restart() {
    images::ensure();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let config = dir.path().join("scalemesh.toml");
    std::fs::write(&config, format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nbase_domain = \"{}\"\ndata_dir = \"{}\"\n\
         [builder]\nconcurrency = 1\ndefault_image = \"{}\"\nallow_local_git = true\nnetwork = \"none\"\n",
        common::BASE, data.display(), images::BUSYBOX
    )).unwrap();
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(src.path(), &[("index.html", "v1")]);
    let client = reqwest::Client::new();
    use reqwest::Method;

    let mut first = start(&config, port);
    wait_until("healthz", 30, async || {
        call(&client, port, Method::GET, "/healthz", None, None)
            .await
            .0
            == 200
    })
    .await;
    let (_, signup) = call(
        &client,
        port,
        Method::POST,
        "/api/v1/auth/signup",
        None,
        Some(json!({"email": "a@example.com", "password": "password123"})),
    )
    .await;
    let token = signup["token"].as_str().unwrap().to_string();
    let url = format!("file://{}", repo.display());
    call(
        &client,
        port,
        Method::POST,
        "/api/v1/projects",
        Some(&token),
        Some(json!({"name": "site", "git_url": url})),
    )
    .await;
    let (_, good) = call(
        &client,
        port,
        Method::POST,
        "/api/v1/projects/site/deployments",
        Some(&token),
        None,
    )
    .await;
    let good_id = good["id"].as_str().unwrap().to_string();
    wait_until("the first deployment is ready", 60, async || {
        call(
            &client,
            port,
            Method::GET,
            &format!("/api/v1/deployments/{good_id}"),
            Some(&token),
            None,
        )
        .await
        .1["status"]
            == "ready"
    })
    .await;

    call(
        &client,
        port,
        Method::PATCH,
        "/api/v1/projects/site",
        Some(&token),
        Some(json!({"build_command": "echo before-crash; sleep 300"})),
    )
    .await;
    let (_, doomed) = call(
        &client,
        port,
        Method::POST,
        "/api/v1/projects/site/deployments",
        Some(&token),
        None,
    )
    .await;
    let id = doomed["id"].as_str().unwrap().to_string();
    let label = format!("scalemesh.deployment={id}");
    wait_until("the build container runs", 60, async || {
        !containers_with_label(&label).is_empty()
    })
    .await;
    let db = scalemesh::db::connect(&format!("sqlite://{}", data.join("scalemesh.db").display()))
        .await
        .unwrap();
    let lines = async |db: &sea_orm::DatabaseConnection| {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
        scalemesh::db::log_line::Entity::find()
            .filter(scalemesh::db::log_line::Column::DeploymentId.eq(&id))
            .order_by_asc(scalemesh::db::log_line::Column::Seq)
            .all(db)
            .await
            .unwrap()
    };
    wait_until("the build's output is stored", 30, async || {
        lines(&db).await.iter().any(|l| l.text == "before-crash")
    })
    .await;
    let before = lines(&db).await;

    first.child.kill().unwrap(); // SIGKILL: no shutdown code runs
    first.child.wait().unwrap();
    assert!(
        !containers_with_label(&label).is_empty(),
        "the orphan container outlives the process"
    );

    let mut second = start(&config, first.port);
    wait_until("healthz after restart", 30, async || {
        call(&client, port, Method::GET, "/healthz", None, None)
            .await
            .0
            == 200
    })
    .await;
    wait_until("the interrupted deployment to fail", 30, async || {
        call(
            &client,
            port,
            Method::GET,
            &format!("/api/v1/deployments/{id}"),
            Some(&token),
            None,
        )
        .await
        .1["status"]
            == "failed"
    })
    .await;
    let (_, d) = call(
        &client,
        port,
        Method::GET,
        &format!("/api/v1/deployments/{id}"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(d["error"], "interrupted: the server restarted");
    wait_until("the orphan container to go", 30, async || {
        containers_with_label(&label).is_empty()
    })
    .await;

    let after = lines(&db).await;
    assert!(after.len() > before.len());
    for (a, b) in before.iter().zip(&after) {
        assert_eq!(
            (a.seq, &a.text),
            (b.seq, &b.text),
            "persisted lines survive"
        );
    }
    let seqs: Vec<i64> = after.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=after.len() as i64).collect::<Vec<_>>(), "no gap");
    assert!(
        after
            .last()
            .unwrap()
            .text
            .contains("interrupted: the server restarted")
    );

    let (_, project) = call(
        &client,
        port,
        Method::GET,
        "/api/v1/projects/site",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        project["production_deployment_id"],
        good_id.as_str(),
        "production is untouched"
    );
    let (_, list) = call(
        &client,
        port,
        Method::GET,
        "/api/v1/projects/site/deployments",
        Some(&token),
        None,
    )
    .await;
    assert!(
        list["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] != "building")
    );

    // Graceful stop (SIGTERM) exits cleanly.
    Command::new("kill")
        .arg("-TERM")
        .arg(second.child.id().to_string())
        .status()
        .unwrap();
    let status = second.child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status}");
}
