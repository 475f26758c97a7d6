//! Load client of `bench/log-fanout`: opens N SSE streams of one deployment's log,
//! waits until the build ends, and prints the latency from each line's `ts` (when the
//! writer stored it) to its arrival, over all clients: p50, p99, max. Lines written
//! before every stream was open arrive as history, not live, and are not counted.
//!
//! With `redis` last, the N clients subscribe to the deployment's Redis channel at
//! ADDR instead (the same code reads them): the machine's floor for a fan-out to N
//! sockets, served by Redis itself.
//!
//! Usage: log_fanout ADDR HOST TOKEN DEPLOYMENT_ID CLIENTS READY_FILE [redis]
//! (READY_FILE is created once every stream is open, so the caller can measure RSS.)

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn client(
    addr: String,
    host: String,
    token: String,
    id: String,
    redis: bool,
    opened: tokio::sync::mpsc::Sender<()>,
) -> Vec<(i64, f64)> {
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let request = if redis {
        format!("SUBSCRIBE scalemesh:deployment:{id}\r\n")
    } else {
        format!(
            "GET /api/v1/deployments/{id}/logs/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        )
    };
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut delays = Vec::new();
    let mut told = false;
    let mut is_log = false;
    loop {
        line.clear();
        match tokio::time::timeout(Duration::from_secs(120), reader.read_line(&mut line)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
        }
        // The end of the head; the count of channels a SUBSCRIBE answers with.
        if !told && (line == "\r\n" || (redis && line.starts_with(':'))) {
            told = true;
            let _ = opened.send(()).await;
        }
        if line.starts_with("event: end")
            || (redis && line.contains("\"kind\":\"status\"") && !line.contains("building"))
        {
            break;
        }
        let data = if redis {
            line.starts_with("{\"kind\":\"line\"")
                .then_some(line.as_str())
        } else if is_log {
            line.strip_prefix("data: ")
        } else {
            None
        };
        if line.starts_with("event: log") {
            is_log = true;
        } else if let Some(data) = data {
            is_log = false;
            let now = chrono::Utc::now();
            if let Some(ts) = data
                .split("\"ts\":\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                && let Ok(ts) = chrono::DateTime::parse_from_rfc3339(ts)
            {
                let ts = ts.with_timezone(&chrono::Utc);
                let delay = (now - ts).num_microseconds().unwrap_or(0) as f64 / 1000.0;
                delays.push((ts.timestamp_micros(), delay));
            }
        }
    }
    delays
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, host, token, id, n, ready, redis) = match args.as_slice() {
        [_, addr, host, token, id, n, ready] => (addr, host, token, id, n, ready, false),
        [_, addr, host, token, id, n, ready, mode] if mode == "redis" => {
            (addr, host, token, id, n, ready, true)
        }
        _ => {
            eprintln!("usage: log_fanout ADDR HOST TOKEN DEPLOYMENT_ID CLIENTS READY_FILE [redis]");
            std::process::exit(2);
        }
    };
    let n: usize = n.parse().expect("CLIENTS is a number");
    let (tx, mut rx) = tokio::sync::mpsc::channel(n);
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        tasks.push(tokio::spawn(client(
            addr.clone(),
            host.clone(),
            token.clone(),
            id.clone(),
            redis,
            tx.clone(),
        )));
    }
    drop(tx);
    for _ in 0..n {
        rx.recv().await;
    }
    let open_at = chrono::Utc::now().timestamp_micros();
    std::fs::write(ready, "open").expect("ready file");
    let mut all = Vec::new();
    let mut per_client = Vec::new();
    for t in tasks {
        let d = t.await.expect("client");
        per_client.push(d.len());
        all.extend(
            d.into_iter()
                .filter(|(ts, _)| *ts >= open_at)
                .map(|(_, delay)| delay),
        );
    }
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{} clients={} lines/client min={} max={} live lines counted={} latency ms p50={:.2} p99={:.2} max={:.2}",
        if redis { "redis" } else { "sse" },
        n,
        per_client.iter().min().unwrap(),
        per_client.iter().max().unwrap(),
        all.len(),
        pct(0.50),
        pct(0.99),
        all[all.len() - 1]
    );
}
