//! Where jobs run: the providers the configuration's `vms` block names,
//! behind one router by `runs_on` label; and `solstice vm-check`, which
//! boots (or, with `--dry-run`, prints) one VM of a label.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use solstice_vmm::{
    BhyveConfig, BhyveProvider, ByLabel, CommandRunner, DryRun, LocalProvider, QemuConfig,
    QemuImage, QemuProvider, RunnerEndpoint, SystemRunner, VmProvider, VmSpec, VmState,
};

use crate::config::{Config, ProviderChoice};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The providers of `config`, under one router. `bhyve_runner` runs the
/// bhyve provider's host commands (the system's, or a dry run's).
pub fn providers(
    config: &Config,
    bhyve_runner: Arc<dyn CommandRunner>,
) -> Result<Arc<dyn VmProvider>, Error> {
    let vms = &config.vms;
    let choices: Vec<&ProviderChoice> = vms
        .routes
        .iter()
        .map(|(_, c)| c)
        .chain(vms.default.iter())
        .collect();
    let local: Option<Arc<dyn VmProvider>> = if choices.iter().any(|c| **c == ProviderChoice::Local)
    {
        let me =
            std::env::current_exe().map_err(|e| format!("where is solstice's own binary: {e}"))?;
        // Outside the state directory: a job's `../..` is not the state.
        let mut local = LocalProvider::new(
            vec![me.into_os_string(), "runner".into()],
            config.jobs_dir.clone(),
        );
        if let Some(user) = &config.run_as {
            local = local.with_user(
                solstice_vmm::JobUser::lookup(user).map_err(|e| format!("run-as: {e}"))?,
            );
        }
        Some(Arc::new(local))
    } else {
        None
    };
    // One QEMU provider for every QEMU label (one directory of VMs, one
    // reaper pass), each label with its image.
    let mut qemu_images = BTreeMap::new();
    let mut bhyve_images = BTreeMap::new();
    let labelled = vms.routes.iter().map(|(l, c)| (l.clone(), c));
    let default = vms.default.iter().map(|c| (String::new(), c));
    for (label, choice) in labelled.chain(default) {
        match choice {
            ProviderChoice::Qemu { .. } => {
                let loaded =
                    qemu_image(config, choice).map_err(|e| format!("vms: label {label:?}: {e}"))?;
                qemu_images.insert(label, loaded);
            }
            ProviderChoice::Bhyve { snapshot } => {
                bhyve_images.insert(label, snapshot.clone());
            }
            ProviderChoice::Local => {}
        }
    }
    let qemu: Option<Arc<dyn VmProvider>> = if qemu_images.is_empty() {
        None
    } else {
        let default = qemu_images.remove("");
        let any = default
            .clone()
            .or_else(|| qemu_images.values().next().cloned())
            .ok_or("no QEMU image")?;
        let mut qc = QemuConfig::new(config.state_dir.join("qemu"), any);
        qc.default_image = default;
        qc.images = qemu_images;
        qc.accelerator = vms.accelerator;
        qc.boot_timeout = vms.boot_timeout;
        Some(Arc::new(QemuProvider::new(qc)?))
    };
    let bhyve: Option<Arc<dyn VmProvider>> = if bhyve_images.is_empty() {
        None
    } else {
        let default = bhyve_images.remove("");
        let mut bc = BhyveConfig::new(
            default.clone().unwrap_or_default(),
            vms.jobs_dataset.clone(),
            vms.link.clone(),
        );
        bc.default_image = default;
        bc.images = bhyve_images;
        bc.zone_root = vms.zone_root.clone();
        Some(Arc::new(BhyveProvider::new(bc, bhyve_runner)?))
    };
    let pick = |c: &ProviderChoice| -> Option<Arc<dyn VmProvider>> {
        match c {
            ProviderChoice::Local => local.clone(),
            ProviderChoice::Qemu { .. } => qemu.clone(),
            ProviderChoice::Bhyve { .. } => bhyve.clone(),
        }
    };
    let mut router = ByLabel::new(vms.default.as_ref().and_then(pick));
    for (label, choice) in &vms.routes {
        if let Some(p) = pick(choice) {
            router = router.route(label.clone(), p);
        }
    }
    Ok(Arc::new(router))
}

/// The image of a QEMU label, with the label's settings over the image's
/// (booted through the configured firmware with `boot="uefi"`).
fn qemu_image(
    config: &Config,
    choice: &ProviderChoice,
) -> Result<QemuImage, solstice_vmm::VmError> {
    let ProviderChoice::Qemu { image, uefi, .. } = choice else {
        return Err(solstice_vmm::VmError::provider("not a QEMU label"));
    };
    let mut loaded = if *uefi {
        QemuImage::uefi_from_dir(image, &config.vms.firmware)?
    } else {
        QemuImage::from_dir(image)?
    };
    apply(choice, &mut loaded);
    Ok(loaded)
}

/// A label's QEMU settings over its image's. The forges' hosts are not
/// among what a label may reach: the engine clones QEMU jobs' repositories
/// on the host (`EngineConfig::checkout_dir`).
fn apply(choice: &ProviderChoice, image: &mut QemuImage) {
    if let ProviderChoice::Qemu {
        egress,
        machine,
        vcpus,
        memory_mib,
        disk_gib,
        reach,
        ..
    } = choice
    {
        image.reach = reach.clone();
        image.egress = *egress;
        if let Some(m) = machine {
            image.machine = *m;
        }
        image.vcpus = vcpus.or(image.vcpus);
        image.memory_mib = memory_mib.or(image.memory_mib);
        image.disk_gib = disk_gib.or(image.disk_gib);
    }
}

/// Warnings `check-config` prints: QEMU images not built yet (the daemon
/// refuses to start without them).
pub fn check(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let routes = config
        .vms
        .routes
        .iter()
        .map(|(l, c)| (format!("label {l:?}"), c));
    let default = config
        .vms
        .default
        .iter()
        .map(|c| ("default".to_string(), c));
    for (what, choice) in routes.chain(default) {
        if let ProviderChoice::Qemu { .. } = choice
            && let Err(e) = qemu_image(config, choice)
        {
            warnings.push(format!("vms: {what}: {e}"));
        }
        if let ProviderChoice::Qemu { uefi: true, .. } = choice
            && !config.vms.firmware.is_file()
        {
            warnings.push(format!(
                "vms: {what}: the UEFI firmware {} is not there (qemu {{ firmware \"FILE\" }}; Debian's package ovmf)",
                config.vms.firmware.display()
            ));
        }
    }
    warnings
}

/// `solstice vm-check`: provisions one VM of `label` and waits until it
/// runs (QEMU: its runner connected; bhyve: its zone running), then
/// destroys it. With `dry_run` nothing is started: the commands are
/// printed (bhyve: every host command of provision and teardown; QEMU:
/// `qemu-img` and QEMU's command line).
pub async fn vm_check(config: &Config, label: &str, dry_run: bool) -> Result<(), Error> {
    let choice = config
        .vms
        .routes
        .iter()
        .find(|(l, _)| l == label)
        .map(|(_, c)| c)
        .or(config.vms.default.as_ref())
        .ok_or_else(|| format!("no provider serves label {label:?}"))?;
    let dir = tempfile::Builder::new()
        .prefix("solstice-vm-check-")
        .tempdir()?;
    let socket = dir.path().join("runner.sock");
    let listener = tokio::net::UnixListener::bind(&socket)?;
    let endpoint = match (choice, config.runner_listen) {
        (ProviderChoice::Bhyve { .. }, Some(addr)) => RunnerEndpoint::Tcp(addr.to_string()),
        (ProviderChoice::Bhyve { .. }, None) => {
            return Err("a bhyve guest needs `runner-listen`: an address it can route to".into());
        }
        _ => RunnerEndpoint::Unix(socket.clone()),
    };
    let name = format!("solstice-vm-check-{}", std::process::id());
    let mut spec = VmSpec::new(&name, "vm-check", endpoint, "vm-check-token");
    spec.label = label.to_string();
    if dry_run {
        match choice {
            ProviderChoice::Qemu { .. } => {
                let image = qemu_image(config, choice)?;
                let mut qc = QemuConfig::new(config.state_dir.join("qemu"), image);
                qc.accelerator = config.vms.accelerator;
                for command in QemuProvider::new(qc)?.plan(&spec)? {
                    println!("{command}");
                }
            }
            ProviderChoice::Bhyve { .. } => {
                let provider = providers(config, Arc::new(DryRun::printing()))?;
                let vm = provider.provision(&spec).await?;
                provider.destroy(&vm.id).await?;
            }
            ProviderChoice::Local => {
                println!(
                    "{} runner   (in {}, as this user, without isolation)",
                    std::env::current_exe()?.display(),
                    config
                        .state_dir
                        .join("vms")
                        .join(&name)
                        .join("work")
                        .display()
                );
            }
        }
        return Ok(());
    }
    // Connections are accepted and dropped: the runner only has to dial.
    tokio::spawn(async move { while listener.accept().await.is_ok() {} });
    let provider = providers(config, Arc::new(SystemRunner))?;
    let started = Instant::now();
    let vm = provider.provision(&spec).await?;
    eprintln!(
        "provisioned {} in {:.2?}; waiting for it to run",
        vm.id,
        started.elapsed()
    );
    let deadline = started + config.vms.boot_timeout + Duration::from_secs(5);
    let outcome = loop {
        match provider.state(&vm.id).await {
            Ok(VmState::Running) => break Ok(started.elapsed()),
            Ok(VmState::Booting) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break Err(format!("the VM did not come up: {other:?}")),
        }
    };
    let console = match &outcome {
        Err(_) => provider.console_tail(&vm.id).await,
        Ok(_) => None,
    };
    provider.destroy(&vm.id).await?;
    match outcome {
        Ok(took) => {
            println!(
                "label {label:?}: the VM ran {took:.2?} after provisioning began; destroyed it"
            );
            Ok(())
        }
        Err(e) => {
            if let Some(c) = console {
                eprintln!("the VM's console, last lines:\n{c}");
            }
            Err(e.into())
        }
    }
}
