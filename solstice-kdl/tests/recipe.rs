//! Image recipes (`solstice_kdl::recipe`): what parses, and what each
//! mistake says.

use solstice_kdl::recipe::{Base, MAX_PACKAGES, MAX_RECIPE_STEPS, RecipeStep, parse_recipe};

fn problems(text: &str) -> Vec<(String, String, Option<String>)> {
    parse_recipe("image.kdl", text)
        .expect_err("refused")
        .problems()
        .iter()
        .map(|p| {
            (
                p.code.as_str().to_string(),
                p.message.clone(),
                p.help.clone(),
            )
        })
        .collect()
}

#[test]
fn a_full_recipe_parses_in_order() {
    let r = parse_recipe(
        "image.kdl",
        r#"
image name="debian-12-rust" {
    label "debian-12-rust" "rust"
    from "../debian-12"
    disk_gib 16
    packages "libssl-dev" "cmake"
    packages "cmake" "pkg-config"
    copy from="${RUST_TOOLCHAIN}" to="/opt/rust"
    run "ln -s /opt/rust/bin/cargo /usr/local/bin/"
    copy from="files/motd" to="/etc/motd"
    user "ci"
}
"#,
    )
    .expect("parses");
    assert_eq!(r.name, "debian-12-rust");
    assert_eq!(r.labels, ["debian-12-rust", "rust"]);
    assert_eq!(
        r.base,
        Base::Recipe {
            path: "../debian-12".into()
        }
    );
    assert_eq!(r.disk_gib, 16);
    // A package named twice is installed once.
    assert_eq!(r.packages, ["libssl-dev", "cmake", "pkg-config"]);
    assert_eq!(r.user.as_deref(), Some("ci"));
    assert!(
        matches!(&r.steps[0], RecipeStep::Copy { from, to } if from == "${RUST_TOOLCHAIN}" && to == "/opt/rust")
    );
    assert!(matches!(&r.steps[1], RecipeStep::Run { command } if command.starts_with("ln -s")));
    assert!(matches!(&r.steps[2], RecipeStep::Copy { to, .. } if to == "/etc/motd"));
}

#[test]
fn defaults_a_minimal_recipe_takes() {
    let r = parse_recipe(
        "image.kdl",
        r#"image name="x" { label "x"; debootstrap suite="bookworm" }"#,
    )
    .expect("parses");
    assert_eq!(r.disk_gib, 8);
    assert_eq!(
        r.base,
        Base::Debootstrap {
            suite: "bookworm".into(),
            mirror: None
        }
    );
    assert!(r.packages.is_empty() && r.steps.is_empty() && r.user.is_none());
}

#[test]
fn typos_get_suggestions() {
    let p = problems(r#"image name="x" { lable "x"; debootstrap suit="bookworm" }"#);
    assert!(
        p.iter().any(|(c, _, h)| c == "solstice::unknown_node"
            && h.as_deref() == Some("did you mean `label`?")),
        "{p:?}"
    );
    assert!(
        p.iter().any(|(c, _, h)| c == "solstice::unknown_property"
            && h.as_deref() == Some("did you mean `suite`?")),
        "{p:?}"
    );
    let p = problems(r#"imag name="x" { label "x"; debootstrap suite="bookworm" }"#);
    assert!(p.iter().any(|(c, _, h)| c == "solstice::root" && h.as_deref() == Some("did you mean `image`?")), "{p:?}");
}

#[test]
fn every_mistake_is_reported_at_once() {
    let p = problems(
        r#"
image name="bad name" {
    debootstrap suite="bookworm" mirror="ftp://x"
    from "../other"
    disk_gib 0
    packages "Gcc" "gcc;rm" "--force"
    copy from="a" to="relative/path"
    copy to="/x"
    run ""
    user "root"
}
"#,
    );
    let messages: Vec<&str> = p.iter().map(|(_, m, _)| m.as_str()).collect();
    for want in [
        "`bad name` is not a valid image name",
        "`ftp://x` is not a mirror URL",
        "an image has one base",
        "`disk_gib` must be between 1 and 1024, not 0",
        "`Gcc` is not a Debian package name",
        "`gcc;rm` is not a Debian package name",
        "`--force` is not a Debian package name",
        "`to` must be an absolute path in the image without `..`, not `relative/path`",
        "`copy` needs `from`",
        "the command is empty",
        "`root` cannot be the steps' user",
        "the image serves no label",
    ] {
        assert!(
            messages.contains(&want),
            "missing {want:?} in {messages:#?}"
        );
    }
}

#[test]
fn limits_hold_at_and_past_them() {
    let packages = |n: usize| {
        (0..n)
            .map(|i| format!("\"pkg{i}\""))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let at = format!(
        r#"image name="x" {{ label "x"; debootstrap suite="bookworm"; packages {} }}"#,
        packages(MAX_PACKAGES)
    );
    assert_eq!(
        parse_recipe("image.kdl", &at)
            .expect("parses")
            .packages
            .len(),
        MAX_PACKAGES
    );
    let past = format!(
        r#"image name="x" {{ label "x"; debootstrap suite="bookworm"; packages {} }}"#,
        packages(MAX_PACKAGES + 1)
    );
    assert!(
        problems(&past)
            .iter()
            .any(|(_, m, _)| m == &format!("more than {MAX_PACKAGES} packages"))
    );

    let runs = |n: usize| {
        (0..n)
            .map(|i| format!("run \"echo {i}\"\n"))
            .collect::<String>()
    };
    let at = format!(
        "image name=\"x\" {{\nlabel \"x\"\ndebootstrap suite=\"bookworm\"\n{}}}",
        runs(MAX_RECIPE_STEPS)
    );
    assert_eq!(
        parse_recipe("image.kdl", &at).expect("parses").steps.len(),
        MAX_RECIPE_STEPS
    );
    let past = format!(
        "image name=\"x\" {{\nlabel \"x\"\ndebootstrap suite=\"bookworm\"\n{}}}",
        runs(MAX_RECIPE_STEPS + 1)
    );
    assert!(
        problems(&past)
            .iter()
            .any(|(_, m, _)| m == &format!("more than {MAX_RECIPE_STEPS} `copy` and `run` steps"))
    );

    assert!(
        problems(r#"image name="x" { label "x"; debootstrap suite="bookworm"; disk_gib 1025 }"#)
            .iter()
            .any(|(_, m, _)| m == "`disk_gib` must be between 1 and 1024, not 1025")
    );
    assert_eq!(
        parse_recipe(
            "image.kdl",
            r#"image name="x" { label "x"; debootstrap suite="bookworm"; disk_gib 1024 }"#
        )
        .expect("parses")
        .disk_gib,
        1024
    );
}

#[test]
fn hostile_documents_are_refused_not_crashed_on() {
    for text in [
        "",
        "image",
        "image name=\"x\" { label \"x\" } image name=\"y\"",
        &"image { ".repeat(500),
        "image name=1 { label 2; debootstrap suite=#true; disk_gib \"8\"; user 3 }",
        "image name=\"x\" { label \"x\"; debootstrap suite=\"bookworm\"; run \"a\" \"b\" }",
    ] {
        assert!(parse_recipe("image.kdl", text).is_err(), "{text:?}");
    }
    let big = format!(
        "image name=\"x\" {{ label \"x\"; debootstrap suite=\"bookworm\"; run \"{}\" }}",
        "a".repeat(2 << 20)
    );
    let p = problems(&big);
    assert!(
        p.iter().any(|(c, _, _)| c == "solstice::too_large"),
        "{p:?}"
    );
}
