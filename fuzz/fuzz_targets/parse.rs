//! Any bytes: `parse_bytes` returns Ok or Err without panicking, hanging or
//! overflowing the stack, and its problems render; and text the strict recogniser sends straight to
//! `kdl` is text `kdl` parses without error recovery.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use solstice_kdl::ParseOptions;

static HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // solstice-kdl catches panics inside the `kdl` crates (kdl 4.7's v1
    // parser has some) and turns them into syntax errors. libfuzzer-sys's
    // hook would abort on those before they are caught, so this hook lets
    // panics located in `kdl` sources unwind; any panic that escapes the
    // library still aborts in libfuzzer-sys's harness.
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let in_kdl = info.location().is_some_and(|l| l.file().contains("/kdl-"));
            if !in_kdl {
                eprintln!("{info}");
                std::process::abort();
            }
        }));
    });
    // Every problem renders (long lines, labels at line breaks, many
    // problems) and the output stays bounded.
    if let Err(e) = solstice_kdl::parse_bytes("fuzz.kdl", data, &ParseOptions::default()) {
        let out = e.render(false, 80);
        assert!(
            out.len() <= 16 * data.len() + 200_000,
            "{} bytes of diagnostics",
            out.len()
        );
        let _ = e.to_json_records();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if solstice_kdl::__fuzz::strict_path(text, false) {
        if let Err(e) = kdl::KdlDocument::parse_v2(text) {
            panic!(
                "strict v2 subset accepted text that kdl rejects: {text:?}: {:?}",
                e.diagnostics
            );
        }
    }
    if solstice_kdl::__fuzz::strict_path(text, true) {
        match std::panic::catch_unwind(|| kdl::KdlDocument::parse_v1(text)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!(
                "strict v1 subset accepted text that kdl v1 rejects: {text:?}: {:?}",
                e.diagnostics
            ),
            Err(_) => panic!("strict v1 subset accepted text that crashes kdl v1: {text:?}"),
        }
    }
});
