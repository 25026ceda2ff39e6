//! Real webhook payloads (`tests/fixtures`, see its README) read into the
//! exact `ForgeEvent` each should give, signed and verified first as the
//! daemon will do; and the deliveries that start nothing.

use std::path::Path;

use solstice_forge::{
    Delivery, EventKind, Forge, ForgeEvent, PayloadError, PullRequestAction, parse, sign, verify,
};

const SECRET: &[u8] = b"webhook-secret";

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(path),
    )
    .expect("fixture")
}

/// Signs the body, verifies it, reads it.
fn deliver(forge: Forge, event: &str, path: &str) -> Delivery {
    let body = fixture(path);
    let signature = sign(forge, SECRET, &body);
    verify(forge, SECRET, Some(signature.as_bytes()), &body).expect("signed");
    parse(forge, event, "delivery-1", &body).expect("readable")
}

fn event(forge: Forge, event_name: &str, path: &str) -> ForgeEvent {
    match deliver(forge, event_name, path) {
        Delivery::Event(e) => e,
        other => panic!("{path}: expected an event, got {other:?}"),
    }
}

fn ignored(forge: Forge, event_name: &str, path: &str) -> String {
    match deliver(forge, event_name, path) {
        Delivery::Ignored { reason } => reason,
        other => panic!("{path}: expected nothing to start, got {other:?}"),
    }
}

struct Expected {
    repository: &'static str,
    clone_url: &'static str,
    commit: &'static str,
    git_ref: &'static str,
    kind: EventKind,
    sender: &'static str,
    changed_paths: Option<&'static [&'static str]>,
}

fn check(forge: Forge, name: &str, path: &str, want: Expected) {
    let got = event(forge, name, path);
    assert_eq!(got.forge, forge, "{path}");
    assert_eq!(got.delivery, "delivery-1", "{path}");
    assert_eq!(got.repository, want.repository, "{path}");
    assert_eq!(got.clone_url, want.clone_url, "{path}");
    assert_eq!(got.commit, want.commit, "{path}");
    assert_eq!(got.git_ref, want.git_ref, "{path}");
    assert_eq!(got.kind, want.kind, "{path}");
    assert_eq!(got.sender, want.sender, "{path}");
    assert_eq!(
        got.changed_paths,
        want.changed_paths
            .map(|p| p.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        "{path}"
    );
}

fn pr(number: u64, action: PullRequestAction, base: &str, from_fork: bool) -> EventKind {
    EventKind::PullRequest {
        number,
        action,
        base_branch: base.to_string(),
        from_fork,
    }
}

const DRONE_TEST: &str = "bradrydzewski/drone-test-go";
const DRONE_TEST_URL: &str = "https://github.com/bradrydzewski/drone-test-go.git";

#[test]
fn github_pushes() {
    check(
        Forge::GitHub,
        "push",
        "github/go-scm/push.json",
        Expected {
            repository: "Codertocat/Hello-World",
            clone_url: "https://github.com/Codertocat/Hello-World.git",
            commit: "199eddf46df50de8d02e99bf1c5fdb4101338224",
            git_ref: "refs/heads/master",
            kind: EventKind::Push,
            sender: "Codertocat",
            changed_paths: Some(&["README.md"]),
        },
    );
    // A new branch and a tag: changed against what? Unknown.
    check(
        Forge::GitHub,
        "push",
        "github/go-scm/push_branch_create.json",
        Expected {
            repository: DRONE_TEST,
            clone_url: DRONE_TEST_URL,
            commit: "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd",
            git_ref: "refs/heads/feature-branch",
            kind: EventKind::Push,
            sender: "bradrydzewski",
            changed_paths: None,
        },
    );
    check(
        Forge::GitHub,
        "push",
        "github/go-scm/push_tag.json",
        Expected {
            repository: DRONE_TEST,
            clone_url: DRONE_TEST_URL,
            commit: "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd",
            git_ref: "refs/tags/v0.0.1",
            kind: EventKind::Push,
            sender: "bradrydzewski",
            changed_paths: None,
        },
    );
    // A forced push rewrote history: its commit list says nothing certain.
    check(
        Forge::GitHub,
        "push",
        "github/woodpecker/HookPushForced.json",
        Expected {
            repository: "6543/oxiduct",
            clone_url: "https://github.com/6543/oxiduct.git",
            commit: "f7220f1f753260bf6f1c533357c70213e9fd4abe",
            git_ref: "refs/heads/main",
            kind: EventKind::Push,
            sender: "6543",
            changed_paths: None,
        },
    );
    for deleted in [
        "github/go-scm/push_branch_delete.json",
        "github/go-scm/push_tag_delete.json",
    ] {
        assert!(
            ignored(Forge::GitHub, "push", deleted).contains("deleted"),
            "{deleted}"
        );
    }
}

#[test]
fn github_pull_requests() {
    let sync = "8102e371cd01cf668893cb2d04a04d52331b1dc9";
    let head = "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd";
    for (path, action, commit) in [
        (
            "github/go-scm/pr_opened.json",
            PullRequestAction::Opened,
            head,
        ),
        (
            "github/go-scm/pr_sync.json",
            PullRequestAction::Synchronized,
            sync,
        ),
        (
            "github/go-scm/pr_reopened.json",
            PullRequestAction::Reopened,
            head,
        ),
    ] {
        check(
            Forge::GitHub,
            "pull_request",
            path,
            Expected {
                repository: DRONE_TEST,
                clone_url: DRONE_TEST_URL,
                commit,
                git_ref: "refs/pull/1/head",
                kind: pr(1, action, "bradrydzewski-patch-1", false),
                sender: "bradrydzewski",
                changed_paths: None,
            },
        );
    }
    check(
        Forge::GitHub,
        "pull_request",
        "github/go-scm/pr_ready_for_review.json",
        Expected {
            repository: "wings-software/meet-git-sync-test",
            clone_url: "https://github.com/wings-software/meet-git-sync-test.git",
            commit: "212015fb011c49a2913c4a1a860ce07c0821c362",
            git_ref: "refs/pull/38/head",
            kind: pr(38, PullRequestAction::ReadyForReview, "main", false),
            sender: "rathodmeetsatish",
            changed_paths: None,
        },
    );
    // The fork: head in leodido/lstn, base in listendev/lstn.
    check(
        Forge::GitHub,
        "pull_request",
        "github/lstn/github_event_pull_request_from_fork.json",
        Expected {
            repository: "listendev/lstn",
            clone_url: "https://github.com/listendev/lstn.git",
            commit: "5864e328f129b98726813940b5bfa44707963bdc",
            git_ref: "refs/pull/217/head",
            kind: pr(217, PullRequestAction::Opened, "main", true),
            sender: "leodido",
            changed_paths: None,
        },
    );
    for closed in [
        "github/go-scm/pr_closed.json",
        "github/woodpecker/HookPullRequestMerged.json",
    ] {
        assert!(
            ignored(Forge::GitHub, "pull_request", closed).contains("closed"),
            "{closed}"
        );
    }
    assert!(
        ignored(
            Forge::GitHub,
            "pull_request",
            "github/go-scm/pr_labeled.json"
        )
        .contains("labeled")
    );
}

#[test]
fn forgejo_pushes_and_pull_requests() {
    check(
        Forge::Forgejo,
        "push",
        "forgejo/woodpecker-forgejo/HookPush.json",
        Expected {
            repository: "gordon/hello-world",
            clone_url: "http://forgejo.golang.org/gordon/hello-world.git",
            commit: "ef98532add3b2feb7a137426bba1248724367df5",
            git_ref: "refs/heads/main",
            kind: EventKind::Push,
            sender: "gordon",
            changed_paths: Some(&["CHANGELOG.md", "app/controller/application.rb"]),
        },
    );
    check(
        Forge::Forgejo,
        "push",
        "forgejo/gitea-go-scm/push.json",
        Expected {
            repository: "gogits/hello-world",
            clone_url: "http://try.gitea.io/gogits/hello-world.git",
            commit: "4522cbcefc20728a5b72b3a86af35e608622c514",
            git_ref: "refs/heads/master",
            kind: EventKind::Push,
            sender: "unknwon",
            changed_paths: Some(&["README.md"]),
        },
    );
    // A new branch (`before` is zeros): changed against what? Unknown.
    check(
        Forge::Forgejo,
        "push",
        "forgejo/woodpecker-forgejo/HookPushBranch.json",
        Expected {
            repository: "meisam/woodpecktester",
            clone_url: "https://codeberg.org/meisam/woodpecktester.git",
            commit: "28c3613ae62640216bea5e7dc71aa65356e4298b",
            git_ref: "refs/heads/fdsafdsa",
            kind: EventKind::Push,
            sender: "6543",
            changed_paths: None,
        },
    );
    // The documentation's example lists a commit that changed no path: an
    // empty list is not believed (path filters would wrongly skip the run).
    check(
        Forge::Forgejo,
        "push",
        "forgejo/forgejo-docs/push.json",
        Expected {
            repository: "forgejo/webhooks",
            clone_url: "http://localhost:3000/forgejo/webhooks.git",
            commit: "bffeb74224043ba2feb48d137756c8a9331c449a",
            git_ref: "refs/heads/develop",
            kind: EventKind::Push,
            sender: "forgejo",
            changed_paths: None,
        },
    );
    check(
        Forge::Forgejo,
        "pull_request",
        "forgejo/woodpecker-forgejo/HookPullRequestUpdated.json",
        Expected {
            repository: "Test-CI/multi-line-secrets",
            clone_url: "http://127.0.0.1:3000/Test-CI/multi-line-secrets.git",
            commit: "788ed8d02d3b7fcfcf6386dbcbca696aa1d4dc25",
            git_ref: "refs/pull/2/head",
            kind: pr(2, PullRequestAction::Synchronized, "main", false),
            sender: "test",
            changed_paths: None,
        },
    );
    check(
        Forge::Forgejo,
        "pull_request",
        "forgejo/woodpecker-forgejo/HookPullRequestReopened.json",
        Expected {
            repository: "test_it/test_ci_thing",
            clone_url: "https://codeberg.org/test_it/test_ci_thing.git",
            commit: "36b5813240a9d2daa29b05046d56a53e18f39a3e",
            git_ref: "refs/pull/1/head",
            kind: pr(1, PullRequestAction::Reopened, "main", false),
            sender: "6543",
            changed_paths: None,
        },
    );
    check(
        Forge::Forgejo,
        "pull_request",
        "forgejo/gitea-go-scm/pull_request_opened.json",
        Expected {
            repository: "jcitizen/my-repo",
            clone_url: "https://try.gitea.io/jcitizen/my-repo.git",
            commit: "2eba238e33607c1fa49253182e9fff42baafa1eb",
            git_ref: "refs/pull/1/head",
            kind: pr(1, PullRequestAction::Opened, "master", false),
            sender: "jcitizen",
            changed_paths: None,
        },
    );
    for closed in [
        "forgejo/woodpecker-forgejo/HookPullRequestClosed.json",
        "forgejo/woodpecker-forgejo/HookPullRequestMerged.json",
    ] {
        assert!(
            ignored(Forge::Forgejo, "pull_request", closed).contains("closed"),
            "{closed}"
        );
    }
    assert!(
        ignored(
            Forge::Forgejo,
            "pull_request",
            "forgejo/woodpecker-forgejo/HookPullRequestEdited.json"
        )
        .contains("edited")
    );
    // Forgejo's separate `create` and `delete` events: the push carries it.
    assert!(
        ignored(
            Forge::Forgejo,
            "create",
            "forgejo/woodpecker-forgejo/HookTag.json"
        )
        .contains("create")
    );
    assert!(
        ignored(
            Forge::Forgejo,
            "delete",
            "forgejo/gitea-go-scm/branch_delete.json"
        )
        .contains("delete")
    );
}

#[test]
fn other_events_start_nothing_and_ping_is_a_ping() {
    assert!(
        ignored(Forge::GitHub, "check_run", "github/go-scm/check_run.json").contains("check_run")
    );
    assert!(ignored(Forge::GitHub, "status", "github/go-scm/status.json").contains("status"));
    assert_eq!(
        parse(Forge::GitHub, "ping", "d", b"{}").expect("ping"),
        Delivery::Ping
    );
}

#[test]
fn rerequested_checks_are_reruns() {
    match deliver(
        Forge::GitHub,
        "check_suite",
        "github/octokit/check_suite/rerequested.payload.json",
    ) {
        Delivery::Rerun(r) => {
            assert_eq!(r.repository, "Codertocat/Hello-World");
            assert_eq!(r.commit, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
            assert_eq!(r.installation, Some(957387));
            assert_eq!(r.external_id, None);
            assert_eq!(r.sender, "octocoders-linter[bot]");
            assert_eq!(r.delivery, "delivery-1");
        }
        other => panic!("{other:?}"),
    }
    // This check run was not made by Solstice (no external id): nothing to rerun.
    let reason = ignored(
        Forge::GitHub,
        "check_run",
        "github/octokit/check_run/rerequested.payload.json",
    );
    assert!(reason.contains("not one of Solstice's"), "{reason}");
    let mut v: serde_json::Value = serde_json::from_slice(&fixture(
        "github/octokit/check_run/rerequested.payload.json",
    ))
    .expect("json");
    v["check_run"]["external_id"] = "12/build".into();
    match parse(
        Forge::GitHub,
        "check_run",
        "d",
        &serde_json::to_vec(&v).expect("json"),
    )
    .expect("readable")
    {
        Delivery::Rerun(r) => {
            assert_eq!(r.external_id.as_deref(), Some("12/build"));
            assert_eq!(r.commit, "d6fde92930d4715a2b49857d24b940956b26d2d3");
            assert_eq!(r.installation, Some(1));
        }
        other => panic!("{other:?}"),
    }
    for (event, path) in [
        ("check_run", "github/octokit/check_run/created.payload.json"),
        (
            "check_suite",
            "github/octokit/check_suite/requested.payload.json",
        ),
    ] {
        assert!(
            ignored(Forge::GitHub, event, path).contains("starts nothing"),
            "{path}"
        );
    }
    // Forgejo has no checks API: the same event name starts nothing.
    assert!(matches!(
        parse(Forge::Forgejo, "check_suite", "d", b"{}").expect("ignored"),
        Delivery::Ignored { .. }
    ));
}

#[test]
fn hostile_bodies_get_a_clear_error() {
    let read = |body: &[u8]| parse(Forge::GitHub, "push", "d", body);
    assert!(matches!(read(b"{not json"), Err(PayloadError::Json(_))));
    assert!(matches!(read(b"[]"), Err(PayloadError::Field(_))));
    assert!(matches!(read(b"null"), Err(PayloadError::Field(_))));
    let mut push: serde_json::Value =
        serde_json::from_slice(&fixture("github/go-scm/push.json")).expect("json");
    let with = |field: &str, value: serde_json::Value| {
        let mut v = push.clone();
        v[field] = value;
        read(&serde_json::to_vec(&v).expect("json"))
    };
    assert!(matches!(
        with("after", "--upload-pack=x".into()),
        Err(PayloadError::Invalid { .. })
    ));
    assert!(matches!(
        with("after", 42.into()),
        Err(PayloadError::Field("after"))
    ));
    for not_a_branch in ["HEAD", "refs/notes/commits", "refs/heads/"] {
        match with("ref", not_a_branch.into()).expect("readable") {
            Delivery::Ignored { reason } => assert!(reason.contains("no branch or tag")),
            other => panic!("{not_a_branch}: {other:?}"),
        }
    }
    assert!(matches!(
        with("repository", serde_json::Value::Null),
        Err(PayloadError::Field(_))
    ));
    // The App installation travels with the event (for its API calls).
    match with("installation", serde_json::json!({"id": 5})).expect("readable") {
        Delivery::Event(e) => {
            assert_eq!(e.installation, Some(5));
            assert_eq!(e.repo().installation, Some(5));
            assert_eq!(e.default_branch.as_deref(), Some("master"));
        }
        other => panic!("{other:?}"),
    }
    push["after"] = "D2B75AA7797EC26B088FA2DD527E9D2C052FCEDD".into();
    match read(&serde_json::to_vec(&push).expect("json")).expect("readable") {
        Delivery::Event(e) => assert_eq!(e.commit, "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd"),
        other => panic!("{other:?}"),
    }
    // Past the limit: refused before it is parsed.
    let big = vec![b' '; solstice_forge::MAX_PAYLOAD + 1];
    assert!(matches!(read(&big), Err(PayloadError::TooLarge { .. })));
    // A hostile event name is cut in the reason.
    let long = "x".repeat(10_000);
    match parse(Forge::GitHub, &long, "d", b"{}").expect("ignored") {
        Delivery::Ignored { reason } => assert!(reason.len() < 200),
        other => panic!("{other:?}"),
    }
}

/// A maintainer's action on a stranger's pull request (reopening it,
/// pressing "Update branch") is sent with the maintainer as `sender`: the
/// event keeps whose code it is (`author`, from `pull_request.user`), and
/// whether the repository is private.
#[test]
fn a_pull_requests_author_is_not_its_sender() {
    for (forge, event_name, path, author, private) in [
        (
            Forge::GitHub,
            "pull_request",
            "github/lstn/github_event_pull_request_from_fork.json",
            "leodido",
            false,
        ),
        (
            Forge::GitHub,
            "pull_request",
            "github/go-scm/pr_sync.json",
            "bradrydzewski",
            true,
        ),
        (
            Forge::Forgejo,
            "pull_request",
            "forgejo/woodpecker-forgejo/HookPullRequestReopened.json",
            "6543",
            false,
        ),
    ] {
        let mut body: serde_json::Value =
            serde_json::from_slice(&fixture(path)).expect("fixture is JSON");
        body["sender"]["login"] = "maintainer".into();
        body["sender"]["username"] = "maintainer".into();
        let bytes = serde_json::to_vec(&body).expect("json");
        let Delivery::Event(got) = parse(forge, event_name, "d", &bytes).expect("readable") else {
            panic!("{path}: not an event");
        };
        assert_eq!(got.sender, "maintainer", "{path}");
        assert_eq!(got.author, author, "{path}");
        assert_eq!(got.private, private, "{path}");
    }
    // A push's author is its sender; a repository whose payload does not
    // say it is public counts as private.
    let mut push: serde_json::Value =
        serde_json::from_slice(&fixture("github/go-scm/push.json")).expect("fixture is JSON");
    push["repository"]
        .as_object_mut()
        .expect("repository")
        .remove("private");
    let bytes = serde_json::to_vec(&push).expect("json");
    let Delivery::Event(got) = parse(Forge::GitHub, "push", "d", &bytes).expect("readable") else {
        panic!("push: not an event");
    };
    assert_eq!(got.author, got.sender);
    assert!(got.private);
    // A pull request without an author is refused, not trusted by default.
    let mut body: serde_json::Value =
        serde_json::from_slice(&fixture("github/go-scm/pr_opened.json")).expect("fixture is JSON");
    body["pull_request"]
        .as_object_mut()
        .expect("pull_request")
        .remove("user");
    let bytes = serde_json::to_vec(&body).expect("json");
    assert!(matches!(
        parse(Forge::GitHub, "pull_request", "d", &bytes),
        Err(PayloadError::Field("pull_request.user.login"))
    ));
}
