//! Strangers flooding the daemon's HTTP server (loopback only, bounded in
//! count and time): slow bodies that declare 25 MB, and more idle
//! connections than the daemon has descriptors. A signed delivery from
//! another address is answered while the flood still holds its
//! connections, and the flood's connections are closed by the daemon's
//! limits (body deadline, header-read timeout, eviction).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use solstice_forge::{Forge, MAX_PAYLOAD};
use support::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection from `127.0.0.N`.
async fn connect_from(n: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, n], 0)))?;
    socket.connect(to).await
}

fn addr_of(h: &Harness) -> SocketAddr {
    h.url
        .trim_start_matches("http://")
        .parse()
        .expect("the daemon's address")
}

/// Whether the daemon has closed `stream` (EOF or an error) or answered
/// on it, without waiting more than `wait`.
async fn closed_or_answered(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(0)) | Ok(Err(_)) => Some(String::new()),
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

/// Every request on a new connection, as a forge's delivery comes: a
/// connection kept alive from before the flood would get through anyway.
fn fresh_connections(h: &mut Harness) {
    h.http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
}

/// Raises this process's own descriptor limit: the flood needs more than
/// the usual 1,024.
fn enough_descriptors() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < 4096 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard).expect("setrlimit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_declaring_25_mb_do_not_stall_a_signed_delivery() {
    let mut h = Harness::new(true, "").await;
    h.start().await;
    fresh_connections(&mut h);
    let to = addr_of(&h);
    // Ten connections (the three, and more) each declare the
    // largest body allowed, send one byte and then nothing.
    let mut flood = Vec::new();
    for i in 0..10 {
        let mut s = connect_from(2, to).await.expect("connect");
        let head = format!(
            "POST /hooks/github HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: slow-{i}\r\nContent-Length: {MAX_PAYLOAD}\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        flood.push(s);
    }
    // Give the daemon the time to take them in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(30),
        h.deliver(Forge::GitHub, "ping", "during-slow", &json!({"zen": "hi"})),
    )
    .await
    .expect("the signed delivery is answered (it waited behind the slow bodies)");
    let latency = started.elapsed();
    assert_eq!((status, answer["status"].as_str()), (200, Some("pong")));
    // It did not wait for the flood to end: every slow body is still open.
    for s in &mut flood {
        assert_eq!(
            closed_or_answered(s, Duration::from_millis(10)).await,
            None,
            "a slow body was answered or closed before the delivery"
        );
    }
    eprintln!("signed ping answered in {latency:?} during 10 slow 25 MB bodies");
    // The slow bodies end at the body deadline (20 s): 408.
    for s in &mut flood {
        let answer = closed_or_answered(s, Duration::from_secs(40))
            .await
            .expect("the daemon ends a slow body");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_connections_than_descriptors_do_not_lock_out_a_forge() {
    enough_descriptors();
    let mut h = Harness::new(true, "").await;
    // The descriptor limit systemd gives a service by default.
    h.start_under(&["prlimit", "--nofile=1024:1024", "--"], "serve", &[])
        .await;
    fresh_connections(&mut h);
    let pid = h.daemon.as_ref().expect("running").id();
    let to = addr_of(&h);
    // 1,100 idle connections from 22 addresses (50 each, over the
    // per-address share of 48), each opened and left silent.
    let mut flood = Vec::new();
    for n in 0..1100u32 {
        let from = 2 + u8::try_from(n % 22).expect("small");
        match connect_from(from, to).await {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connection {n} from 127.0.0.{from}: {e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (status, answer) = tokio::time::timeout(
        Duration::from_secs(30),
        h.deliver(Forge::GitHub, "ping", "during-idle", &json!({"zen": "hi"})),
    )
    .await
    .expect("the signed delivery is answered during the flood");
    let latency = started.elapsed();
    assert_eq!((status, answer["status"].as_str()), (200, Some("pong")));
    let health = h.get_text(&format!("{}/healthz", h.url)).await;
    assert_eq!(health, "ok\n");
    let runs = h.get_json("/api/v1/runs").await;
    assert!(runs["runs"].is_array(), "{runs}");
    eprintln!("signed ping answered in {latency:?} during 1,100 idle connections");
    // The daemon held no more than its descriptors allow, and most of the
    // flood is still connected from the client's side (it was not simply
    // over when the delivery came).
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(open < 1024, "the daemon holds {open} descriptors");
    let mut still_open = 0;
    for s in &mut flood {
        if closed_or_answered(s, Duration::from_millis(1))
            .await
            .is_none()
        {
            still_open += 1;
        }
    }
    assert!(
        still_open > 100,
        "only {still_open} of the flood were still open"
    );
    // The header-read timeout (10 s) closes what stays silent: waited for
    // (each connection's own 10 s runs from its accept), within a bound.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut left = flood.len();
    while left > 0 && Instant::now() < deadline {
        left = 0;
        for s in &mut flood {
            if closed_or_answered(s, Duration::from_millis(1))
                .await
                .is_none()
            {
                left += 1;
            }
        }
        if left > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert_eq!(
        left, 0,
        "silent connections outlived the header-read timeout"
    );
    // And the daemon still works.
    let (status, _) = h
        .deliver(Forge::GitHub, "ping", "after-idle", &json!({}))
        .await;
    assert_eq!(status, 200);
}
