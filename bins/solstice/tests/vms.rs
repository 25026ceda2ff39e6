//! `solstice vm-check`: the configuration's `vms` block composed into
//! providers as the daemon composes them, one VM started and destroyed.

use std::path::Path;
use std::process::{Command, Output};

fn solstice(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_solstice"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("SOLSTICE_LOG", "warn")
        .current_dir(dir)
        .output()
        .expect("solstice runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn config(dir: &Path) -> std::path::PathBuf {
    let image = solstice_vmm::QemuImage::default_dir().expect("image dir");
    let path = dir.join("solstice.kdl");
    std::fs::write(dir.join("token"), "t").expect("write");
    std::fs::write(dir.join("hook"), "h").expect("write");
    std::fs::write(
        &path,
        format!(
            "state-dir \"state\"\nrunner-listen \"10.0.0.1:7000\"\nforgejo {{\n    url \"https://codeberg.org\"\n    token-file \"token\"\n    webhook-secret-file \"hook\"\n}}\nvms {{\n    label \"linux\" provider=\"qemu\" image=\"{}\" reach=\"deb.debian.org:80\"\n    label \"omnios\" provider=\"bhyve\" snapshot=\"rpool/solstice/images/omnios@golden\"\n    default provider=\"local\"\n}}\nbhyve {{\n    link \"igb0\"\n}}\n",
            image.display()
        ),
    )
    .expect("write");
    path
}

#[test]
fn vm_check_boots_a_qemu_label_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let o = solstice(
        dir.path(),
        &[
            "vm-check",
            "--config",
            &cfg.display().to_string(),
            "--label",
            "linux",
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("label \"linux\": the VM ran"), "{out}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("state/qemu"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn vm_check_dry_runs_print_the_commands_and_run_none() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let cfg = cfg.display().to_string();
    let o = solstice(
        dir.path(),
        &[
            "vm-check",
            "--config",
            &cfg,
            "--label",
            "omnios",
            "--dry-run",
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    for expected in [
        "zfs clone rpool/solstice/images/omnios@golden rpool/solstice/jobs/solstice-vm-check-",
        "dladm create-vnic -t -l igb0 solstice",
        "set brand=bhyve",
        "zoneadm -z solstice-vm-check-",
        "zfs destroy -r rpool/solstice/jobs/solstice-vm-check-",
    ] {
        assert!(out.contains(expected), "{expected}: {out}");
    }
    assert!(
        !out.contains("vm-check-token"),
        "the token is not printed: {out}"
    );

    let o = solstice(
        dir.path(),
        &[
            "vm-check",
            "--config",
            &cfg,
            "--label",
            "linux",
            "--dry-run",
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("qemu-img create -q -f qcow2 -F raw -b "),
        "{out}"
    );
    assert!(out.contains("restrict=on"), "{out}");
    // The label's own host, and not the forge: the daemon clones on the
    // host and sends the tree in, so the VM has no route to it.
    // (socat logs to a file in the VM's directory, never into the stream.)
    let forward = |ip_port: &str, target: &str| {
        out.split(",guestfwd=").any(|f| {
            f.starts_with(&format!("tcp:{ip_port}-cmd:socat -lf "))
                && f.contains("/socat.log STDIO ")
                && f.split_whitespace()
                    .nth(4)
                    .map(|t| t.trim_end_matches('\''))
                    == Some(target)
        })
    };
    assert!(forward("10.0.2.101:80", "TCP:deb.debian.org:80"), "{out}");
    assert!(!out.contains("codeberg.org"), "{out}");
    assert!(!out.contains("10.0.2.102"), "{out}");
    assert!(
        !dir.path().join("state/qemu").exists()
            || std::fs::read_dir(dir.path().join("state/qemu"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
    );

    let o = solstice(
        dir.path(),
        &[
            "vm-check",
            "--config",
            &cfg,
            "--label",
            "anything-else",
            "--dry-run",
        ],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("without isolation"), "{out}");
}
