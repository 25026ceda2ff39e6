//! One bhyve-branded zone per job on a ZFS clone of a golden snapshot (illumos).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::command::{CommandOutput, CommandRunner, HostCommand};
use crate::{RunnerEndpoint, VmError, VmHandle, VmId, VmInfo, VmProvider, VmSpec, VmState};

/// The zone attribute that records a VM's owner, for the reaper.
pub const OWNER_ATTR: &str = "solstice-owner";

/// How the bhyve provider runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BhyveConfig {
    /// The golden snapshot of each `runs_on` label (`pool/images/omnios@golden`).
    pub images: BTreeMap<String, String>,
    /// The snapshot of labels not in `images`, if any.
    pub default_image: Option<String>,
    /// The dataset under which each VM gets `NAME` (a filesystem holding
    /// `NAME/disk`, the clone, and `NAME/seed`, the seed volume).
    pub jobs_dataset: String,
    /// Zone paths are `zone_root/NAME`.
    pub zone_root: String,
    /// The physical link to put a VNIC for each VM on; none: no network
    /// (the runner endpoint must then be reachable some other way).
    pub link: Option<String>,
    /// Zone names start with this; `list` reports only such zones.
    pub prefix: String,
}

impl BhyveConfig {
    /// Every label boots `snapshot`; VMs under `jobs_dataset`, zones under
    /// `/zones/solstice`, VNICs on `link`, names starting with `solstice-`.
    pub fn new(
        snapshot: impl Into<String>,
        jobs_dataset: impl Into<String>,
        link: Option<String>,
    ) -> BhyveConfig {
        BhyveConfig {
            images: BTreeMap::new(),
            default_image: Some(snapshot.into()),
            jobs_dataset: jobs_dataset.into(),
            zone_root: "/zones/solstice".into(),
            link,
            prefix: "solstice-".into(),
        }
    }
}

/// Each job in its own bhyve-branded zone (illumos), booting a ZFS clone of
/// its label's golden snapshot.
///
/// Provision, in order (each through the [`CommandRunner`]):
///
/// 1. `zfs create -o mountpoint=none JOBS/NAME`
/// 2. `zfs clone SNAPSHOT JOBS/NAME/disk` (the boot disk)
/// 3. `zfs create -V 1M JOBS/NAME/seed` and `dd` the seed into it: the
///    runner endpoint, the VM's name and the job token, the same format
///    the QEMU provider's seed disk has ([`crate::SEED_MAGIC`]). The token
///    is on no command line; the zvol's device is root's alone.
/// 4. `dladm create-vnic -t -l LINK VNIC` (when a link is configured)
/// 5. `zonecfg -z NAME 'create -b; set brand=bhyve; ...'`: zonepath,
///    exclusive IP on the VNIC, the two zvols as devices, `bootdisk` and
///    `disk` (the seed) with the serial numbers the guest image looks for
///    (`solstice-root`, `solstice-seed`), `vcpus`, `ram`, the console as a
///    socket and the owner as the `solstice-owner` attribute
/// 6. `zoneadm -z NAME install`, `zoneadm -z NAME boot`
///
/// A failed step undoes the earlier ones and the error names the failed
/// command and its standard error. Teardown runs every step whatever
/// failed before (`zoneadm halt`, `zoneadm uninstall -F`, `zonecfg
/// delete -F`, `dladm delete-vnic`, `zfs destroy -r`) and then checks that
/// the zone, the VNIC and the datasets are gone: destroying what never
/// existed is `Ok`, failing to destroy what exists is an error.
///
/// The guest reaches the runner over the VNIC: give the engine a TCP
/// endpoint the guest can route to, and restrict the link with the
/// host's firewall (see `docs/vms.md`).
#[derive(Debug)]
pub struct BhyveProvider {
    config: BhyveConfig,
    runner: Arc<dyn CommandRunner>,
    /// The console of each VM this provider booted: what it printed, read
    /// from the zone's console socket while it runs.
    consoles: std::sync::Mutex<BTreeMap<String, Console>>,
}

/// The end of a zone's console output ([`BHYVE_CONSOLE_KEEP`] bytes) and
/// the task reading it.
#[derive(Debug)]
struct Console {
    text: Arc<std::sync::Mutex<Vec<u8>>>,
    reader: tokio::task::AbortHandle,
}

/// How much of a zone's console the provider keeps (the end of it).
pub const BHYVE_CONSOLE_KEEP: usize = 64 << 10;
/// How long the provider waits for a zone's console socket to appear.
const CONSOLE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn safe_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '@' | ':'))
}

/// A VNIC name for zone `name`: a link name must be at most 31 characters
/// and end in a digit; derived from the name, so a later process finds it.
pub fn vnic_name(name: &str) -> String {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("solstice{h:08x}0")
}

impl BhyveProvider {
    /// A provider running its commands through `runner`.
    pub fn new(config: BhyveConfig, runner: Arc<dyn CommandRunner>) -> Result<Self, VmError> {
        let mut values = vec![&config.jobs_dataset, &config.zone_root, &config.prefix];
        values.extend(config.images.values());
        values.extend(config.default_image.iter());
        values.extend(config.link.iter());
        for v in values {
            if !safe_value(v) {
                return Err(VmError::provider(format!(
                    "bhyve provider: {v:?} may only contain letters, digits and /._-@:"
                )));
            }
        }
        Ok(BhyveProvider {
            config,
            runner,
            consoles: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// The zone's console socket as the host sees it: the zone's
    /// `console=socket,/tmp/vm.com1` is inside the zone's root.
    pub fn console_socket(&self, name: &str) -> std::path::PathBuf {
        std::path::Path::new(&self.config.zone_root)
            .join(name)
            .join("root/tmp/vm.com1")
    }

    /// Reads a booted zone's console into memory until the zone stops,
    /// keeping the last [`BHYVE_CONSOLE_KEEP`] bytes.
    fn read_console(&self, name: &str) {
        let path = self.console_socket(name);
        let text = Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = text.clone();
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let started = std::time::Instant::now();
            let mut stream = loop {
                match tokio::net::UnixStream::connect(&path).await {
                    Ok(s) => break s,
                    Err(_) if started.elapsed() < CONSOLE_WAIT => {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Err(_) => return,
                }
            };
            let mut buf = vec![0u8; 16 << 10];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut kept = into.lock().unwrap_or_else(|e| e.into_inner());
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > BHYVE_CONSOLE_KEEP {
                    let cut = kept.len() - BHYVE_CONSOLE_KEEP;
                    kept.drain(..cut);
                }
            }
        })
        .abort_handle();
        let old = self
            .consoles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Console { text, reader });
        if let Some(old) = old {
            old.reader.abort();
        }
    }

    fn dataset(&self, name: &str) -> String {
        format!("{}/{name}", self.config.jobs_dataset)
    }

    async fn run(&self, command: HostCommand) -> Result<CommandOutput, String> {
        let shown = command.to_string();
        match self.runner.run(&command).await {
            Err(e) => Err(format!("`{shown}` could not run: {e}")),
            Ok(out) if out.success() => Ok(out),
            Ok(out) => Err(format!(
                "`{shown}` failed ({}): {}",
                out.code
                    .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}")),
                crate::command::printable(&String::from_utf8_lossy(&out.stderr)).trim()
            )),
        }
    }

    /// The provision commands for `spec` (zone configuration included).
    fn provision_commands(&self, spec: &VmSpec, snapshot: &str) -> Vec<HostCommand> {
        let name = &spec.name;
        let ds = self.dataset(name);
        let zvol = |d: &str| format!("/dev/zvol/rdsk/{ds}/{d}");
        let seed = crate::qemu::seed_disk(&spec.endpoint.uri(), name, &spec.token, "", "");
        let mut zone = vec![
            "create -b".to_string(),
            "set brand=bhyve".into(),
            format!("set zonepath={}/{name}", self.config.zone_root),
            "set autoboot=false".into(),
        ];
        if self.config.link.is_some() {
            zone.push("set ip-type=exclusive".into());
            zone.push(format!(
                "add net; set physical={}; set allowed-address=; end",
                vnic_name(name)
            ));
        }
        for d in ["disk", "seed"] {
            zone.push(format!("add device; set match={}; end", zvol(d)));
        }
        let attr = |k: &str, v: &str| {
            format!("add attr; set name={k}; set type=string; set value={v}; end")
        };
        // The serial numbers are how the guest's init tells the disks
        // apart (as under QEMU).
        zone.push(attr("bootdisk", &format!("{ds}/disk,serial=solstice-root")));
        zone.push(attr("disk", &format!("{ds}/seed,serial=solstice-seed")));
        zone.push(attr("vcpus", &spec.vcpus.clamp(1, 64).to_string()));
        zone.push(attr(
            "ram",
            &format!("{}M", spec.memory_mib.clamp(64, 1 << 20)),
        ));
        zone.push(attr("console", "socket,/tmp/vm.com1"));
        zone.push(attr(OWNER_ATTR, &spec.owner));
        zone.push("verify".into());
        zone.push("commit".into());

        let mut commands = vec![
            HostCommand::new("zfs", ["create", "-o", "mountpoint=none", &ds]),
            HostCommand::new("zfs", ["clone", snapshot, &format!("{ds}/disk")]),
            HostCommand::new("zfs", ["create", "-V", "1M", &format!("{ds}/seed")]),
            HostCommand::new(
                "dd",
                [
                    format!("of={}", zvol("seed")),
                    "bs=4096".into(),
                    "conv=sync".into(),
                ],
            )
            .with_stdin(seed),
        ];
        if let Some(link) = &self.config.link {
            commands.push(HostCommand::new(
                "dladm",
                ["create-vnic", "-t", "-l", link, &vnic_name(name)],
            ));
        }
        commands.push(HostCommand::new("zonecfg", ["-z", name, &zone.join("; ")]));
        commands.push(HostCommand::new("zoneadm", ["-z", name, "install"]));
        commands.push(HostCommand::new("zoneadm", ["-z", name, "boot"]));
        commands
    }

    /// The teardown commands of VM `name`: all run, whatever fails.
    fn teardown_commands(&self, name: &str) -> Vec<HostCommand> {
        let mut commands = vec![
            HostCommand::new("zoneadm", ["-z", name, "halt"]),
            HostCommand::new("zoneadm", ["-z", name, "uninstall", "-F"]),
            HostCommand::new("zonecfg", ["-z", name, "delete", "-F"]),
        ];
        if self.config.link.is_some() {
            commands.push(HostCommand::new("dladm", ["delete-vnic", &vnic_name(name)]));
        }
        commands.push(HostCommand::new(
            "zfs",
            ["destroy", "-r", &self.dataset(name)],
        ));
        commands
    }

    /// What of VM `name` still exists: the zone, the VNIC, the dataset.
    /// Read from the host's full listings, which succeed whenever the host
    /// works: a listing that fails is an error (nothing can be said), never
    /// taken for "gone".
    async fn remains(&self, name: &str) -> Result<Vec<String>, String> {
        let mut left = Vec::new();
        let zones = self
            .run(HostCommand::new("zoneadm", ["list", "-cp"]))
            .await?;
        // zoneid:zonename:state:...
        if String::from_utf8_lossy(&zones.stdout)
            .lines()
            .any(|l| l.split(':').nth(1) == Some(name))
        {
            left.push(format!("zone {name}"));
        }
        if self.config.link.is_some() {
            let vnic = vnic_name(name);
            let vnics = self
                .run(HostCommand::new("dladm", ["show-vnic", "-p", "-o", "link"]))
                .await?;
            if String::from_utf8_lossy(&vnics.stdout)
                .lines()
                .any(|l| l.trim() == vnic)
            {
                left.push(format!("VNIC {vnic}"));
            }
        }
        let ds = self.dataset(name);
        let datasets = self
            .run(HostCommand::new(
                "zfs",
                ["list", "-H", "-o", "name", "-r", &self.config.jobs_dataset],
            ))
            .await?;
        if String::from_utf8_lossy(&datasets.stdout)
            .lines()
            .any(|l| l.trim() == ds)
        {
            left.push(format!("dataset {ds}"));
        }
        Ok(left)
    }

    /// Runs every teardown step, then checks nothing remains.
    async fn teardown(&self, name: &str) -> Result<(), VmError> {
        let mut failures = Vec::new();
        for command in self.teardown_commands(name) {
            if let Err(e) = self.run(command).await {
                failures.push(e);
            }
        }
        let after = if failures.is_empty() {
            String::new()
        } else {
            format!(" after: {}", failures.join("; "))
        };
        match self.remains(name).await {
            Ok(left) if left.is_empty() => Ok(()),
            Ok(left) => Err(VmError::provider(format!(
                "VM {name}: {} still exist{after}",
                left.join(", ")
            ))),
            Err(e) => Err(VmError::provider(format!(
                "VM {name}: cannot tell whether it is gone: {e}{after}"
            ))),
        }
    }

    /// The commands `provision` and `destroy` would run for `spec`, in
    /// order, for `--dry-run` and the tests' golden files.
    pub fn plan(&self, spec: &VmSpec) -> Result<(Vec<HostCommand>, Vec<HostCommand>), VmError> {
        let snapshot = self.snapshot(spec)?;
        Ok((
            self.provision_commands(spec, snapshot),
            self.teardown_commands(&spec.name),
        ))
    }

    fn snapshot(&self, spec: &VmSpec) -> Result<&str, VmError> {
        self.config
            .images
            .get(&spec.label)
            .or(self.config.default_image.as_ref())
            .map(String::as_str)
            .ok_or_else(|| {
                VmError::provider(format!(
                    "bhyve provider: no image for label {:?}",
                    spec.label
                ))
            })
    }

    fn ours(&self, name: &str) -> bool {
        name.starts_with(&self.config.prefix) && crate::vmdir::safe_name(name)
    }

    /// `zoneadm -z NAME list -p`: the zone's state, if it exists.
    async fn zone_state(&self, name: &str) -> Option<String> {
        let out = self
            .runner
            .run(&HostCommand::new("zoneadm", ["-z", name, "list", "-p"]))
            .await
            .ok()
            .filter(CommandOutput::success)?;
        // zoneid:zonename:state:zonepath:uuid:brand:ip-type
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&name))
            .and_then(|f| f.get(2).map(|s| s.to_string()))
    }

    async fn owner(&self, name: &str) -> String {
        let Ok(out) = self
            .runner
            .run(&HostCommand::new(
                "zonecfg",
                ["-z", name, "info", "attr", &format!("name={OWNER_ATTR}")],
            ))
            .await
        else {
            return String::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("value:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    }
}

fn state_of(zone_state: &str) -> VmState {
    match zone_state {
        "running" => VmState::Running,
        "ready" | "installed" | "configured" | "incomplete" | "installing" => VmState::Booting,
        "shutting_down" | "down" => VmState::Stopped(None),
        other => VmState::Failed(format!("zone state {other}")),
    }
}

#[async_trait]
impl VmProvider for BhyveProvider {
    fn name(&self) -> &'static str {
        "bhyve"
    }

    async fn provision(&self, spec: &VmSpec) -> Result<VmHandle, VmError> {
        if !self.ours(&spec.name) || spec.name.len() > 63 {
            return Err(VmError::provider(format!(
                "invalid VM name {:?} (a zone name starting with {:?}, at most 63 characters)",
                spec.name, self.config.prefix
            )));
        }
        if !safe_value(&spec.owner) {
            return Err(VmError::provider(format!("invalid owner {:?}", spec.owner)));
        }
        if matches!(spec.endpoint, RunnerEndpoint::Unix(_)) {
            return Err(VmError::provider(
                "bhyve provider: the guest needs a TCP runner endpoint it can route to",
            ));
        }
        if spec.token.chars().any(char::is_control) || spec.token.is_empty() {
            return Err(VmError::provider("bhyve provider: invalid job token"));
        }
        let snapshot = self.snapshot(spec)?;
        for command in self.provision_commands(spec, snapshot) {
            if let Err(failed) = self.run(command).await {
                let cleanup = self.teardown(&spec.name).await.err();
                let mut what = failed;
                if let Some(e) = cleanup {
                    what.push_str(&format!(" (and cleaning up failed: {e})"));
                }
                return Err(VmError::boot(what));
            }
        }
        self.read_console(&spec.name);
        Ok(VmHandle::new(VmId(spec.name.clone()), spec.owner.clone()))
    }

    async fn state(&self, id: &VmId) -> Result<VmState, VmError> {
        if !self.ours(&id.0) {
            return Err(VmError::NotFound(id.clone()));
        }
        match self.zone_state(&id.0).await {
            Some(s) => Ok(state_of(&s)),
            None => Err(VmError::NotFound(id.clone())),
        }
    }

    async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        if !self.ours(&id.0) {
            return Ok(());
        }
        let console = self
            .consoles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id.0);
        if let Some(console) = console {
            console.reader.abort();
        }
        self.teardown(&id.0).await
    }

    /// The end of what the zone printed on its console (read while it ran;
    /// nothing for a zone an earlier process booted).
    async fn console_tail(&self, id: &VmId) -> Option<String> {
        let consoles = self.consoles.lock().unwrap_or_else(|e| e.into_inner());
        let text = consoles
            .get(&id.0)?
            .text
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let text = String::from_utf8_lossy(&text).into_owned();
        (!text.trim().is_empty()).then_some(text)
    }

    async fn list(&self) -> Result<Vec<VmInfo>, VmError> {
        let out = self
            .run(HostCommand::new("zoneadm", ["list", "-cp"]))
            .await
            .map_err(VmError::provider)?;
        let mut vms = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split(':').collect();
            let (Some(name), Some(state), Some(brand)) = (f.get(1), f.get(2), f.get(5)) else {
                continue;
            };
            if *brand != "bhyve" || !self.ours(name) {
                continue;
            }
            let owner = self.owner(name).await;
            vms.push(VmInfo::new(VmId(name.to_string()), owner, state_of(state)));
        }
        // Datasets whose zone never came to be (or is gone): reported
        // without an owner, so the reaper destroys them.
        if let Ok(out) = self
            .runner
            .run(&HostCommand::new(
                "zfs",
                [
                    "list",
                    "-H",
                    "-o",
                    "name",
                    "-d",
                    "1",
                    &self.config.jobs_dataset,
                ],
            ))
            .await
            && out.success()
        {
            for ds in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(name) = ds.strip_prefix(&format!("{}/", self.config.jobs_dataset)) else {
                    continue;
                };
                if self.ours(name) && !vms.iter().any(|v| v.id.0 == name) {
                    vms.push(VmInfo::new(
                        VmId(name.to_string()),
                        "",
                        VmState::Stopped(None),
                    ));
                }
            }
        }
        vms.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(vms)
    }
}
