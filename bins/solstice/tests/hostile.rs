//! Bad webhook requests against the real daemon: each gets a clear 4xx and
//! changes nothing, and the daemon answers the next good delivery.

mod support;

use serde_json::json;
use solstice_forge::{Forge, MAX_PAYLOAD, sign};
use support::{HOOK_SECRET, Harness, push};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_without_side_effects() {
    let mut h = Harness::new(true, "").await;
    let sha =
        h.commit("workflow {\n    job id=\"build\" {\n        step run=\"echo ok\"\n    }\n}\n");
    h.start().await;
    let good = serde_json::to_vec(&push(&h.repo, &sha)).expect("json");
    let signature = sign(Forge::GitHub, HOOK_SECRET.as_bytes(), &good);
    let json_type = "application/json";

    // Unsigned, wrongly signed, malformed signature.
    let (s, _) = h
        .post(Forge::GitHub, "push", "h1", None, json_type, good.clone())
        .await;
    assert_eq!(s, 401);
    let wrong = sign(Forge::GitHub, b"another secret", &good);
    let (s, _) = h
        .post(
            Forge::GitHub,
            "push",
            "h2",
            Some(&wrong),
            json_type,
            good.clone(),
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = h
        .post(
            Forge::GitHub,
            "push",
            "h3",
            Some("sha256=zz"),
            json_type,
            good.clone(),
        )
        .await;
    assert_eq!(s, 401);
    // The Forgejo endpoint is not configured here.
    let (s, _) = h
        .post(
            Forge::Forgejo,
            "push",
            "h4",
            Some(&signature),
            json_type,
            good.clone(),
        )
        .await;
    assert_eq!(s, 404);
    // Not JSON by its content type.
    let (s, a) = h
        .post(
            Forge::GitHub,
            "push",
            "h5",
            Some(&signature),
            "application/x-www-form-urlencoded",
            good.clone(),
        )
        .await;
    assert_eq!(s, 415, "{a}");
    // Signed, but not JSON, or missing what a push needs.
    for (id, body) in [
        ("h6", b"{not json".to_vec()),
        ("h7", b"[]".to_vec()),
        ("h8", br#"{"ref":"refs/heads/main"}"#.to_vec()),
    ] {
        let sig = sign(Forge::GitHub, HOOK_SECRET.as_bytes(), &body);
        let (s, a) = h
            .post(Forge::GitHub, "push", id, Some(&sig), json_type, body)
            .await;
        assert_eq!(s, 400, "{id}: {a}");
        assert!(a["error"].is_string(), "{a}");
    }
    // Headers the forge always sends, missing or absurd.
    let (s, _) = h
        .post(
            Forge::GitHub,
            "push",
            "",
            Some(&signature),
            json_type,
            good.clone(),
        )
        .await;
    assert_eq!(s, 400);
    let long_id = "x".repeat(1000);
    let (s, _) = h
        .post(
            Forge::GitHub,
            "push",
            &long_id,
            Some(&signature),
            json_type,
            good.clone(),
        )
        .await;
    assert_eq!(s, 400);
    // Over GitHub's 25 MB limit: refused from the declared length, before
    // the body is read (a raw request: an HTTP client writing the whole
    // body would race the early answer and the closed connection).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = h.url.trim_start_matches("http://").to_string();
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /hooks/github HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: h9\r\nContent-Length: {}\r\n\r\n",
            MAX_PAYLOAD + 1
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut answer = vec![0u8; 64];
        let n = stream.read(&mut answer).await.expect("read");
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    }
    // A ping, and events that start nothing.
    let (s, a) = h
        .deliver(Forge::GitHub, "ping", "h10", &json!({"zen": "hi"}))
        .await;
    assert_eq!((s, a["status"].as_str()), (200, Some("pong")));
    let mut deleted = push(&h.repo, &sha);
    deleted["deleted"] = true.into();
    deleted["after"] = "0000000000000000000000000000000000000000".into();
    let (s, a) = h.deliver(Forge::GitHub, "push", "h11", &deleted).await;
    assert_eq!(s, 202);
    assert_eq!(a["status"], "ignored");
    assert!(
        a["reason"].as_str().unwrap_or_default().contains("deleted"),
        "{a}"
    );
    let (s, a) = h.deliver(Forge::GitHub, "issues", "h12", &json!({})).await;
    assert_eq!((s, a["status"].as_str()), (202, Some("ignored")));

    // Nothing above was recorded or ran.
    assert!(h.forge.check_runs().is_empty());
    assert_eq!(h.get_json("/api/v1/runs").await["runs"], json!([]));

    // And the next good delivery works.
    let (s, a) = h
        .post(
            Forge::GitHub,
            "push",
            "h-good",
            Some(&signature),
            json_type,
            good,
        )
        .await;
    assert_eq!((s, a["status"].as_str()), (202, Some("accepted")), "{a}");
    h.wait_for("the good delivery's run", || h.completed(&sha) > 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_bad_ids_and_unauthenticated_calls() {
    let mut h = Harness::new(true, "").await;
    h.start().await;
    // Every API call needs the token: reads, writes, the operator's calls.
    for (method, path) in [
        ("GET", "/api/v1/runs"),
        ("GET", "/api/v1/runs/1"),
        ("GET", "/api/v1/jobs/1"),
        ("GET", "/api/v1/jobs/1/log"),
        ("GET", "/api/v1/jobs/1/why"),
        ("GET", "/api/v1/hosts"),
        ("GET", "/api/v1/deliveries"),
        ("POST", "/api/v1/runs/1/cancel"),
        ("POST", "/api/v1/jobs/1/retry"),
        ("POST", "/api/v1/trigger"),
        ("GET", "/api/v1/deliveries/github/x"),
        ("POST", "/api/v1/deliveries/github/x/approve"),
    ] {
        for token in [
            None,
            Some("wrong"),
            Some("admin-token-for-tests-but-longer"),
        ] {
            let mut req = h
                .http
                .request(method.parse().expect("method"), format!("{}{path}", h.url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let s = req.send().await.expect("answer").status();
            assert_eq!(s.as_u16(), 401, "{method} {path} with {token:?}");
        }
    }
    for path in [
        "/api/v1/runs/999",
        "/api/v1/jobs/999",
        "/api/v1/jobs/999/log",
        "/jobs/999",
        "/runs/999",
    ] {
        let s = h
            .http
            .get(format!("{}{path}", h.url))
            .bearer_auth(support::ADMIN_TOKEN)
            .send()
            .await
            .expect("get")
            .status();
        assert_eq!(s.as_u16(), 404, "{path}");
    }
    for path in ["/api/v1/runs/abc", "/api/v1/runs?limit=x", "/jobs/-"] {
        let s = h
            .http
            .get(format!("{}{path}", h.url))
            .bearer_auth(support::ADMIN_TOKEN)
            .send()
            .await
            .expect("get")
            .status();
        assert_eq!(s.as_u16(), 400, "{path}");
    }
    let s = h
        .http
        .get(format!("{}/api/v1/deliveries", h.url))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("get")
        .status();
    assert_eq!(s.as_u16(), 401);
    let s = h
        .http
        .post(format!("{}/api/v1/deliveries/github/nope/approve", h.url))
        .bearer_auth(support::ADMIN_TOKEN)
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(s.as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_past_the_limit_is_refused_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = Harness::new(true, "").await;
    h.start().await;
    let addr = h.url.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // The body is written while the answer is read: the daemon answers as
    // soon as the body passes the limit, and closes.
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 1 << 20];
        let mut sent = 0;
        while sent <= MAX_PAYLOAD {
            writer
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            writer.write_all(&chunk).await?;
            writer.write_all(b"\r\n").await?;
            sent += chunk.len();
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = vec![0u8; 64];
    let n = reader.read(&mut answer).await.unwrap_or(0);
    sending.abort();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text:?}");
    // The daemon still answers.
    let (s, _) = h.deliver(Forge::GitHub, "ping", "after", &json!({})).await;
    assert_eq!(s, 200);
}
