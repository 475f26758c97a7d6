//! The proxy end to end: deployments made by the real builder, served by Host through
//! the real listener, with every serving rule, header and hostile input of API.md.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{TestServer, fixtures};
use reqwest::Method;
use serde_json::{Value, json};

async fn server(tweak: impl FnOnce(&mut scalemesh::config::Config)) -> TestServer {
    common::building_server(|c| {
        tweak(c);
    })
    .await
}

const CSS: &str =
    "body { color: #333; margin: 0 auto; max-width: 40rem; font-family: system-ui, sans-serif; }\n";

fn site_files(version: &str) -> Vec<(&'static str, String)> {
    vec![
        ("index.html", format!("<h1>home {version}</h1>")),
        ("about/index.html", "<h1>about</h1>".into()),
        ("docs.html", "<h1>docs</h1>".into()),
        ("css/site.css", CSS.repeat(20)),
        ("404.html", "<h1>custom missing</h1>".into()),
        ("a b.txt", "spaced".into()),
        ("data.bin", "0123456789".into()),
    ]
}

/// Deploys the files as a static project `name`; returns (token, deployment).
async fn publish(
    srv: &TestServer,
    token: &str,
    name: &str,
    files: &[(&str, String)],
    extra: Value,
) -> Value {
    let src = srv.data_dir().join(format!("src-{name}"));
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    fixtures::repo(&src, &refs);
    let mut body = json!({"name": name, "git_url": format!("file://{}", src.display())});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    srv.create_project(token, body).await;
    srv.deploy_ready(token, name).await
}

fn host(label: &str) -> String {
    format!("{label}.{}", common::BASE)
}

async fn get(srv: &TestServer, label: &str, path: &str) -> reqwest::Response {
    srv.request_host(Method::GET, &host(label), path)
        .send()
        .await
        .unwrap()
}

/// HTTP/2 in clear text (prior knowledge, as a proxy in front would speak it) routes by
/// `:authority`: a site, a clean URL, a host that serves nothing and the dashboard,
/// all on one connection.
#[tokio::test(flavor = "multi_thread")]
async fn http2_routes_by_authority() {
    use http_body_util::{BodyExt, Empty};
    let srv = server(|_| {}).await;
    let t = srv.signup("h2@example.com").await;
    publish(&srv, &t, "two", &site_files("v2"), json!({})).await;

    let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("the listener speaks HTTP/2 with prior knowledge");
    tokio::spawn(conn);
    let cases = [
        (host("two"), "/", 200, "<h1>home v2</h1>"),
        (host("TWO"), "/docs", 200, "<h1>docs</h1>"),
        (host("nothing"), "/", 404, "no deployment here"),
        (common::BASE.to_string(), "/healthz", 200, ""),
    ];
    for (authority, path, status, body) in cases {
        let req = hyper::Request::get(format!("http://{authority}{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(resp.status(), status, "{authority}{path}");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        let got = String::from_utf8_lossy(&got);
        assert!(got.contains(body), "{authority}{path}: {got}");
    }
    srv.stop().await;
}

/// Sends raw bytes and reads the whole answer (the server closes or times out).
fn raw(srv: &TestServer, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 200") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_serving_rule_and_header() {
    let srv = server(|_| {}).await;
    let t = srv.signup("a@example.com").await;
    let d = publish(&srv, &t, "web", &site_files("v1"), json!({})).await;
    let short = d["short_id"].as_str().unwrap();

    let home = get(&srv, "web", "/").await;
    assert_eq!(home.status(), 200);
    assert_eq!(home.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(
        home.headers()["cache-control"],
        "public, max-age=0, must-revalidate"
    );
    let etag = home.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    assert_eq!(home.text().await.unwrap(), "<h1>home v1</h1>");

    let r = get(&srv, "web", "/about").await;
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/about/");
    let r = get(&srv, "web", "/about?x=1").await;
    assert_eq!(r.headers()["location"], "/about/?x=1");
    assert_eq!(
        get(&srv, "web", "/about/").await.text().await.unwrap(),
        "<h1>about</h1>"
    );
    assert_eq!(
        get(&srv, "web", "/docs").await.text().await.unwrap(),
        "<h1>docs</h1>"
    );
    assert_eq!(
        get(&srv, "web", "/docs.html").await.text().await.unwrap(),
        "<h1>docs</h1>"
    );
    assert_eq!(
        get(&srv, "web", "/a%20b.txt").await.text().await.unwrap(),
        "spaced"
    );
    let missing = get(&srv, "web", "/nope").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), "<h1>custom missing</h1>");

    let r = srv
        .request_host(Method::GET, &host("web"), "/")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = srv
        .request_host(Method::HEAD, &host("web"), "/data.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["content-length"].to_str().unwrap()
        ),
        (200, "10")
    );
    assert!(r.bytes().await.unwrap().is_empty());
    let r = srv
        .request_host(Method::GET, &host("web"), "/data.bin")
        .header("range", "bytes=2-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 2-5/10");
    assert_eq!(r.text().await.unwrap(), "2345");
    let r = srv
        .request_host(Method::GET, &host("web"), "/data.bin")
        .header("range", "bytes=50-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10");
    let r = srv
        .request_host(Method::POST, &host("web"), "/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Text is compressed when the client accepts it; binary and ranges are not.
    for (encoding, expected) in [("gzip", "gzip"), ("br", "br")] {
        let r = srv
            .request_host(Method::GET, &host("web"), "/css/site.css")
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-encoding"], expected);
        assert!(r.bytes().await.unwrap().len() < CSS.len() * 20);
    }
    let r = srv
        .request_host(Method::GET, &host("web"), "/data.bin")
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());

    // Each encoding is its own strong ETag and length, the same for HEAD; q=0 refuses.
    let css = |method: Method, accept: &'static str| {
        srv.request_host(method, &host("web"), "/css/site.css")
            .header("accept-encoding", accept)
    };
    let r = css(Method::GET, "gzip;q=0.5, br").send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "br");
    assert_eq!(r.headers()["vary"], "accept-encoding");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.ends_with("-br\""), "{etag}");
    let length = r.bytes().await.unwrap().len();
    let r = css(Method::HEAD, "br").send().await.unwrap();
    assert_eq!(r.headers()["content-length"], length.to_string().as_str());
    assert_eq!(r.headers()["etag"], etag.as_str());
    let r = css(Method::GET, "br")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    let r = css(Method::GET, "br;q=0, gzip;q=0").send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["vary"], "accept-encoding");
    assert_eq!(r.bytes().await.unwrap().len(), CSS.len() * 20);

    // The per-deployment hostname is immutable; assets there may be cached for long.
    let label = format!("web-{short}");
    let r = get(&srv, &label, "/css/site.css").await;
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    let r = get(&srv, "web", "/css/site.css").await;
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=0, must-revalidate"
    );

    // SPA fallback, and the built-in 404 when the deployment has none.
    publish(
        &srv,
        &t,
        "spa-app",
        &[("index.html", "<div id=app></div>".to_string())],
        json!({"spa": true}),
    )
    .await;
    let r = get(&srv, "spa-app", "/deep/link/42").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "<div id=app></div>");
    publish(
        &srv,
        &t,
        "bare",
        &[("index.html", "bare".to_string())],
        json!({}),
    )
    .await;
    let r = get(&srv, "bare", "/nothing").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("page not found"));
    srv.stop().await;
}

/// Sends raw bytes and reads until the server closes the connection.
fn raw_until_close(srv: &TestServer, request: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("the server closes after the last response");
    out
}

/// The (status line, body) of each response in `raw`, delimited by content-length.
fn responses(mut raw: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        let status = head.lines().next().unwrap().to_string();
        out.push((status, raw[end..end + length].to_vec()));
        raw = &raw[end + length..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn large_files_pipelines_and_request_bodies() {
    let srv = server(|_| {}).await;
    let t = srv.signup("a@example.com").await;
    // Large enough to be sent from the stored file, not from memory.
    let big: String = (0..40_000).map(|i| format!("{:07}\n", i)).collect();
    let mut files = site_files("v1");
    files.push(("big.bin", big.clone()));
    publish(&srv, &t, "web", &files, json!({})).await;
    let h = host("web");

    for _ in 0..2 {
        let r = get(&srv, "web", "/big.bin").await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            big.len().to_string().as_str()
        );
        assert_eq!(
            r.bytes().await.unwrap(),
            big.as_bytes(),
            "whole and in order"
        );
    }
    let r = srv
        .request_host(Method::GET, &h, "/big.bin")
        .header("range", "bytes=80000-80015")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 80000-80015/{}", big.len())
    );
    assert_eq!(r.text().await.unwrap(), "0010000\n0010001\n");

    // Pipelined requests are answered in order on one connection.
    let answer = raw_until_close(
        &srv,
        format!(
            "GET /big.bin HTTP/1.1\r\nHost: {h}\r\n\r\nHEAD /big.bin HTTP/1.1\r\nHost: {h}\r\n\r\n\
             GET /data.bin HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let head_len = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let first = String::from_utf8_lossy(&answer[..head_len]).to_lowercase();
    assert!(first.contains("\r\ndate: "), "{first}");
    let (a, rest) = answer.split_at(head_len + 4 + big.len());
    assert_eq!(&a[head_len + 4..], big.as_bytes());
    let rest = String::from_utf8_lossy(rest);
    let (head, get) = rest.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "HEAD: {head}");
    assert!(
        head.contains(&format!("content-length: {}", big.len())),
        "{head}"
    );
    assert!(get.starts_with("HTTP/1.1 200"), "{get}");
    assert!(
        get.contains("connection: close") && get.ends_with("\r\n\r\n0123456789"),
        "{get}"
    );

    // HTTP/1.0 closes unless asked to keep the connection alive.
    let answer = raw_until_close(
        &srv,
        format!("GET /data.bin HTTP/1.0\r\nHost: {h}\r\n\r\n").as_bytes(),
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("0123456789"),
        "{answer}"
    );
    let answer = raw_until_close(
        &srv,
        format!(
            "GET /data.bin HTTP/1.0\r\nHost: {h}\r\nConnection: keep-alive\r\n\r\n\
             GET /docs HTTP/1.0\r\nHost: {h}\r\n\r\n"
        )
        .as_bytes(),
    );
    let answers = responses(&answer);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].1, b"0123456789");
    assert_eq!(answers[1].1, b"<h1>docs</h1>");

    // A request with a body, then one without, on one connection: both answered.
    let answer = raw_until_close(
        &srv,
        format!(
            "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\n\r\nabc\
             GET /data.bin HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let answers = responses(&answer);
    assert_eq!(answers.len(), 2, "{}", String::from_utf8_lossy(&answer));
    assert!(
        answers[0].0.starts_with("http/1.1 405"),
        "{:?}",
        answers[0].0
    );
    assert_eq!(answers[1].1, b"0123456789");
    let answer = raw_until_close(
        &srv,
        format!(
            "POST /api/v1/auth/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
            common::BASE
        )
        .as_bytes(),
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 4") && answer.contains("\"error\""),
        "{answer}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_paths_and_hosts_are_refused() {
    let srv = server(|_| {}).await;
    let t = srv.signup("a@example.com").await;
    publish(&srv, &t, "web", &site_files("v1"), json!({})).await;
    let h = host("web");
    for path in [
        "/../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc/passwd",
        "/a%5c..%5cb",
        "/index.html%00.png",
        "/%2E%2E",
    ] {
        let answer = raw(
            &srv,
            format!("GET {path} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    let answer = raw(
        &srv,
        format!("GET //etc/passwd HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!answer.contains("root:"), "never a host file");

    let long = "a".repeat(70);
    for (hostname, expect) in [
        (format!("web.{}.evil.com", common::BASE), "404"),
        (format!("{long}.{}", common::BASE), "400"),
        (format!("WEB.{}", common::BASE.to_uppercase()), "200"),
        (format!("web.{}.", common::BASE), "200"),
        (format!("web.{}:8080", common::BASE), "200"),
    ] {
        let answer = raw(
            &srv,
            format!("GET / HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expect}")),
            "{hostname}: {answer}"
        );
    }
    let two = raw(
        &srv,
        format!(
            "GET / HTTP/1.1\r\nHost: {h}\r\nHost: {}\r\nConnection: close\r\n\r\n",
            common::BASE
        )
        .as_bytes(),
    );
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    let absolute = raw(
        &srv,
        format!(
            "GET http://other.{}/ HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n",
            common::BASE
        )
        .as_bytes(),
    );
    assert!(absolute.starts_with("HTTP/1.1 400"), "{absolute}");

    // A site host never reaches the dashboard, whatever it sends.
    let r = srv
        .request_host(Method::GET, &h, "/api/v1/me")
        .bearer_auth(&t)
        .header("cookie", format!("scalemesh_session={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(!r.text().await.unwrap().contains("a@example.com"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_under_load_never_fails_a_request() {
    let srv = server(|_| {}).await;
    let t = srv.signup("a@example.com").await;
    let v1 = publish(
        &srv,
        &t,
        "live",
        &[("index.html", "version one".to_string())],
        json!({}),
    )
    .await;
    let src = srv.data_dir().join("src-live");
    let repo = git2::Repository::open(&src).unwrap();
    fixtures::commit(&repo, &[("index.html", "version two")], "v2");
    let v2 = srv.deploy_ready(&t, "live").await;
    assert_eq!(
        get(&srv, "live", "/").await.text().await.unwrap(),
        "version two"
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, addr, stop) = (srv.http.clone(), srv.addr, stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .get(format!("http://{addr}/"))
                    .header("host", host("live"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                match r.text().await.unwrap().as_str() {
                    "version one" => seen.0 += 1,
                    "version two" => seen.1 += 1,
                    other => panic!("a torn or wrong response: {other:?}"),
                }
            }
            seen
        }));
    }
    for i in 0..20 {
        let target = if i % 2 == 0 { &v1 } else { &v2 };
        let (status, p) = srv
            .call(
                Method::POST,
                "/api/v1/projects/live/promote",
                Some(&t),
                Some(json!({"deployment_id": target["id"]})),
            )
            .await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["production_deployment_id"], target["id"]);
        let expected = if i % 2 == 0 {
            "version one"
        } else {
            "version two"
        };
        assert_eq!(
            get(&srv, "live", "/").await.text().await.unwrap(),
            expected,
            "instant"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = (0, 0);
    for c in clients {
        let seen = c.await.unwrap();
        total = (total.0 + seen.0, total.1 + seen.1);
    }
    assert!(
        total.0 > 0 && total.1 > 0,
        "both versions were served: {total:?}"
    );
    let (_, d) = srv
        .call(
            Method::GET,
            &format!("/api/v1/deployments/{}", v2["id"].as_str().unwrap()),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(d["production"], true);

    let (status, body) = srv
        .call(
            Method::POST,
            "/api/v1/projects/live/promote",
            Some(&t),
            Some(json!({"deployment_id": "nope"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Deleting the project takes its hostnames with it, and its cached files.
    assert!(
        srv.state.site_cache.weighted_size() > 0,
        "served files are in the hot-object cache"
    );
    srv.call(Method::DELETE, "/api/v1/projects/live", Some(&t), None)
        .await;
    let r = get(&srv, "live", "/").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("no deployment here"));
    assert_eq!(
        srv.state.site_cache.weighted_size(),
        0,
        "a deleted deployment's files are dropped from the cache"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_let_go() {
    let srv = server(|c| c.proxy.send_timeout_secs = 1).await;
    let t = srv.signup("a@example.com").await;
    // More than the socket buffers of both ends hold, so the response stalls.
    let big = "0123456789abcdef".repeat(512 * 1024);
    publish(&srv, &t, "web", &[("big.bin", big.clone())], json!({})).await;
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    let h = host("web");
    s.write_all(format!("GET /big.bin HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let ended = s.read_to_end(&mut got);
    assert!(ended.is_ok() || got.len() > 1000, "{ended:?}");
    assert!(
        got.len() < big.len(),
        "the server gave up on the response: {} of {} bytes came",
        got.len(),
        big.len()
    );
    // A client that reads gets it all.
    let r = get(&srv, "web", "/big.bin").await;
    assert_eq!(r.bytes().await.unwrap().len(), big.len());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_broken_heads_are_refused() {
    let srv = server(|_| {}).await;
    let h = host("web");
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(
        &srv,
        format!("GET / HTTP/1.1\r\nHost: {h}\r\n{many}\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 431"), "101 headers: {answer}");
    let huge = "a".repeat(70 * 1024);
    let answer = raw(
        &srv,
        format!("GET / HTTP/1.1\r\nHost: {h}\r\nx-big: {huge}\r\n\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 431"), "70 KiB head: {answer}");
    for broken in [
        "GET / HTTP/1.1\r\nno colon here\r\n\r\n".to_string(),
        "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n".to_string(),
        format!("GET / HTTP/1.1\r\nHost: {h}\r\nHost: other.test\r\n\r\n"),
    ] {
        let answer = raw(&srv, broken.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400"), "{broken:?}: {answer}");
    }
    // The connection still serves a good request after a refused one on another.
    let r = srv.request(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_closed_and_connections_capped() {
    let srv = server(|c| {
        c.proxy.header_timeout_secs = 1;
        c.proxy.max_connections = 3;
    })
    .await;
    // Slowloris: half a request head, then nothing.
    let mut slow = std::net::TcpStream::connect(srv.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after the header timeout"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(slow.read(&mut buf).unwrap_or(0), 0, "then closed");

    // Past the cap, a new connection is shed at once.
    let held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(srv.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let answer = raw(&srv, b"GET /healthz HTTP/1.1\r\nHost: sm.test\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(held);
    std::thread::sleep(Duration::from_millis(1500));
    let r = srv.request(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200, "served again once connections close");
    srv.stop().await;
}
