//! Pull requests from forks against the real daemon: trust belongs to the
//! pull request's author, whoever sends the event (a maintainer reopening
//! it, pressing "Update branch", re-running its checks), and an approval
//! covers exactly the commit it was given for. The held statuses link to
//! the page where an operator approves.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use solstice_forge::Forge;
use support::{ADMIN_TOKEN, Harness, pull_request_event};

const PASSING: &str =
    "workflow {\n    job id=\"build\" {\n        step run=\"echo built\"\n    }\n}\n";

/// The delivery's record, once the inbox has processed it.
async fn processed(h: &Harness, id: &str) -> Value {
    for _ in 0..400 {
        let got = h.get_json(&format!("/api/v1/deliveries/github/{id}")).await;
        if got["state"] != "pending" && !got["state"].is_null() {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("delivery {id} was not processed: {}", h.daemon_log());
}

async fn runs(h: &Harness) -> usize {
    h.get_json("/api/v1/runs").await["runs"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_follows_the_author_and_an_approval_covers_one_commit() {
    let mut h = Harness::new(true, "fork-pull-requests {\n trust \"maintainer\"\n}\n").await;
    h.commit(PASSING);
    let first = h.commit_pull_request(&format!("{PASSING}// first\n"));
    h.start().await;
    let deliver = |id: &'static str, body: Value| {
        let h = &h;
        async move {
            let (status, answer) = h.deliver(Forge::GitHub, "pull_request", id, &body).await;
            assert_eq!(status, 202, "{id}: {answer}");
            answer
        }
    };
    let repo = h.repo.clone();
    // A stranger opens it: held.
    deliver(
        "opened",
        pull_request_event(&repo, &first, true, "mallory", "mallory", "opened"),
    )
    .await;
    assert_eq!(processed(&h, "opened").await["state"], "approval");
    // The held check run links to the page where an operator approves it.
    h.wait_for("the held check run", || !h.checks(&first).is_empty())
        .await;
    let (_, history, fields) = &h.checks(&first)[0];
    assert_eq!(history, &["queued"]);
    let page_url = format!("{}/deliveries/github/opened", h.url);
    assert_eq!(fields["details_url"], json!(page_url), "{fields}");

    // A maintainer's actions on the stranger's code do not make it trusted.
    for (id, action) in [
        ("update-branch", "synchronize"),
        ("reopened", "reopened"),
        ("ready", "ready_for_review"),
    ] {
        deliver(
            id,
            pull_request_event(&repo, &first, true, "mallory", "maintainer", action),
        )
        .await;
        let record = processed(&h, id).await;
        assert_eq!(record["state"], "approval", "{action}: {record}");
    }
    // Edits and labels start nothing at all, whoever sends them.
    for (id, action) in [("edited", "edited"), ("labeled", "labeled")] {
        let answer = deliver(
            id,
            pull_request_event(&repo, &first, true, "mallory", "maintainer", action),
        )
        .await;
        assert_eq!(answer["status"], "ignored", "{action}: {answer}");
    }
    // Re-running the held check on GitHub (a maintainer) holds it again.
    let rerun = json!({
        "action": "rerequested",
        "check_run": { "head_sha": first, "external_id": "opened/build" },
        "repository": { "id": 1, "full_name": support::REPO },
        "sender": { "login": "maintainer" },
        "installation": { "id": 42 },
    });
    let (status, _) = h
        .deliver(Forge::GitHub, "check_run", "rerun-held", &rerun)
        .await;
    assert_eq!(status, 202);
    assert_eq!(processed(&h, "rerun-held").await["state"], "approval");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs(&h).await, 0, "nothing of the stranger's ran");

    // An operator approves the first commit: it runs.
    let approved = h
        .http
        .post(format!("{}/api/v1/deliveries/github/opened/approve", h.url))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("approve");
    assert_eq!(approved.status().as_u16(), 202);
    h.wait_for("the approved run", || h.completed(&first) > 0)
        .await;
    assert_eq!(runs(&h).await, 1);
    // The same commit again (reopened): the approval covers it.
    deliver(
        "reopened-again",
        pull_request_event(&repo, &first, true, "mallory", "maintainer", "reopened"),
    )
    .await;
    let record = processed(&h, "reopened-again").await;
    assert_eq!(record["state"], "done", "{record}");
    assert!(record["run_id"].is_number(), "{record}");
    // A new head, pushed by the maintainer's "Update branch": held again.
    let second = h.commit_pull_request(&format!("{PASSING}// second\n"));
    deliver(
        "second-head",
        pull_request_event(&repo, &second, true, "mallory", "maintainer", "synchronize"),
    )
    .await;
    assert_eq!(processed(&h, "second-head").await["state"], "approval");
    // A trusted author's fork pull request runs, whoever sends it.
    let trusted = h.commit_pull_request(&format!("{PASSING}// trusted\n"));
    deliver(
        "trusted",
        pull_request_event(&repo, &trusted, true, "maintainer", "mallory", "opened"),
    )
    .await;
    assert_eq!(processed(&h, "trusted").await["state"], "done");
    h.wait_for("the trusted run", || h.completed(&trusted) > 0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_page_shows_the_pull_request_and_approves_with_the_token() {
    let mut h = Harness::new(true, "").await;
    h.commit(PASSING);
    let sha = h.commit_pull_request(&format!("{PASSING}// fork\n"));
    h.start().await;
    let body = pull_request_event(&h.repo, &sha, true, "mallory\u{202e}", "mallory", "opened");
    h.deliver(Forge::GitHub, "pull_request", "held", &body)
        .await;
    assert_eq!(processed(&h, "held").await["state"], "approval");
    let page_url = format!("{}/deliveries/github/held", h.url);
    let page = h.get_text(&page_url).await;
    assert!(page.contains(&sha), "{page}");
    assert!(page.contains("Approve this commit"), "{page}");
    assert!(page.contains("ciadm approve github held"), "{page}");
    // The author's name is shown with its bidi override escaped.
    assert!(page.contains("mallory\\u{202e}"), "{page}");
    assert!(
        !page.contains('\u{202e}'),
        "a raw bidi override reached the page"
    );
    let approve = format!("{page_url}/approve");
    // Without the token: the browser is asked for it.
    let anonymous = h.http.post(&approve).send().await.expect("post");
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(
        anonymous
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Basic")),
        "{:?}",
        anonymous.headers()
    );
    // From another site, even with the token (a browser's stored
    // credentials riding along): refused.
    let forged = h
        .http
        .post(&approve)
        .basic_auth("operator", Some(ADMIN_TOKEN))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status().as_u16(), 403);
    let forged = h
        .http
        .post(&approve)
        .basic_auth("operator", Some(ADMIN_TOKEN))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status().as_u16(), 403);
    assert_eq!(runs(&h).await, 0);
    // The operator signs in (Basic, the token as the password) on the page.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let ok = no_redirect
        .post(&approve)
        .basic_auth("operator", Some(ADMIN_TOKEN))
        .header("origin", &h.url)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status().as_u16(), 303);
    h.wait_for("the approved run", || h.completed(&sha) > 0)
        .await;
    // Approving twice is a conflict, shown as such.
    let again = no_redirect
        .post(&approve)
        .basic_auth("operator", Some(ADMIN_TOKEN))
        .send()
        .await
        .expect("post");
    assert_eq!(again.status().as_u16(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repository_s_pages_need_the_admin_token() {
    let mut h = Harness::new(true, "").await;
    let public = h.commit(PASSING);
    let hidden = h.commit(
        "workflow name=\"secret-project\" {\n    job id=\"build\" {\n        step run=\"echo private-output\"\n    }\n}\n",
    );
    h.start().await;
    h.deliver(
        Forge::GitHub,
        "push",
        "public",
        &support::push(&h.repo, &public),
    )
    .await;
    let mut private = support::push(&h.repo, &hidden);
    private["repository"]["private"] = true.into();
    h.deliver(Forge::GitHub, "push", "private", &private).await;
    h.wait_for("both runs", || {
        h.completed(&public) > 0 && h.completed(&hidden) > 0
    })
    .await;
    let url_of = |sha: &str| {
        h.checks(sha)[0].2["details_url"]
            .as_str()
            .expect("details_url")
            .to_string()
    };
    let (public_job, private_job) = (url_of(&public), url_of(&hidden));
    let get = |url: String, auth: Option<(&'static str, &'static str)>| {
        let h = &h;
        async move {
            let mut req = h.http.get(url);
            match auth {
                Some(("bearer", t)) => req = req.bearer_auth(t),
                Some((user, t)) => req = req.basic_auth(user, Some(t)),
                None => {}
            }
            let resp = req.send().await.expect("get");
            (resp.status().as_u16(), resp.text().await.expect("text"))
        }
    };
    // The public repository's job page is open to anyone.
    assert_eq!(get(public_job.clone(), None).await.0, 200);
    // The private one's asks for the token, and shows nothing of the job.
    let (status, text) = get(private_job.clone(), None).await;
    assert_eq!(status, 401);
    assert!(!text.contains("private-output"), "{text}");
    let (status, _) = get(private_job.clone(), Some(("bearer", "wrong"))).await;
    assert_eq!(status, 401);
    // Its run page too (job and run ids are sequential: guessing is easy).
    let run_page = format!("{}/runs/2", h.url);
    assert_eq!(get(run_page.clone(), None).await.0, 401);
    // With the token (a browser's Basic sign-in, or a Bearer token).
    let (status, text) = get(private_job.clone(), Some(("anyone", ADMIN_TOKEN))).await;
    assert_eq!(status, 200);
    assert!(text.contains("private-output"), "{text}");
    assert_eq!(get(private_job, Some(("bearer", ADMIN_TOKEN))).await.0, 200);
    // The list of runs hides the private one from strangers.
    let (_, index) = get(format!("{}/", h.url), None).await;
    assert!(!index.contains("secret-project"), "{index}");
    assert!(
        index.contains("1 runs of private repositories are not listed"),
        "{index}"
    );
    let (_, index) = get(format!("{}/", h.url), Some(("anyone", ADMIN_TOKEN))).await;
    assert!(index.contains("secret-project"), "{index}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_bidi_and_format_characters_escaped() {
    let mut h = Harness::new(true, "").await;
    let sha = h.commit(
        "workflow {\n    job id=\"build\" {\n        step name=\"the \\u{202E}step\" run=\"printf 'a\\\\342\\\\200\\\\256b zw\\\\342\\\\200\\\\213j\\\\n'\"\n    }\n}\n",
    );
    h.start().await;
    h.deliver(Forge::GitHub, "push", "bidi", &support::push(&h.repo, &sha))
        .await;
    h.wait_for("the run", || h.completed(&sha) > 0).await;
    let url = h.checks(&sha)[0].2["details_url"]
        .as_str()
        .expect("url")
        .to_string();
    let page = h.get_text(&url).await;
    for c in ['\u{202e}', '\u{200b}'] {
        assert!(!page.contains(c), "{c:?} reached the page: {page}");
    }
    assert!(page.contains("the \\u{202e}step"), "{page}");
    assert!(page.contains("a\\u{202e}b zw\\u{200b}j"), "{page}");
}
