//! The QEMU provider's costs, each beside a baseline measured in the same
//! run (the machine is shared: ratios, not absolute thresholds).
//!
//!     images/linux-guest/build.sh
//!     cargo bench -p solstice-vmm --bench qemu
//!
//! - overlay: `qemu-img create` of the per-VM overlay vs a sparse copy of
//!   the golden disk (what a provider without overlays would do);
//! - boot: provision -> the guest's runner connected, vs a bare boot of
//!   the same kernel to a missing /init (QEMU started -> the kernel's panic
//!   ends it): what the provider adds to booting a kernel;
//! - concurrency: 4 and 8 VMs provisioned at once until all connected, vs 1.
//!
//! - Debian: provision -> runner connected with the Debian 12 image of
//!   `images/debian-12` (`BENCH_DEBIAN_IMAGE`, default
//!   ~/.cache/solstice/images/debian-12, skipped with a note when it is
//!   not built), boots alternating with the busybox image's.
//!
//! `BENCH_BOOTS` sets the samples per measure (default 10).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use solstice_vmm::{
    QemuConfig, QemuImage, QemuProvider, RunnerEndpoint, VmProvider, VmSpec, VmState,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn until_connected(provider: &QemuProvider, spec: &VmSpec) -> Duration {
    let started = Instant::now();
    let vm = provider.provision(spec).await.expect("provision");
    loop {
        match provider.state(&vm.id).await.expect("state") {
            VmState::Booting => tokio::time::sleep(Duration::from_millis(5)).await,
            VmState::Running => break,
            other => panic!("{other:?}: {:?}", provider.console_tail(&vm.id).await),
        }
    }
    let took = started.elapsed();
    provider.destroy(&vm.id).await.expect("destroy");
    took
}

fn main() {
    let samples: usize = std::env::var("BENCH_BOOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
        .max(1);
    let image_dir = QemuImage::default_dir().expect("image dir");
    let image = QemuImage::from_dir(&image_dir).expect("run images/linux-guest/build.sh first");
    let golden = image.disk.clone().expect("a root disk");
    let dir = tempfile::tempdir().expect("temp dir");

    // Overlay vs copy.
    let mut overlay = Vec::new();
    let mut copy = Vec::new();
    for i in 0..samples {
        let o = dir.path().join(format!("o{i}.qcow2"));
        let t = Instant::now();
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&golden)
            .arg(&o)
            .status()
            .expect("qemu-img");
        overlay.push(t.elapsed());
        assert!(ok.success());
        let c = dir.path().join(format!("c{i}.raw"));
        let t = Instant::now();
        let ok = Command::new("cp")
            .arg("--sparse=always")
            .arg(&golden)
            .arg(&c)
            .status()
            .expect("cp");
        copy.push(t.elapsed());
        assert!(ok.success());
        let _ = std::fs::remove_file(o);
        let _ = std::fs::remove_file(c);
    }
    let (overlay, copy) = (median(overlay), median(copy));
    println!(
        "overlay create    median of {samples}: {}   sparse copy of the golden disk: {}   ratio {:.3}",
        ms(overlay),
        ms(copy),
        overlay.as_secs_f64() / copy.as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sock = dir.path().join("runner.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _s = s;
                    tokio::time::sleep(Duration::from_secs(120)).await;
                });
            }
        });
        let provider = Arc::new(
            QemuProvider::new(QemuConfig::new(dir.path().join("vms"), image.clone()))
                .expect("provider"),
        );
        let spec = |n: String| {
            let mut s = VmSpec::new(n.clone(), n, RunnerEndpoint::Unix(sock.clone()), "bench-token");
            s.memory_mib = 256;
            s
        };

        // Bare boot: the same kernel and initramfs, /init missing: QEMU
        // start -> kernel panic -> exit.
        let mut bare = Vec::new();
        let mut boots = Vec::new();
        for i in 0..samples {
            bare.push(bare_boot(&image, &provider));
            boots.push(until_connected(&provider, &spec(format!("bench-boot-{i}"))).await);
        }
        let (bare, boots) = (median(bare), median(boots));
        println!(
            "provision -> runner connected   median of {samples}: {}   bare boot to a missing /init: {}   ratio {:.2}",
            ms(boots),
            ms(bare),
            boots.as_secs_f64() / bare.as_secs_f64()
        );

        let debian_dir = std::env::var_os("BENCH_DEBIAN_IMAGE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| {
                    std::path::Path::new(&h).join(".cache/solstice/images/debian-12")
                })
            });
        match debian_dir.and_then(|d| QemuImage::from_dir(&d).ok()) {
            None => println!(
                "debian image: not built (images/build.sh images/debian-12); not measured"
            ),
            Some(debian) => {
                let debian_provider = QemuProvider::new(QemuConfig::new(
                    dir.path().join("vms-debian"),
                    debian,
                ))
                .expect("provider");
                let (mut deb, mut bb) = (Vec::new(), Vec::new());
                for i in 0..samples {
                    bb.push(until_connected(&provider, &spec(format!("bench-bb-{i}"))).await);
                    deb.push(
                        until_connected(&debian_provider, &spec(format!("bench-deb-{i}"))).await,
                    );
                }
                let (deb, bb) = (median(deb), median(bb));
                println!(
                    "debian-12 image: provision -> runner connected   median of {samples}: {}   busybox image: {}   ratio {:.2}",
                    ms(deb),
                    ms(bb),
                    deb.as_secs_f64() / bb.as_secs_f64()
                );
            }
        }

        for n in [4usize, 8] {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..n {
                let p = provider.clone();
                let s = spec(format!("bench-par{n}-{i}"));
                tasks.push(tokio::spawn(async move { until_connected(&p, &s).await }));
            }
            for task in tasks {
                task.await.expect("join");
            }
            let wall = t.elapsed();
            println!(
                "{n} VMs at once, all connected   wall: {}   one VM: {}   ratio {:.2} ({:.2} VMs/s)",
                ms(wall),
                ms(boots),
                wall.as_secs_f64() / boots.as_secs_f64(),
                n as f64 / wall.as_secs_f64()
            );
        }
    });
}

/// Starts QEMU as the provider would, with `rdinit=` pointing nowhere: the
/// kernel boots to the point of running /init and panics; QEMU exits.
fn bare_boot(image: &QemuImage, provider: &QemuProvider) -> Duration {
    let mut args: Vec<String> = vec![
        "-M".into(),
        "microvm,x-option-roms=off,pit=off,pic=off,isa-serial=on,rtc=on".into(),
        "-accel".into(),
        provider.accelerator().to_string(),
        "-m".into(),
        "256".into(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        "null".into(),
        "-kernel".into(),
        image.kernel.display().to_string(),
    ];
    if let Some(initrd) = &image.initrd {
        args.push("-initrd".into());
        args.push(initrd.display().to_string());
    }
    let tsc = solstice_vmm::host_tsc_khz()
        .map(|k| format!(" tsc_early_khz={k}"))
        .unwrap_or_default();
    args.push("-append".into());
    args.push(format!(
        "console=ttyS0 panic=-1 {} rdinit=/no-such-init init=/no-such-init{tsc}",
        image.cmdline
    ));
    let t = Instant::now();
    Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("qemu");
    t.elapsed()
}
