//! An in-memory provider for engine tests and benchmarks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

use crate::{VmError, VmHandle, VmId, VmInfo, VmProvider, VmSpec, VmState, lock};

/// What the next VM does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MockScript {
    /// `provision` fails with [`VmError::Boot`].
    pub fail_boot: bool,
    /// `provision` takes this long.
    pub boot_delay: Duration,
    /// The guest should die after running this many steps (passed to the [`Guest`]).
    pub crash_after_steps: Option<u32>,
}

impl MockScript {
    /// A VM that fails to boot.
    pub fn failing_boot() -> MockScript {
        MockScript {
            fail_boot: true,
            ..MockScript::default()
        }
    }

    /// A VM that takes `delay` to boot.
    pub fn slow_boot(delay: Duration) -> MockScript {
        MockScript {
            boot_delay: delay,
            ..MockScript::default()
        }
    }

    /// A VM whose guest dies after `steps` steps.
    pub fn crash_after(steps: u32) -> MockScript {
        MockScript {
            crash_after_steps: Some(steps),
            ..MockScript::default()
        }
    }
}

/// What a mock VM's guest gets.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GuestContext {
    /// The spec the VM was provisioned with (endpoint and token included).
    pub spec: VmSpec,
    /// From the script: die after this many steps.
    pub crash_after_steps: Option<u32>,
}

/// The software "inside" a mock VM, e.g. an in-process runner. Returns its
/// exit status. Dropping the future (when the VM is destroyed) kills it.
#[async_trait]
pub trait Guest: Send + Sync + 'static {
    /// Runs until done.
    async fn run(&self, context: GuestContext) -> i32;
}

/// A guest that does nothing until its VM is destroyed.
struct Idle;

#[async_trait]
impl Guest for Idle {
    async fn run(&self, _: GuestContext) -> i32 {
        std::future::pending::<()>().await;
        0
    }
}

struct MockVm {
    owner: String,
    exit: Arc<Mutex<Option<i32>>>,
    task: JoinHandle<()>,
}

/// In-memory, scriptable [`VmProvider`]. Clones share state, so a "host"
/// can outlive an engine that is restarted in a test.
#[derive(Clone)]
pub struct MockVmProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MockVmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockVmProvider")
            .field("vms", &lock(&self.inner.vms).len())
            .field("provisioned", &self.provisioned())
            .finish_non_exhaustive()
    }
}

struct Inner {
    guest: Arc<dyn Guest>,
    default_script: Mutex<MockScript>,
    next_scripts: Mutex<VecDeque<MockScript>>,
    vms: Mutex<HashMap<VmId, MockVm>>,
    provisioned: AtomicU64,
}

impl MockVmProvider {
    /// A provider whose VMs run `guest`.
    pub fn new(guest: Arc<dyn Guest>) -> Self {
        MockVmProvider {
            inner: Arc::new(Inner {
                guest,
                default_script: Mutex::new(MockScript::default()),
                next_scripts: Mutex::new(VecDeque::new()),
                vms: Mutex::new(HashMap::new()),
                provisioned: AtomicU64::new(0),
            }),
        }
    }

    /// A provider whose VMs run nothing until destroyed.
    pub fn idle() -> Self {
        Self::new(Arc::new(Idle))
    }

    /// The script for every VM without a one-shot script.
    pub fn set_default_script(&self, script: MockScript) {
        *lock(&self.inner.default_script) = script;
    }

    /// A script for the next `provision` only (queued in order): e.g. a
    /// boot failure for attempt 1 and a normal VM for attempt 2.
    pub fn script_next(&self, script: MockScript) {
        lock(&self.inner.next_scripts).push_back(script);
    }

    /// How many VMs `provision` was asked for so far.
    pub fn provisioned(&self) -> u64 {
        self.inner.provisioned.load(Ordering::SeqCst)
    }

    /// VMs that exist now.
    pub fn live(&self) -> usize {
        lock(&self.inner.vms).len()
    }
}

#[async_trait]
impl VmProvider for MockVmProvider {
    fn name(&self) -> &'static str {
        "mock"
    }

    async fn provision(&self, spec: &VmSpec) -> Result<VmHandle, VmError> {
        let n = self.inner.provisioned.fetch_add(1, Ordering::SeqCst);
        let script = lock(&self.inner.next_scripts)
            .pop_front()
            .unwrap_or_else(|| lock(&self.inner.default_script).clone());
        if !script.boot_delay.is_zero() {
            tokio::time::sleep(script.boot_delay).await;
        }
        if script.fail_boot {
            return Err(VmError::boot(format!(
                "mock: scripted boot failure of {}",
                spec.name
            )));
        }
        let id = VmId(format!("mock-{n}-{}", spec.name));
        let exit = Arc::new(Mutex::new(None));
        let context = GuestContext {
            spec: spec.clone(),
            crash_after_steps: script.crash_after_steps,
        };
        let guest = self.inner.guest.clone();
        let exit_slot = exit.clone();
        let task = tokio::spawn(async move {
            let code = guest.run(context).await;
            *lock(&exit_slot) = Some(code);
        });
        lock(&self.inner.vms).insert(
            id.clone(),
            MockVm {
                owner: spec.owner.clone(),
                exit,
                task,
            },
        );
        Ok(VmHandle {
            id,
            owner: spec.owner.clone(),
        })
    }

    async fn state(&self, id: &VmId) -> Result<VmState, VmError> {
        let vms = lock(&self.inner.vms);
        let vm = vms.get(id).ok_or_else(|| VmError::NotFound(id.clone()))?;
        Ok(match *lock(&vm.exit) {
            Some(code) => VmState::Stopped(Some(code)),
            None => VmState::Running,
        })
    }

    async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        if let Some(vm) = lock(&self.inner.vms).remove(id) {
            vm.task.abort();
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<VmInfo>, VmError> {
        let vms = lock(&self.inner.vms);
        let mut out: Vec<VmInfo> = vms
            .iter()
            .map(|(id, vm)| VmInfo {
                id: id.clone(),
                owner: vm.owner.clone(),
                state: match *lock(&vm.exit) {
                    Some(code) => VmState::Stopped(Some(code)),
                    None => VmState::Running,
                },
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
