//! Build logs end to end: real builds write them, the database keeps them, the SSE
//! stream delivers them live, from the start or from the middle, with no gap or
//! duplicate.

mod common;

use std::time::Duration;

use common::{TestServer, fixtures, stored_log, wait_finished};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

async fn server(tweak: impl FnOnce(&mut scalemesh::config::Config)) -> TestServer {
    common::building_server(|c| {
        c.builder.concurrency = 3;
        tweak(c);
    })
    .await
}

async fn project(srv: &TestServer, token: &str, name: &str, command: &str) {
    let src = tempfile::tempdir().unwrap();
    let repo = fixtures::repo(src.path(), &[("index.html", "x")]);
    let dest = srv.data_dir().join(format!("repo-{name}"));
    std::fs::rename(&repo, &dest).unwrap();
    srv.create_project(
        token,
        json!({
            "name": name, "git_url": format!("file://{}", dest.display()),
            "build_command": format!("{command}; mkdir -p dist; cp index.html dist/"),
        }),
    )
    .await;
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// Reads a whole SSE response (until the server closes it).
async fn read_sse(resp: reqwest::Response) -> Vec<Sse> {
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next())
        .await
        .expect("the stream goes on")
    {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut e = Sse {
                event: "message".into(),
                id: None,
                data: Value::Null,
            };
            let mut is_comment = true;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    e.event = v.into();
                    is_comment = false;
                }
                if let Some(v) = line.strip_prefix("id: ") {
                    e.id = Some(v.into());
                }
                if let Some(v) = line.strip_prefix("data: ") {
                    e.data = serde_json::from_str(v).unwrap();
                    is_comment = false;
                }
            }
            if !is_comment {
                events.push(e);
            }
        }
    }
    events
}

fn stream_request(srv: &TestServer, token: &str, id: &str) -> reqwest::RequestBuilder {
    srv.request(
        Method::GET,
        &format!("/api/v1/deployments/{id}/logs/stream"),
    )
    .bearer_auth(token)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_builds_keep_gapless_ordered_logs() {
    let srv = server(|_| {}).await;
    let token = srv.signup("a@example.com").await;
    for name in ["one", "two", "three"] {
        project(&srv, &token, name, "seq 1 3000; seq 1 500 >&2").await;
    }
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        ids.push(srv.queue_deployment(&token, name).await);
    }
    for id in &ids {
        let d = wait_finished(&srv, &token, id, 120).await;
        assert_eq!(d["status"], "ready", "{d}");
        let log = stored_log(&srv, id).await;
        let seqs: Vec<i64> = log.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(
            seqs,
            (1..=log.len() as i64).collect::<Vec<_>>(),
            "gapless from 1"
        );
        let out: Vec<&str> = log
            .iter()
            .filter(|(_, s, _)| s == "stdout")
            .map(|(_, _, t)| t.as_str())
            .collect();
        assert_eq!(
            out,
            (1..=3000)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
        let err = log.iter().filter(|(_, s, _)| s == "stderr").count();
        assert_eq!(err, 500);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_connected_before_the_build_sees_every_line_then_end() {
    let srv = server(|_| {}).await;
    let token = srv.signup("a@example.com").await;
    project(
        &srv,
        &token,
        "live",
        "for i in $(seq 1 40); do echo line $i; sleep 0.02; done",
    )
    .await;
    let id = srv.queue_deployment(&token, "live").await;
    let events = read_sse(stream_request(&srv, &token, &id).send().await.unwrap()).await;
    let stored = stored_log(&srv, &id).await;
    let streamed: Vec<(i64, String)> = events
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| {
            (
                e.data["seq"].as_i64().unwrap(),
                e.data["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = stored.iter().map(|(s, _, t)| (*s, t.clone())).collect();
    assert_eq!(streamed, expected, "every stored line, once, in order");
    for e in events.iter().filter(|e| e.event == "log") {
        assert_eq!(e.id.as_deref(), Some(e.data["seq"].to_string().as_str()));
    }
    let last = events.last().unwrap();
    assert_eq!(
        (last.event.as_str(), &last.data),
        ("end", &json!({"status": "ready"}))
    );
    let statuses: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| &e.data["status"])
        .collect();
    assert!(statuses.contains(&&json!("ready")), "{statuses:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_from_the_middle_without_gap_or_duplicate() {
    let srv = server(|_| {}).await;
    let token = srv.signup("a@example.com").await;
    project(
        &srv,
        &token,
        "resume",
        "for i in $(seq 1 60); do echo n$i; sleep 0.01; done",
    )
    .await;
    let id = srv.queue_deployment(&token, "resume").await;
    // Read part of it live, drop the connection, and come back with Last-Event-ID.
    let resp = stream_request(&srv, &token, &id).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"text\":\"n10\"") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    drop(body);
    let last_id: i64 = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .parse()
        .unwrap();
    let resp = stream_request(&srv, &token, &id)
        .header("last-event-id", last_id.to_string())
        .send()
        .await
        .unwrap();
    let events = read_sse(resp).await;
    let seqs: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| e.data["seq"].as_i64().unwrap())
        .collect();
    let total = stored_log(&srv, &id).await.len() as i64;
    assert_eq!(seqs, ((last_id + 1)..=total).collect::<Vec<_>>());
    assert_eq!(events.last().unwrap().event, "end");

    // `?after=` does the same after the fact; the JSON API pages the same lines.
    let events = read_sse(
        srv.request(
            Method::GET,
            &format!("/api/v1/deployments/{id}/logs/stream?after={}", total - 3),
        )
        .bearer_auth(&token)
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(events.iter().filter(|e| e.event == "log").count(), 3);
    let (status, page) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{id}/logs?after=5&limit=10"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["status"], "ready");
    let seqs: Vec<i64> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (6..=15).collect::<Vec<_>>());
    assert!(["stdout", "stderr", "system"].contains(&page["lines"][0]["stream"].as_str().unwrap()));
    let (status, body) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{id}/logs?limit=0"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("limit"))
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn control_sequences_html_cut_and_cap() {
    let srv = server(|c| c.logs.max_lines = 50).await;
    let token = srv.signup("a@example.com").await;
    project(&srv, &token, "ansi",
        r"printf '\033[31mred\033[0m \033]0;title\007<b>bold</b>\033[2K\n'; printf '10%%\r50%%\r100%%\n'; head -c 20000 /dev/zero | tr '\0' a; echo; seq 1 100").await;
    let id = srv.queue_deployment(&token, "ansi").await;
    assert_eq!(
        wait_finished(&srv, &token, &id, 60).await["status"],
        "ready"
    );
    let log = stored_log(&srv, &id).await;
    let out: Vec<&str> = log
        .iter()
        .filter(|(_, s, _)| s == "stdout")
        .map(|(_, _, t)| t.as_str())
        .collect();
    assert_eq!(
        out[0], "\u{1b}[31mred\u{1b}[0m <b>bold</b>",
        "SGR kept, OSC and erase dropped, HTML kept as text"
    );
    assert_eq!(out[1], "100%", "a progress bar keeps its last state");
    assert!(
        out[2].starts_with("aaaa") && out[2].ends_with("[line cut at 16 KiB]"),
        "{}",
        &out[2][out[2].len() - 40..]
    );
    assert_eq!(out.len(), 50, "the cap holds");
    let notice: Vec<&(i64, String, String)> = log
        .iter()
        .filter(|(_, _, t)| t.starts_with("log truncated"))
        .collect();
    assert_eq!(notice.len(), 1, "one system line says so");
    assert_eq!(notice[0].1, "system");
    assert!(
        log.last().unwrap().2.starts_with("Deployment ready"),
        "system lines go on after the cap"
    );

    // Another user cannot read it.
    let srv_b = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{id}/logs"),
            None,
            None,
        )
        .await;
    assert_eq!(srv_b.0, 401);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_a_canceled_build_ends_after_its_last_line() {
    let srv = server(|_| {}).await;
    let token = srv.signup("a@example.com").await;
    project(
        &srv,
        &token,
        "stopped",
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done",
    )
    .await;
    let id = srv.queue_deployment(&token, "stopped").await;
    let stream = tokio::spawn(read_sse(
        stream_request(&srv, &token, &id).send().await.unwrap(),
    ));
    // Cancel once the build is writing.
    for _ in 0..200 {
        if stored_log(&srv, &id)
            .await
            .iter()
            .any(|(_, _, t)| t.starts_with("tick 5"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = srv
        .call(
            Method::POST,
            &format!("/api/v1/deployments/{id}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let events = stream.await.unwrap();
    // The worker writes its last lines after the API marked the deployment canceled;
    // the stream must not end before them.
    let stored: Vec<i64> = stored_log(&srv, &id).await.iter().map(|l| l.0).collect();
    let streamed: Vec<i64> = events
        .iter()
        .filter(|e| e.event == "log")
        .map(|e| e.data["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        streamed, stored,
        "every stored line was streamed before end"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last.event.as_str(), &last.data),
        ("end", &json!({"status": "canceled"}))
    );
    srv.stop().await;
}
