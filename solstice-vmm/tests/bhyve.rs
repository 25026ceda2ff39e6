//! The bhyve-zone + ZFS provider, on Linux, against a model of an illumos
//! host: every command goes through the provider's `CommandRunner`, which
//! here keeps datasets, zones and VNICs as a real host would, records the
//! commands and fails the one a test names.
//!
//! The exact command sequences are golden files (`tests/golden/`); rewrite
//! them with `UPDATE_GOLDEN=1 cargo test -p solstice-vmm --test bhyve`
//! after a deliberate change, and review the diff.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use solstice_vmm::{
    BhyveConfig, BhyveProvider, CommandOutput, CommandRunner, DryRun, HostCommand, RunnerEndpoint,
    VmError, VmId, VmProvider, VmSpec, VmState, testing, vnic_name,
};

const JOBS: &str = "rpool/solstice/jobs";
const SNAPSHOT: &str = "rpool/solstice/images/omnios@golden";

#[derive(Debug, Default)]
struct Host {
    datasets: BTreeSet<String>,
    snapshots: BTreeSet<String>,
    /// name -> (state, owner)
    zones: BTreeMap<String, (String, String)>,
    vnics: BTreeSet<String>,
    /// What was written to each seed volume.
    written: BTreeMap<String, Vec<u8>>,
    log: Vec<String>,
    /// Fail the first command whose text is this, with this stderr.
    fail: Option<(String, String)>,
}

/// A model of an illumos host.
#[derive(Debug, Clone, Default)]
struct FakeIllumos(Arc<Mutex<Host>>);

impl FakeIllumos {
    fn new() -> FakeIllumos {
        let host = FakeIllumos::default();
        {
            let mut h = host.0.lock().expect("lock");
            h.datasets.insert(JOBS.into());
            h.snapshots.insert(SNAPSHOT.into());
        }
        host
    }

    fn failing(command: &str, stderr: &str) -> FakeIllumos {
        let host = FakeIllumos::new();
        host.0.lock().expect("lock").fail = Some((command.into(), stderr.into()));
        host
    }

    fn log(&self) -> Vec<String> {
        self.0.lock().expect("lock").log.clone()
    }

    /// Nothing of any VM remains: no job dataset, zone or VNIC.
    fn assert_empty(&self) {
        let h = self.0.lock().expect("lock");
        assert_eq!(
            h.datasets.iter().collect::<Vec<_>>(),
            vec![JOBS],
            "datasets left"
        );
        assert!(h.zones.is_empty(), "zones left: {:?}", h.zones);
        assert!(h.vnics.is_empty(), "VNICs left: {:?}", h.vnics);
    }
}

fn fail(stderr: &str) -> CommandOutput {
    CommandOutput::new(Some(1), Vec::new(), stderr.as_bytes().to_vec())
}

fn ok(stdout: &str) -> CommandOutput {
    CommandOutput::ok(stdout.as_bytes().to_vec())
}

impl Host {
    fn exec(&mut self, c: &HostCommand) -> CommandOutput {
        let a: Vec<&str> = c.args.iter().map(String::as_str).collect();
        let parent = |d: &str| {
            d.rsplit_once('/')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default()
        };
        match (c.program.as_str(), a.as_slice()) {
            ("zfs", ["create", "-o", "mountpoint=none", ds]) | ("zfs", ["create", "-V", _, ds]) => {
                if self.datasets.contains(*ds) {
                    return fail(&format!("cannot create '{ds}': dataset already exists"));
                }
                if !self.datasets.contains(&parent(ds)) {
                    return fail(&format!("cannot create '{ds}': parent does not exist"));
                }
                self.datasets.insert(ds.to_string());
                ok("")
            }
            ("zfs", ["clone", snap, ds]) => {
                if !self.snapshots.contains(*snap) {
                    return fail(&format!("cannot open '{snap}': dataset does not exist"));
                }
                if !self.datasets.contains(&parent(ds)) || self.datasets.contains(*ds) {
                    return fail(&format!("cannot create '{ds}'"));
                }
                self.datasets.insert(ds.to_string());
                ok("")
            }
            ("zfs", ["destroy", "-r", ds]) => {
                if !self.datasets.contains(*ds) {
                    return fail(&format!("cannot open '{ds}': dataset does not exist"));
                }
                let prefix = format!("{ds}/");
                self.datasets.retain(|d| d != ds && !d.starts_with(&prefix));
                ok("")
            }
            ("zfs", ["list", "-H", "-o", "name", "-r", ds]) => {
                if !self.datasets.contains(*ds) {
                    return fail(&format!("cannot open '{ds}': dataset does not exist"));
                }
                let prefix = format!("{ds}/");
                let mut out = String::new();
                for d in &self.datasets {
                    if d == ds || d.starts_with(&prefix) {
                        out.push_str(&format!("{d}\n"));
                    }
                }
                ok(&out)
            }
            ("zfs", ["list", "-H", "-o", "name", "-d", "1", ds]) => {
                let prefix = format!("{ds}/");
                let mut out = format!("{ds}\n");
                for d in &self.datasets {
                    if let Some(rest) = d.strip_prefix(&prefix)
                        && !rest.contains('/')
                    {
                        out.push_str(&format!("{d}\n"));
                    }
                }
                ok(&out)
            }
            ("dd", [of, "bs=4096", "conv=sync"]) => {
                let ds = of
                    .strip_prefix("of=/dev/zvol/rdsk/")
                    .unwrap_or_default()
                    .to_string();
                if !self.datasets.contains(&ds) {
                    return fail(&format!("dd: {of}: No such file or directory"));
                }
                self.written.insert(ds, c.stdin.clone().unwrap_or_default());
                ok("")
            }
            ("dladm", ["create-vnic", "-t", "-l", _link, vnic]) => {
                if !self.vnics.insert(vnic.to_string()) {
                    return fail("dladm: vnic creation failed: object already exists");
                }
                ok("")
            }
            ("dladm", ["delete-vnic", vnic]) => {
                if !self.vnics.remove(*vnic) {
                    return fail(&format!(
                        "dladm: vnic deletion failed: {vnic}: object not found"
                    ));
                }
                ok("")
            }
            ("dladm", ["show-vnic", "-p", "-o", "link"]) => {
                let mut out = String::from("igb0vnic9\n");
                for v in &self.vnics {
                    out.push_str(&format!("{v}\n"));
                }
                ok(&out)
            }
            ("zonecfg", ["-z", name, script]) if script.starts_with("create -b") => {
                if self.zones.contains_key(*name) {
                    return fail(&format!("{name}: zone already exists"));
                }
                let owner = script
                    .split("set name=solstice-owner; set type=string; set value=")
                    .nth(1)
                    .and_then(|r| r.split(';').next())
                    .unwrap_or_default();
                self.zones
                    .insert(name.to_string(), ("configured".into(), owner.into()));
                ok("")
            }
            ("zonecfg", ["-z", name, "delete", "-F"]) => match self.zones.get(*name) {
                Some((state, _)) if state == "configured" => {
                    self.zones.remove(*name);
                    ok("")
                }
                Some(_) => fail(&format!("{name}: zone is installed; uninstall it first")),
                None => fail(&format!("{name}: No such zone configured")),
            },
            ("zonecfg", ["-z", name, "info", "attr", "name=solstice-owner"]) => {
                match self.zones.get(*name) {
                    Some((_, owner)) => ok(&format!(
                        "attr:\n\tname: solstice-owner\n\ttype: string\n\tvalue: {owner}\n"
                    )),
                    None => fail(&format!("{name}: No such zone configured")),
                }
            }
            ("zoneadm", ["-z", name, verb @ ..]) => {
                let Some((state, _)) = self.zones.get_mut(*name) else {
                    return fail(&format!("zoneadm: {name}: No such zone configured"));
                };
                let (from, to) = match verb {
                    ["install"] => ("configured", "installed"),
                    ["boot"] => ("installed", "running"),
                    ["halt"] => ("running", "installed"),
                    ["uninstall", "-F"] => ("installed", "configured"),
                    ["list", "-p"] => {
                        return ok(&format!(
                            "-:{name}:{state}:/zones/solstice/{name}:uuid:bhyve:excl\n"
                        ));
                    }
                    _ => return fail("zoneadm: unknown subcommand"),
                };
                if state != from {
                    return fail(&format!(
                        "zoneadm: zone '{name}': must be {from}, is {state}"
                    ));
                }
                *state = to.to_string();
                ok("")
            }
            ("zoneadm", ["list", "-cp"]) => {
                let mut out = String::from("0:global:running:/::ipkg:shared\n");
                for (name, (state, _)) in &self.zones {
                    out.push_str(&format!(
                        "-:{name}:{state}:/zones/solstice/{name}:uuid:bhyve:excl\n"
                    ));
                }
                out.push_str("-:other:installed:/zones/other::lipkg:excl\n");
                ok(&out)
            }
            _ => fail(&format!("fake illumos: unknown command {c}")),
        }
    }
}

#[async_trait]
impl CommandRunner for FakeIllumos {
    async fn run(&self, command: &HostCommand) -> std::io::Result<CommandOutput> {
        let mut h = self.0.lock().expect("lock");
        let text = command.to_string();
        h.log.push(text.clone());
        if let Some((c, stderr)) = &h.fail
            && *c == text
        {
            let out = fail(stderr);
            h.fail = None;
            return Ok(out);
        }
        Ok(h.exec(command))
    }
}

fn config() -> BhyveConfig {
    let mut config = BhyveConfig::new(SNAPSHOT, JOBS, Some("igb0".into()));
    config
        .images
        .insert("broken".into(), "rpool/solstice/images/none@golden".into());
    config
}

fn provider(host: &FakeIllumos) -> BhyveProvider {
    BhyveProvider::new(config(), Arc::new(host.clone())).expect("provider")
}

fn spec(name: &str) -> VmSpec {
    let mut spec = VmSpec::new(
        name,
        "42",
        RunnerEndpoint::Tcp("10.0.0.1:7000".into()),
        "the-job-token",
    );
    spec.label = "omnios".into();
    spec.vcpus = 2;
    spec.memory_mib = 2048;
    spec
}

/// Compares `lines` with the golden file `name` (or rewrites it).
fn golden(name: &str, lines: &[String]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = lines.join("\n") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, want, "{name} changed (UPDATE_GOLDEN=1 rewrites it)");
}

#[tokio::test]
async fn provision_and_teardown_run_the_golden_command_sequences() {
    let host = FakeIllumos::new();
    let p = provider(&host);
    let vm = p
        .provision(&spec("solstice-r1-j2-a1"))
        .await
        .expect("provision");
    golden("bhyve-provision.txt", &host.log());
    assert_eq!(p.state(&vm.id).await.expect("state"), VmState::Running);
    // The seed volume holds the endpoint, the name and the token; the token
    // is on no command line.
    let seed =
        host.0.lock().expect("lock").written[&format!("{JOBS}/solstice-r1-j2-a1/seed")].clone();
    assert!(
        seed.starts_with(
            b"SOLSTICE-SEED-1\nhttp://10.0.0.1:7000\nsolstice-r1-j2-a1\nthe-job-token\n"
        )
    );
    assert!(!host.log().iter().any(|c| c.contains("the-job-token")));

    host.0.lock().expect("lock").log.clear();
    p.destroy(&vm.id).await.expect("destroy");
    golden("bhyve-destroy.txt", &host.log());
    host.assert_empty();
}

/// Every provision step failing in turn: the error names the failed
/// command and its stderr, and everything made before it is gone.
#[tokio::test]
async fn a_failure_at_every_provision_step_is_cleaned_up_and_named() {
    let plan = provider(&FakeIllumos::new())
        .plan(&spec("solstice-r1-j2-a1"))
        .expect("plan")
        .0;
    assert_eq!(plan.len(), 8, "the steps this test covers");
    for (i, step) in plan.iter().enumerate() {
        let stderr = format!("injected failure at step {i}");
        let host = FakeIllumos::failing(&step.to_string(), &stderr);
        let p = provider(&host);
        let err = p
            .provision(&spec("solstice-r1-j2-a1"))
            .await
            .expect_err("the step fails");
        let text = err.to_string();
        assert!(matches!(err, VmError::Boot { .. }), "{text}");
        assert!(
            text.contains(&format!("`{step}` failed (exit 1)")),
            "{text}"
        );
        assert!(text.contains(&stderr), "{text}");
        host.assert_empty();
        // Nothing after the failed step was tried.
        let log = host.log();
        let later: Vec<String> = plan[i + 1..].iter().map(ToString::to_string).collect();
        assert!(
            !log.iter().any(|c| later.contains(c)),
            "step {i}: ran a later step: {log:?}"
        );
        assert!(p.list().await.expect("list").is_empty(), "step {i}");
    }
}

/// A teardown step that fails while the thing it removes still exists is
/// an error naming what remains; the other steps still ran.
#[tokio::test]
async fn a_teardown_that_leaves_something_is_an_error_naming_it() {
    let (_, teardown) = provider(&FakeIllumos::new())
        .plan(&spec("solstice-r1-j2-a1"))
        .expect("plan");
    for step in &teardown {
        let host = FakeIllumos::new();
        let p = provider(&host);
        let vm = p
            .provision(&spec("solstice-r1-j2-a1"))
            .await
            .expect("provision");
        host.0.lock().expect("lock").fail = Some((step.to_string(), "device busy".into()));
        let err = p.destroy(&vm.id).await.expect_err("something remains");
        let text = err.to_string();
        assert!(text.contains("still exist"), "{step}: {text}");
        assert!(
            text.contains(&format!("`{step}` failed (exit 1): device busy")),
            "{text}"
        );
        // Every later step was still tried; a second destroy finishes.
        let log = host.log();
        assert!(
            log.iter().any(|c| c.starts_with("zfs destroy -r")),
            "{log:?}"
        );
        p.destroy(&vm.id).await.expect("the retry cleans up");
        host.assert_empty();
    }
}

/// A host whose listings fail cannot say the VM is gone: destroy is an
/// error naming the listing, never a silent success.
#[tokio::test]
async fn a_failing_listing_is_never_taken_for_gone() {
    let host = FakeIllumos::new();
    let p = provider(&host);
    let vm = p
        .provision(&spec("solstice-r1-j2-a1"))
        .await
        .expect("provision");
    host.0.lock().expect("lock").fail = Some((
        "zoneadm list -cp".into(),
        "zoneadm: permission denied".into(),
    ));
    let err = p.destroy(&vm.id).await.expect_err("cannot tell");
    let text = err.to_string();
    assert!(text.contains("cannot tell whether it is gone"), "{text}");
    assert!(text.contains("zoneadm: permission denied"), "{text}");
    host.assert_empty();
}

#[tokio::test]
async fn the_bhyve_provider_conforms() {
    let host = FakeIllumos::new();
    let first = provider(&host);
    testing::run_all(&first, |n| spec(&format!("solstice-{n}"))).await;
    host.assert_empty();
    let mut broken = spec("solstice-halfway");
    broken.label = "broken".into();
    testing::failed_provision_leaves_nothing(&first, &broken).await;
    host.assert_empty();
    let second = provider(&host);
    testing::leftovers_are_found_by_a_new_instance(&first, &second, &spec("solstice-leftover"))
        .await;
    host.assert_empty();
}

/// A dataset whose zone never came to be is listed without an owner (so
/// the reaper destroys it); zones of other brands or names are not ours.
#[tokio::test]
async fn list_reports_orphaned_datasets_and_ignores_other_zones() {
    let host = FakeIllumos::new();
    host.0
        .lock()
        .expect("lock")
        .datasets
        .insert(format!("{JOBS}/solstice-orphan"));
    let p = provider(&host);
    let vm = p
        .provision(&spec("solstice-r1-j1-a1"))
        .await
        .expect("provision");
    let listed = p.list().await.expect("list");
    let ids: Vec<(&str, &str)> = listed
        .iter()
        .map(|i| (i.id.0.as_str(), i.owner.as_str()))
        .collect();
    assert_eq!(
        ids,
        vec![("solstice-orphan", ""), ("solstice-r1-j1-a1", "42")]
    );
    p.destroy(&VmId("solstice-orphan".into()))
        .await
        .expect("reap");
    p.destroy(&vm.id).await.expect("destroy");
    host.assert_empty();
}

#[tokio::test]
async fn hostile_names_owners_and_endpoints_are_refused_before_any_command() {
    let host = FakeIllumos::new();
    let p = provider(&host);
    let mut bad = Vec::new();
    bad.push(spec("solstice-x; zfs destroy -r rpool"));
    bad.push(spec("not-ours"));
    bad.push(spec(&format!("solstice-{}", "x".repeat(60))));
    let mut s = spec("solstice-owner");
    s.owner = "1; add fs; set dir=/".into();
    bad.push(s);
    let mut s = spec("solstice-unix");
    s.endpoint = RunnerEndpoint::Unix("/run/solstice.sock".into());
    bad.push(s);
    let mut s = spec("solstice-token");
    s.token = "a\nb".into();
    bad.push(s);
    for s in bad {
        assert!(p.provision(&s).await.is_err(), "{s:?}");
    }
    assert!(host.log().is_empty(), "{:?}", host.log());
    assert!(
        BhyveProvider::new(
            BhyveConfig::new("pool/img@g; rm -rf /", JOBS, None),
            Arc::new(host.clone())
        )
        .is_err()
    );
}

/// `--dry-run`: the plan, printed; nothing runs and nothing remains.
#[tokio::test]
async fn a_dry_run_records_the_commands_it_would_run() {
    let dry = Arc::new(DryRun::quiet());
    let p = BhyveProvider::new(config(), dry.clone()).expect("provider");
    let vm = p
        .provision(&spec("solstice-r1-j2-a1"))
        .await
        .expect("provision");
    p.destroy(&vm.id).await.expect("destroy");
    let (provision, teardown) = p.plan(&spec("solstice-r1-j2-a1")).expect("plan");
    let ran = dry.commands();
    assert_eq!(&ran[..provision.len()], &provision[..]);
    assert_eq!(
        &ran[provision.len()..provision.len() + teardown.len()],
        &teardown[..]
    );
    assert!(vnic_name("solstice-r1-j2-a1").len() <= 31);
    assert!(vnic_name("solstice-r1-j2-a1").ends_with('0'));
}

/// The zone's console (a socket bhyve serves inside the zone's root) is
/// read while the VM runs; `console_tail` gives its end for the job's log
/// and forgets it when the VM is destroyed.
#[tokio::test]
async fn the_zones_console_is_read_into_the_console_tail() {
    let zones = tempfile::tempdir().expect("temp dir");
    let host = FakeIllumos::new();
    let mut config = config();
    config.zone_root = zones.path().to_str().expect("utf-8").to_string();
    let p = BhyveProvider::new(config, Arc::new(host.clone())).expect("provider");
    let name = "solstice-r1-j3-a1";
    let socket = p.console_socket(name);
    assert_eq!(socket, zones.path().join(name).join("root/tmp/vm.com1"));
    let vm = p.provision(&spec(name)).await.expect("provision");
    // bhyve opens the socket once the zone boots: after the provider asked.
    std::fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let (mut guest, _) = listener.accept().await.expect("the provider connects");
    use tokio::io::AsyncWriteExt;
    let noise = "x".repeat(100_000);
    guest
        .write_all(format!("{noise}\n").as_bytes())
        .await
        .expect("write");
    guest
        .write_all(b"Linux version 6.1\nsolstice-initramfs: no root disk\n")
        .await
        .expect("write");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let tail = loop {
        let tail = p.console_tail(&vm.id).await.unwrap_or_default();
        if tail.contains("no root disk") || std::time::Instant::now() > deadline {
            break tail;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        tail.ends_with("solstice-initramfs: no root disk\n"),
        "{}",
        &tail[tail.len().saturating_sub(200)..]
    );
    assert!(
        tail.len() <= solstice_vmm::BHYVE_CONSOLE_KEEP,
        "{} bytes kept",
        tail.len()
    );
    p.destroy(&vm.id).await.expect("destroy");
    assert_eq!(p.console_tail(&vm.id).await, None);
}
