//! Webhook benchmarks through the real daemon binary (release build):
//!
//! 1. acknowledge latency: 200 signed push deliveries sent at once,
//!    p50/p99 of the time to each answer, against `GET /healthz` sent the
//!    same way to the same server (the HTTP floor) in the same run;
//! 2. push to first log line: 100 deliveries one after another, from the
//!    POST to the job's first stored log line being served by the API,
//!    against doing the job's own work by hand (`git clone` of the same
//!    repository and one `sh -c echo`) in the same run.
//!
//! 3. acknowledge latency under floods, with the daemon held to 1,024
//!    descriptors (systemd's default): 100 signed pings one after another,
//!    each on a new connection, with no flood (the baseline, same run),
//!    during 30 slow bodies that declare 25 MB and send a byte, and during
//!    1,100 idle connections from 22 other addresses.
//!
//! 4. memory of job pages: a job whose log is near the 64 MiB cap; the
//!    daemon's peak resident memory (VmHWM) grows by how much when 40
//!    browsers open its page at once (the page reads only the log's end),
//!    against 40 reads of the whole log through the API at once (what every
//!    page view read before), in the same run.
//!
//! `cargo bench -p solstice --bench webhooks` (or `-- ack`, `-- first-log`,
//! `-- flood`, `-- pages`).

#[path = "../tests/support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use solstice_forge::Forge;
use support::{Harness, push};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn ack(h: &Arc<Harness>, sha: &str) {
    const N: usize = 200;
    // Deliveries for a repository without a workflow: the processing that
    // follows each answer is a fetch and a 404, so the numbers are the
    // endpoint's (verify, parse, record, answer), not the jobs'.
    let mut body = push(&h.repo, sha);
    body["repository"]["full_name"] = "octo/no-workflow".into();
    let mut floor = Vec::with_capacity(N);
    let mut acks = Vec::with_capacity(N);
    for round in 0..3 {
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let http = h.http.clone();
                let url = format!("{}/healthz", h.url);
                tokio::spawn(async move {
                    let t = Instant::now();
                    let ok = http
                        .get(url)
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false);
                    assert!(ok);
                    t.elapsed()
                })
            })
            .collect();
        for t in tasks {
            floor.push(t.await.expect("task"));
        }
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let body = body.clone();
                let id = format!("ack-{round}-{i}");
                let h = h.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let (status, _) = h.deliver(Forge::GitHub, "push", &id, &body).await;
                    assert_eq!(status, 202);
                    t.elapsed()
                })
            })
            .collect();
        for t in tasks {
            acks.push(t.await.expect("task"));
        }
    }
    floor.sort();
    acks.sort();
    println!("acknowledge latency, {N} concurrent signed deliveries x 3 rounds:");
    println!(
        "  GET /healthz (floor): p50 {:.2} ms  p99 {:.2} ms",
        ms(percentile(&floor, 0.5)),
        ms(percentile(&floor, 0.99))
    );
    println!(
        "  POST /hooks/github:   p50 {:.2} ms  p99 {:.2} ms  (ratio p99 {:.1}x the floor)",
        ms(percentile(&acks, 0.5)),
        ms(percentile(&acks, 0.99)),
        ms(percentile(&acks, 0.99)) / ms(percentile(&floor, 0.99)).max(0.001)
    );
}

async fn first_log(h: &Harness, sha: &str) {
    const N: usize = 100;
    let body = push(&h.repo, sha);
    let mut times = Vec::with_capacity(N);
    let mut last_run = 0i64;
    for i in 0..N {
        let t = Instant::now();
        let (status, _) = h
            .deliver(Forge::GitHub, "push", &format!("log-{i}"), &body)
            .await;
        assert_eq!(status, 202);
        let job = loop {
            let runs = h.get_json("/api/v1/runs?limit=1").await;
            let run = runs["runs"][0]["id"].as_i64().unwrap_or(0);
            if run > last_run {
                let detail = h.get_json(&format!("/api/v1/runs/{run}")).await;
                if let Some(job) = detail["jobs"][0]["id"].as_i64() {
                    last_run = run;
                    break job;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        loop {
            let log = h
                .get_text(&format!("{}/api/v1/jobs/{job}/log", h.url))
                .await;
            if log.contains("first-line") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(t.elapsed());
    }
    // The floor: the job's own work, by hand.
    let mut floor = Vec::with_capacity(20);
    for _ in 0..20 {
        let dir = tempfile::tempdir().expect("dir");
        let t = Instant::now();
        let ok = std::process::Command::new("git")
            .args(["clone", "-q", &format!("file://{}", h.repo.display())])
            .arg(dir.path().join("c"))
            .status()
            .expect("git")
            .success();
        assert!(ok);
        let ok = std::process::Command::new("sh")
            .args(["-c", "echo first-line >/dev/null"])
            .status()
            .expect("sh")
            .success();
        assert!(ok);
        floor.push(t.elapsed());
    }
    times.sort();
    floor.sort();
    println!("push to first log line, {N} deliveries one after another:");
    println!(
        "  git clone + sh (floor): p50 {:.1} ms  p99 {:.1} ms",
        ms(percentile(&floor, 0.5)),
        ms(percentile(&floor, 0.99))
    );
    println!(
        "  through the daemon:     p50 {:.1} ms  p99 {:.1} ms  (ratio p50 {:.1}x the floor)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(percentile(&times, 0.5)) / ms(percentile(&floor, 0.5)).max(0.001)
    );
}

/// 100 signed pings, one after another, each on a new connection.
async fn pings(h: &Harness, tag: &str) -> Vec<Duration> {
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let body = serde_json::to_vec(&serde_json::json!({"zen": "hi"})).expect("json");
    let signature = solstice_forge::sign(Forge::GitHub, support::HOOK_SECRET.as_bytes(), &body);
    let mut out = Vec::with_capacity(100);
    for i in 0..100 {
        let t = Instant::now();
        let resp = fresh
            .post(format!("{}/hooks/github", h.url))
            .header("X-GitHub-Event", "ping")
            .header("X-GitHub-Delivery", format!("{tag}-{i}"))
            .header("X-Hub-Signature-256", &signature)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 200);
        out.push(t.elapsed());
    }
    out.sort();
    out
}

async fn connect_from(n: u8, to: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, n], 0)))?;
    socket.connect(to).await
}

async fn flood() {
    use tokio::io::AsyncWriteExt;
    let mut h = Harness::new(true, "").await;
    h.start_under(
        &["prlimit", "--nofile=1024:1024", "--"],
        "serve",
        &[("SOLSTICE_LOG", "warn")],
    )
    .await;
    let to: std::net::SocketAddr = h.url.trim_start_matches("http://").parse().expect("addr");
    let report = |what: &str, d: &[Duration], base: &[Duration]| {
        println!(
            "  {what:<34} p50 {:.2} ms  p99 {:.2} ms  (p99 {:.1}x the baseline)",
            ms(percentile(d, 0.5)),
            ms(percentile(d, 0.99)),
            ms(percentile(d, 0.99)) / ms(percentile(base, 0.99)).max(0.001)
        );
    };
    println!(
        "acknowledge latency under floods, 100 signed pings on new connections, daemon at 1,024 descriptors:"
    );
    let base = pings(&h, "base").await;
    report("no flood (baseline):", &base, &base);
    let mut slow = Vec::new();
    for i in 0..30u8 {
        let mut s = connect_from(2 + i % 6, to).await.expect("connect");
        let head = format!(
            "POST /hooks/github HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: slow-{i}\r\nContent-Length: {}\r\n\r\n{{",
            solstice_forge::MAX_PAYLOAD
        );
        s.write_all(head.as_bytes()).await.expect("write");
        slow.push(s);
    }
    let during = pings(&h, "slow").await;
    report("during 30 slow 25 MB bodies:", &during, &base);
    drop(slow);
    let mut idle = Vec::new();
    for n in 0..1100u32 {
        if let Ok(s) = connect_from(10 + (n % 22) as u8, to).await {
            idle.push(s);
        }
    }
    let during = pings(&h, "idle").await;
    report("during 1,100 idle connections:", &during, &base);
    drop(idle);
    h.terminate();
}

/// The daemon's peak resident memory so far (VmHWM), in MiB.
fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn pages() {
    let mut h = Harness::new(true, "").await;
    // About 60 MiB of output: 61 x 1 MiB of `x`, then a marker line.
    let sha = h.commit(
        "workflow {\n    job id=\"loud\" {\n        step run=\"head -c 63963136 /dev/zero | tr '\\\\0' x | fold -w 1023; echo the-end\"\n    }\n}\n",
    );
    h.start_with(&[("SOLSTICE_LOG", "warn")]).await;
    let pid = h.daemon.as_ref().expect("running").id();
    h.deliver(Forge::GitHub, "push", "loud", &push(&h.repo, &sha))
        .await;
    h.wait_for("the loud job", || h.completed(&sha) > 0).await;
    let page = h.checks(&sha)[0].2["details_url"]
        .as_str()
        .expect("details_url")
        .to_string();
    let job = page.rsplit('/').next().expect("job id").to_string();
    let h = Arc::new(h);
    let at_once = |url: String| {
        let h = h.clone();
        async move {
            let tasks: Vec<_> = (0..40)
                .map(|_| {
                    let http = h.http.clone();
                    let url = url.clone();
                    tokio::spawn(async move {
                        let resp = http
                            .get(url)
                            .bearer_auth(support::ADMIN_TOKEN)
                            .send()
                            .await
                            .expect("get");
                        resp.bytes().await.expect("body").len()
                    })
                })
                .collect();
            let mut bytes = 0;
            for t in tasks {
                bytes = t.await.expect("task");
            }
            bytes
        }
    };
    let before = peak_mib(pid);
    let shown = at_once(page).await;
    let after_pages = peak_mib(pid);
    let whole = at_once(format!("{}/api/v1/jobs/{job}/log", h.url)).await;
    let after_api = peak_mib(pid);
    println!(
        "memory of 40 views at once of a job with a {:.0} MiB log:",
        whole as f64 / 1048576.0
    );
    println!("  the daemon's peak before: {before:.0} MiB");
    println!(
        "  40 job pages ({:.1} MiB each):      peak +{:.0} MiB",
        shown as f64 / 1048576.0,
        after_pages - before
    );
    println!(
        "  40 whole-log reads (the API; what a page read before): peak +{:.0} MiB",
        after_api - after_pages.max(before)
    );
    if let Ok(mut h) = Arc::try_unwrap(h) {
        h.terminate();
    }
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if wants("flood") {
            flood().await;
        }
        if wants("pages") {
            pages().await;
        }
        if !wants("ack") && !wants("first-log") {
            return;
        }
        let mut h = Harness::new(true, "").await;
        let sha = h.commit(
            "workflow {\n    job id=\"build\" {\n        step run=\"echo first-line\"\n    }\n}\n",
        );
        h.start_with(&[("SOLSTICE_LOG", "warn")]).await;
        let h = Arc::new(h);
        if wants("ack") {
            ack(&h, &sha).await;
        }
        if wants("first-log") {
            first_log(&h, &sha).await;
        }
        if let Ok(mut h) = Arc::try_unwrap(h) {
            h.terminate();
        }
    });
}
