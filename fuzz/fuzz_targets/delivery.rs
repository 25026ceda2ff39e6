//! Any body, under any event name and for either forge: `solstice_forge::parse`
//! returns a delivery or a typed error without panicking, and what it
//! returns is sane (a commit is a hexadecimal id, a ref a branch, tag or
//! pull request ref, a reason short).
#![no_main]

use libfuzzer_sys::fuzz_target;
use solstice_forge::{Delivery, Forge, parse};

const EVENTS: [&str; 4] = ["push", "pull_request", "ping", "check_run"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let forge = if selector & 1 == 0 {
        Forge::GitHub
    } else {
        Forge::Forgejo
    };
    let event = EVENTS[usize::from(selector >> 1) % EVENTS.len()];
    match parse(forge, event, "fuzz", body) {
        Ok(Delivery::Event(e)) => {
            assert!(matches!(e.commit.len(), 40 | 64));
            assert!(e.commit.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(
                e.git_ref.starts_with("refs/heads/")
                    || e.git_ref.starts_with("refs/tags/")
                    || e.git_ref.starts_with("refs/pull/")
            );
        }
        Ok(Delivery::Ignored { reason }) => assert!(reason.chars().count() < 200),
        Ok(_) | Err(_) => {}
    }
});
