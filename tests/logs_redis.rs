//! The Redis log bus across processes: a build run by one server is streamed live by
//! another that runs no builds, over a real Redis and a shared PostgreSQL; a route
//! change made by one reaches the other's route table at once; and a Redis that goes
//! away in the middle of a build loses nothing.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, TestServer, fixtures, images, stored_log, wait_finished};
use futures::StreamExt;
use reqwest::Method;
use scalemesh::config::LogBusKind;
use serde_json::{Value, json};

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { child, port }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Streams a deployment's log; returns (seq, text, delay from the line's ts to arrival in ms).
async fn stream(srv: &TestServer, token: &str, id: &str) -> (Vec<(i64, String, i64)>, Value) {
    let resp = srv
        .request(
            Method::GET,
            &format!("/api/v1/deployments/{id}/logs/stream"),
        )
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut lines = Vec::new();
    let mut end = Value::Null;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next())
        .await
        .unwrap()
    {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(|d| serde_json::from_str::<Value>(d).unwrap());
            if block.contains("event: log") {
                let d = data.unwrap();
                let ts = chrono::DateTime::parse_from_rfc3339(d["ts"].as_str().unwrap()).unwrap();
                let delay =
                    (chrono::Utc::now() - ts.with_timezone(&chrono::Utc)).num_milliseconds();
                lines.push((
                    d["seq"].as_i64().unwrap(),
                    d["text"].as_str().unwrap().to_string(),
                    delay,
                ));
            } else if block.contains("event: end") {
                end = data.unwrap();
            }
        }
    }
    (lines, end)
}

async fn pair(redis_port: u16) -> (TestServer, TestServer) {
    images::ensure();
    let db = common::fresh_postgres().await;
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let builder = TestServer::start_with(Backend::Sqlite, {
        let (db, redis_url) = (db.clone(), redis_url.clone());
        move |c| {
            c.database.url = db;
            c.logs.bus = LogBusKind::Redis;
            c.logs.redis_url = redis_url;
            c.builder.concurrency = 1;
            c.builder.default_image = images::BUSYBOX.into();
            c.builder.network = scalemesh::config::BuildNetwork::None;
        }
    })
    .await;
    // The watcher serves what the builder stores: one database, one object store.
    let storage_url = builder.state.config.storage.url.clone();
    let watcher = TestServer::start_with(Backend::Sqlite, move |c| {
        c.database.url = db;
        c.storage.url = storage_url;
        c.logs.bus = LogBusKind::Redis;
        c.logs.redis_url = redis_url;
    })
    .await;
    (builder, watcher)
}

async fn project(srv: &TestServer, token: &str, command: &str) {
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(src.path(), &[("index.html", "x")]);
    let dest = srv.data_dir().join("repo");
    std::fs::rename(&repo, &dest).unwrap();
    srv.create_project(
        token,
        json!({
            "name": "relay", "git_url": format!("file://{}", dest.display()),
            "build_command": format!("{command}; mkdir -p dist; cp index.html dist/"),
        }),
    )
    .await;
}

/// Waits until `srv` serves `want` on the project's production hostname. The periodic
/// reload is 30 s away, so only the route-change event can make this happen in 5 s.
async fn serves_soon(srv: &TestServer, want: &str) -> Duration {
    let host = format!("relay.{}", common::BASE);
    let started = Instant::now();
    loop {
        let resp = srv
            .request_host(Method::GET, &host, "/")
            .send()
            .await
            .unwrap();
        let (status, body) = (resp.status(), resp.text().await.unwrap());
        if status == 200 && body == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the other process still answers {status} {body:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn median(mut v: Vec<i64>) -> i64 {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_streams_live_through_redis() {
    let redis = Redis::start(common::free_port());
    let (builder, watcher) = pair(redis.port).await;
    let token = builder.signup("a@example.com").await;
    project(
        &builder,
        &token,
        "for i in $(seq 1 40); do echo tick $i; sleep 0.05; done",
    )
    .await;
    let id = builder.queue_deployment(&token, "relay").await;
    let (lines, end) = stream(&watcher, &token, &id).await;
    assert_eq!(end, json!({"status": "ready"}));
    let stored = stored_log(&builder, &id).await;
    let got: Vec<(i64, &str)> = lines.iter().map(|(s, t, _)| (*s, t.as_str())).collect();
    let want: Vec<(i64, &str)> = stored.iter().map(|(s, _, t)| (*s, t.as_str())).collect();
    assert_eq!(
        got, want,
        "every line, once, in order, on the other process"
    );
    let ticks: Vec<i64> = lines
        .iter()
        .filter(|(_, t, _)| t.starts_with("tick"))
        .map(|(_, _, d)| *d)
        .collect();
    assert!(
        median(ticks.clone()) < 100,
        "live through Redis, not by polling: delays {ticks:?}"
    );
    builder.stop().await;
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn route_changes_reach_the_other_process_through_redis() {
    let redis = Redis::start(common::free_port());
    let (builder, watcher) = pair(redis.port).await;
    let token = builder.signup("a@example.com").await;
    project(&builder, &token, "true").await;
    let first = builder.deploy_ready(&token, "relay").await["id"].clone();
    serves_soon(&watcher, "x").await;

    let repo = git2::Repository::open(builder.data_dir().join("repo")).unwrap();
    fixtures::commit(&repo, &[("index.html", "second")], "Second");
    builder.deploy_ready(&token, "relay").await;
    serves_soon(&watcher, "second").await;

    let (status, _) = builder
        .call(
            Method::POST,
            "/api/v1/projects/relay/promote",
            Some(&token),
            Some(json!({ "deployment_id": first })),
        )
        .await;
    assert_eq!(status, 200);
    let took = serves_soon(&watcher, "x").await;
    assert!(
        took < Duration::from_secs(1),
        "a promote reaches the other process at once, not after {took:?}"
    );
    builder.stop().await;
    watcher.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_going_away_mid_build_loses_nothing() {
    let port = common::free_port();
    let mut redis = Redis::start(port);
    let (builder, watcher) = pair(port).await;
    let token = builder.signup("a@example.com").await;
    project(
        &builder,
        &token,
        "for i in $(seq 1 60); do echo tick $i; sleep 0.05; done",
    )
    .await;
    let id = builder.queue_deployment(&token, "relay").await;
    let watching = {
        let (watcher, token, id) = (&watcher, token.clone(), id.clone());
        async move { stream(watcher, &token, &id).await }
    };
    let outage = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Redis::start(port)
    };
    let ((lines, end), revived) = tokio::join!(watching, outage);
    assert_eq!(
        end,
        json!({"status": "ready"}),
        "the build went on without Redis"
    );
    let stored = stored_log(&builder, &id).await;
    let seqs: Vec<i64> = stored.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "every line persisted"
    );
    assert_eq!(
        stored
            .iter()
            .filter(|(_, _, t)| t.starts_with("tick"))
            .count(),
        60
    );
    let got: Vec<i64> = lines.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        got, seqs,
        "the stream fell back to the database without a gap"
    );

    // Once Redis is back, lines are relayed live again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let id2 = builder.queue_deployment(&token, "relay").await;
    let (lines, end) = stream(&watcher, &token, &id2).await;
    assert_eq!(end, json!({"status": "ready"}));
    let ticks: Vec<i64> = lines
        .iter()
        .filter(|(_, t, _)| t.starts_with("tick"))
        .map(|(_, _, d)| *d)
        .collect();
    assert!(
        median(ticks.clone()) < 100,
        "live again after Redis returned: {ticks:?}"
    );
    assert_eq!(
        wait_finished(&builder, &token, &id2, 30).await["status"],
        "ready"
    );
    drop(revived);
    builder.stop().await;
    watcher.stop().await;
}
