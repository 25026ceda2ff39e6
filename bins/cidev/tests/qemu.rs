//! `cidev run --provider qemu` end to end: every job in its own VM booted
//! from the project's guest image (`images/linux-guest/build.sh`, which the
//! README's test command runs first), under TCG where KVM cannot boot.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cidev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args(args)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .output()
        .expect("cidev runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok_and(|p| p != std::process::id()))
        })
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .count()
}

#[test]
fn the_vm_example_runs_inside_guests_that_reach_nothing_but_the_runner() {
    let host_kernel = String::from_utf8(
        Command::new("uname")
            .arg("-r")
            .output()
            .expect("uname")
            .stdout,
    )
    .expect("utf-8");
    let o = cidev(&["run", "--provider", "qemu", "examples/workflows/vm.kdl"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    // The guest's kernel, host name and image marker: not the host's.
    let kernel = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("[guest] ")
                .filter(|k| k.contains("cloud-amd64"))
        })
        .unwrap_or_else(|| panic!("no guest kernel line: {out}"));
    assert_ne!(kernel.trim(), host_kernel.trim(), "{out}");
    assert!(out.contains("[guest] host solstice-r1-j"), "{out}");
    assert!(out.contains("image: solstice linux guest"), "{out}");
    assert!(
        out.contains("[guest] the repository was copied in"),
        "{out}"
    );
    assert!(
        out.contains("[isolated] cannot reach 10.0.2.2 5432"),
        "{out}"
    );
    assert!(out.contains("[isolated] cannot reach 1.1.1.1 443"), "{out}");
}

/// The negative control for the isolation step: with egress allowed the
/// same step does reach the host's PostgreSQL, so its passing above means
/// something.
#[test]
fn with_egress_the_same_check_reaches_the_host() {
    let o = cidev(&[
        "run",
        "--provider",
        "qemu",
        "--egress",
        "--job",
        "isolated",
        "examples/workflows/vm.kdl",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("reached 10.0.2.2 5432: the guest is not isolated"),
        "{out}"
    );
}

/// A step's output reaches the host while the step still runs.
#[test]
fn the_log_streams_out_of_the_guest_live() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("live.kdl");
    std::fs::write(
        &file,
        r#"workflow { job id="live" { step run="echo tick; sleep 4; echo tock"; } }"#,
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args(["run", "--provider", "qemu"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .lines()
        .map_while(Result::ok)
    {
        seen.push((Instant::now(), line));
    }
    assert!(child.wait().expect("wait").success(), "{seen:?}");
    let at = |s: &str| {
        seen.iter()
            .find(|(_, l)| l == s)
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no {s:?} in {seen:?}"))
    };
    assert!(
        at("[live] tock") - at("[live] tick") >= Duration::from_secs(2),
        "tick arrived only with the end of the step"
    );
}

/// cidev killed while its job's VM runs: the VM's directory (overlay, seed
/// disk, sockets) stays behind; the next cidev on the same state reaps it.
#[test]
fn a_vm_a_killed_cidev_left_is_reaped_by_the_next_run() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let old = dir.path().join("old.kdl");
    std::fs::write(
        &old,
        r#"workflow { job id="old" { step run="echo started; sleep 120"; } }"#,
    )
    .expect("write");
    let new = dir.path().join("new.kdl");
    std::fs::write(
        &new,
        r#"workflow { job id="new" { step run="echo new"; } }"#,
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args(["run", "--provider", "qemu", "--state"])
        .arg(&state)
        .arg("--tmpdir")
        .arg(dir.path())
        .arg(&old)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let started = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "[old] started");
    assert!(started, "the old job started in its VM");
    let vms = state.join("vms");
    let vm_dirs = || -> Vec<PathBuf> {
        std::fs::read_dir(&vms)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let left = vm_dirs();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].join("disk.qcow2").is_file());
    let vm = left[0].display().to_string();
    assert!(processes_mentioning(&vm) >= 1, "QEMU runs");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(
        left[0].join("disk.qcow2").is_file(),
        "a killed cidev cannot remove its VM"
    );

    let o = Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args(["run", "--provider", "qemu", "--state"])
        .arg(&state)
        .arg(&new)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .output()
        .expect("cidev");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("[new] new"), "{out}");
    assert!(out.contains("left unfinished by an earlier cidev"), "{out}");
    assert!(
        vm_dirs().is_empty(),
        "the old VM was reaped: {:?}",
        vm_dirs()
    );
    assert_eq!(
        processes_mentioning(&vm),
        0,
        "no QEMU of the old VM is left"
    );
}

/// A VM that cannot boot puts its console in the job's log.
#[test]
fn a_guest_that_cannot_boot_shows_its_console_in_the_log() {
    let dir = tempfile::tempdir().expect("dir");
    let image = dir.path().join("image");
    std::fs::create_dir(&image).expect("mkdir");
    let real = solstice_vmm::QemuImage::default_dir().expect("image dir");
    // The real kernel with no initramfs and no disk: it panics at boot.
    std::os::unix::fs::symlink(real.join("vmlinux"), image.join("vmlinux")).expect("link");
    let file = dir.path().join("job.kdl");
    std::fs::write(&file, r#"workflow { job id="j" { step run="true"; } }"#).expect("write");
    let o = cidev(&[
        "run",
        "--provider",
        "qemu",
        "--image",
        &image.display().to_string(),
        &file.display().to_string(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("the VM's console"), "{out}");
    assert!(out.contains("Kernel panic"), "{out}");
}

#[test]
fn image_and_egress_without_the_qemu_provider_are_usage_errors() {
    for extra in [
        &["--image", "/nowhere"][..],
        &["--label-image", "debian-12=/nowhere"][..],
        &["--egress"][..],
        &["--reach", "example.org:443"][..],
    ] {
        let mut args = vec!["run", "--provider", "mock"];
        args.extend_from_slice(extra);
        args.push("examples/workflows/hello.kdl");
        let o = cidev(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("are for --provider qemu"), "{}", text(&o));
    }
    let o = cidev(&[
        "run",
        "--provider",
        "qemu",
        "--image",
        "/nowhere/at/all",
        "examples/workflows/vm.kdl",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("images/linux-guest/build.sh"),
        "says how to build one: {}",
        text(&o)
    );
}

/// `--reach HOST:PORT`: the guest reaches that host and port (through its
/// own address, named in /etc/hosts), and still nothing else;
/// `--reach NAME=HOST:PORT` by a name of its own (the host's `localhost`). curl works
/// in the guest (busybox's static wget crashed resolving names).
#[test]
fn reach_opens_exactly_the_hosts_it_names() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::Write;
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Length: 28\r\n\r\nhello-from-the-allowed-host\n",
            );
        }
    });
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("reach.kdl");
    std::fs::write(
        &file,
        format!(
            r#"workflow {{
    job id="reach" {{
        step run="grep '^10.0.2.102 forge.example$' /etc/hosts"
        step run="nc -w 5 10.0.2.101 {port} </dev/null"
        step run="if nc -w 3 10.0.2.2 5432 </dev/null; then exit 1; fi; echo still-isolated"
        step run="echo curl: $(curl -sS --max-time 10 http://10.0.2.101:{port}/)"
        step run="code=0; curl -sS --max-time 5 http://localhost:1/ || code=$?; echo curl-by-name-exit-$code; test $code -eq 7"
        step run="echo named: $(curl -sS --max-time 10 http://service:{port}/)"
    }}
}}
"#
        ),
    )
    .expect("write");
    let o = cidev(&[
        "run",
        "--provider",
        "qemu",
        "--reach",
        &format!("127.0.0.1:{port}"),
        "--reach",
        "forge.example:443",
        "--reach",
        &format!("service=localhost:{port}"),
        &file.display().to_string(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("[reach] 10.0.2.102 forge.example"), "{out}");
    assert!(out.contains("[reach] hello-from-the-allowed-host"), "{out}");
    assert!(out.contains("[reach] still-isolated"), "{out}");
    assert!(
        out.contains("[reach] curl: hello-from-the-allowed-host"),
        "{out}"
    );
    // A name resolves (exit 7: could not connect, not 6: could not resolve).
    assert!(out.contains("[reach] curl-by-name-exit-7"), "{out}");
    // The orchestrator's own localhost, by the name the entry gives it.
    assert!(
        out.contains("[reach] named: hello-from-the-allowed-host"),
        "{out}"
    );
    // A malformed entry is refused before anything boots.
    let o = cidev(&[
        "run",
        "--provider",
        "qemu",
        "--reach",
        "forge.example",
        &file.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("write host:port"), "{}", text(&o));
}

/// A job that fills its VM's disk fails with a line that says so; the
/// overlay on the host stops at the disk's size.
#[test]
fn a_job_that_fills_its_disk_is_told_so() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("fill.kdl");
    std::fs::write(
        &file,
        r#"workflow { job id="fill" { step run="dd if=/dev/zero of=/work/fill bs=1M 2>/dev/null; exit 1"; } }"#,
    )
    .expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_cidev"))
        .args(["run", "--provider", "qemu", "--state"])
        .arg(dir.path().join("state"))
        .arg(&file)
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .output()
        .expect("cidev runs");
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("[fill] the disk is full: 0 MiB free of "),
        "{out}"
    );
}
