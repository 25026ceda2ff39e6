//! The conformance suite for [`SecretStore`] implementations. Seed the
//! store under test with:
//!
//! - scope `octo/hello`: `API_KEY` = `value-of-api-key`, `DEPLOY_TOKEN` =
//!   `value-of-deploy-token`;
//! - scope `octo/other`: `API_KEY` = `another-api-key`;
//!
//! and call [`run_all`].

use crate::secrets::{SecretError, SecretStore};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Every check, in turn.
pub async fn run_all(store: &dyn SecretStore) {
    let got = store
        .get(
            "octo/hello",
            &names(&["API_KEY", "DEPLOY_TOKEN", "MISSING"]),
        )
        .await
        .expect("get");
    assert_eq!(
        got.get("API_KEY").map(String::as_str),
        Some("value-of-api-key")
    );
    assert_eq!(
        got.get("DEPLOY_TOKEN").map(String::as_str),
        Some("value-of-deploy-token")
    );
    assert!(!got.contains_key("MISSING"), "a missing name is left out");
    assert_eq!(got.len(), 2);

    let only = store
        .get("octo/hello", &names(&["API_KEY"]))
        .await
        .expect("get");
    assert_eq!(only.len(), 1, "only the names asked for");

    let other = store
        .get("octo/other", &names(&["API_KEY", "DEPLOY_TOKEN"]))
        .await
        .expect("get");
    assert_eq!(
        other.get("API_KEY").map(String::as_str),
        Some("another-api-key")
    );
    assert!(
        !other.contains_key("DEPLOY_TOKEN"),
        "scopes do not share values"
    );

    let none = store
        .get("octo/unknown", &names(&["API_KEY"]))
        .await
        .expect("get");
    assert!(none.is_empty(), "an unknown repository has no secrets");

    for hostile in [
        "octo/../octo/hello",
        "../hello",
        "octo",
        "octo/hello/x",
        "",
        "octo/hello\0",
        "/octo/hello",
        "octo/..",
    ] {
        match store.get(hostile, &names(&["API_KEY"])).await {
            Err(SecretError::Scope(_)) => {}
            Ok(found) => assert!(
                found.is_empty(),
                "{hostile:?} reached another scope's values"
            ),
            Err(e) => panic!("{hostile:?}: expected a scope error, got {e}"),
        }
    }
}
