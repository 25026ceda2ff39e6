//! The runner as a host child process. **No isolation.**

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::Child;

use crate::{VmError, VmHandle, VmId, VmInfo, VmProvider, VmSpec, VmState, lock};

/// Runs each job's runner as a child process of the orchestrator, in its
/// own process group and a fresh directory `ROOT/NAME/`:
///
/// - `ROOT/NAME/work/`: the job's workspace (the runner's current directory),
/// - `ROOT/NAME/tmp/`: the job's `TMPDIR`,
/// - `ROOT/NAME/owner`, `ROOT/NAME/pgid`: so a later process can find and
///   reap what an earlier one left behind,
/// - `ROOT/NAME/runner.log`: the runner's own stdout and stderr.
///
/// The runner learns where to connect from `SOLSTICE_ENDPOINT` and its
/// token as the first line of its standard input: never from its command
/// line, which other users of the host can read, nor from its environment,
/// which its steps could read back from `/proc/PID/environ`.
///
/// A process recorded in `pgid` is killed only while it is still ours (its
/// environment carries the VM's mark): after a reboot the number may belong
/// to somebody else.
///
/// There is **no isolation**: the job runs with the orchestrator's user,
/// network and files. Use it for development (`cidev run`) and trusted code.
///
/// `destroy` sends SIGTERM to the runner's process group, waits up to 3 s
/// (the runner then kills its steps, which run in groups of their own), then
/// SIGKILLs the group. Then, on Linux, it SIGKILLs every process left that
/// carries the VM's mark in its environment (`SOLSTICE_LOCAL_VM`, set for
/// the runner and inherited by its steps and their children): what a runner
/// killed with SIGKILL could not stop, and what left its process group or
/// session. Only a process that clears its own environment escapes that;
/// VM providers have no such gap, destroying the VM ends everything.
#[derive(Debug)]
pub struct LocalProvider {
    command: Vec<OsString>,
    root: PathBuf,
    children: Mutex<HashMap<VmId, Child>>,
    warned: std::sync::atomic::AtomicBool,
    user: Option<JobUser>,
}

/// The user a local job's runner (and so its steps) runs as, when it is not
/// the orchestrator's own ([`LocalProvider::with_user`]). Starting a process
/// as another user needs the orchestrator to run as root.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobUser {
    /// The login.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
    /// Its home directory (the job's `HOME`).
    pub home: PathBuf,
}

impl JobUser {
    /// Looks `name` up in the system's user database.
    pub fn lookup(name: &str) -> Result<JobUser, VmError> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(JobUser {
                name: u.name,
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
            }),
            Ok(None) => Err(VmError::provider(format!("no user `{name}` on this host"))),
            Err(e) => Err(VmError::provider_because(
                format!("cannot look up user `{name}`"),
                std::io::Error::from(e),
            )),
        }
    }

    /// Whether this process may start processes as another user (it runs
    /// as root).
    pub fn can_switch() -> bool {
        nix::unistd::geteuid().is_root()
    }
}

/// The environment variable that marks every process of a local VM.
pub const MARK: &str = "SOLSTICE_LOCAL_VM";

fn mark_of(dir: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut needle = format!("{MARK}=").into_bytes();
    needle.extend_from_slice(dir.as_os_str().as_bytes());
    needle
}

/// Whether process `pid` carries the mark of the VM in `dir` (Linux:
/// `/proc/PID/environ`; elsewhere no process is recognised, and none is
/// killed by number).
///
/// A process in the middle of `execve` shows an empty environment: the
/// kernel releases the parent (spawn returns) before it has set up the new
/// program's environment. So an empty one is read again for a moment
/// before the process counts as not ours (found by a test that listed a VM
/// right after starting it, under load).
fn is_marked(pid: i32, dir: &Path) -> bool {
    let needle = mark_of(dir);
    // Up to 2 s while the process is between fork and exec: its
    // environment reads empty, or is still this process's own (same
    // executable). A loaded machine stretches that window (seen in CI
    // with builds running beside the tests).
    for _ in 0..200 {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        if env.split(|b| *b == 0).any(|kv| kv == needle.as_slice()) {
            return true;
        }
        let forked_not_execed = env.is_empty() || {
            let exe = |p: &str| std::fs::read_link(format!("/proc/{p}/exe")).ok();
            exe(&pid.to_string()).is_some_and(|e| Some(e) == exe("self"))
        };
        if !forked_not_execed {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

/// SIGKILLs every process whose environment has `MARK=dir` (Linux: read
/// from `/proc`; elsewhere nothing is found). Repeats while it finds any, in
/// case one forked meanwhile. Returns how many it killed.
fn kill_marked(dir: &Path) -> usize {
    let needle = mark_of(dir);
    let me = std::process::id();
    let mut killed = 0;
    for _ in 0..10 {
        let mut found = 0;
        for (pid, dir) in crate::vmdir::processes() {
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(dir.join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_slice())
                && let Ok(pid) = i32::try_from(pid)
                && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
            {
                found += 1;
            }
        }
        if found == 0 {
            break;
        }
        killed += found;
    }
    killed
}

impl LocalProvider {
    /// Runs `command` (program and arguments; usually the `solstice-runner`
    /// binary) for each job, in directories under `root`.
    pub fn new(command: Vec<OsString>, root: impl Into<PathBuf>) -> Self {
        LocalProvider {
            command,
            root: root.into(),
            children: Mutex::new(HashMap::new()),
            warned: std::sync::atomic::AtomicBool::new(false),
            user: None,
        }
    }

    /// Runs every runner as `user` instead of this process's own user: its
    /// directory is traversable (0711), its workspace and `TMPDIR` belong
    /// to the user (0700), and its `HOME`, `USER` and `LOGNAME` are the
    /// user's. Provisioning fails unless this process runs as root.
    pub fn with_user(mut self, user: JobUser) -> Self {
        self.user = Some(user);
        self
    }

    fn dir(&self, id: &VmId) -> PathBuf {
        self.root.join(&id.0)
    }

    /// The workspace directory of a VM.
    pub fn workspace(&self, id: &VmId) -> PathBuf {
        self.dir(id).join("work")
    }

    async fn create(&self, spec: &VmSpec, dir: &Path) -> Result<Child, VmError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |e: std::io::Error| VmError::boot_because(dir.display().to_string(), e);
        // The job's temporary files (the runner's step scripts, the steps'
        // own) stay in its directory and go with it.
        for sub in ["work", "tmp"] {
            tokio::fs::create_dir_all(dir.join(sub)).await.map_err(io)?;
        }
        // Private to the job: another job's steps cannot read this one's
        // workspace; with a job user, the directory is traversable and
        // the workspace and TMPDIR are the user's alone.
        let private = std::fs::Permissions::from_mode(0o700);
        let traversable = std::fs::Permissions::from_mode(0o711);
        let dir_mode = if self.user.is_some() {
            traversable
        } else {
            private.clone()
        };
        std::fs::set_permissions(dir, dir_mode).map_err(io)?;
        for sub in ["work", "tmp"] {
            let path = dir.join(sub);
            std::fs::set_permissions(&path, private.clone()).map_err(io)?;
            if let Some(user) = &self.user {
                std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).map_err(io)?;
            }
        }
        crate::vmdir::write_owner(dir, &spec.owner).map_err(io)?;
        let log = std::fs::File::create(dir.join("runner.log")).map_err(io)?;
        let log2 = log.try_clone().map_err(io)?;
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| VmError::provider("local provider: empty command"))?;
        let endpoint = spec.endpoint.uri();
        // An explicit environment: the allow-listed part of this process's
        // (never its secrets), the user's identity, the runner's settings.
        let mut command = crate::command::clean_command(program);
        command
            .args(args)
            .current_dir(dir.join("work"))
            .env("SOLSTICE_ENDPOINT", endpoint)
            .env("SOLSTICE_VM_NAME", &spec.name)
            .env("TMPDIR", dir.join("tmp"))
            .env(MARK, dir);
        if let Some(user) = &self.user {
            if !JobUser::can_switch() {
                return Err(VmError::boot(format!(
                    "cannot run the job as `{}`: starting a process as another user needs the orchestrator to run as root",
                    user.name
                )));
            }
            command
                .uid(user.uid)
                .gid(user.gid)
                .env("HOME", &user.home)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                VmError::boot_because(format!("cannot start {}", program.to_string_lossy()), e)
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            // A runner that exits at once closes the pipe: that is its
            // business (the engine sees it stop), not a boot failure.
            let _ = stdin
                .write_all(format!("{}\n", spec.token).as_bytes())
                .await;
        }
        if let Some(pid) = child.id() {
            tokio::fs::write(dir.join("pgid"), pid.to_string())
                .await
                .map_err(io)?;
        }
        Ok(child)
    }

    /// The process group recorded in `dir/pgid`, if that process still
    /// runs and is ours.
    fn recorded(dir: &Path) -> Option<i32> {
        crate::vmdir::live_pid(&dir.join("pgid")).filter(|pid| is_marked(*pid, dir))
    }

    /// Kills the process group recorded in `dir/pgid`, if it is still ours.
    fn kill_recorded(dir: &Path) {
        if let Some(pgid) = Self::recorded(dir) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }

    fn recorded_alive(dir: &Path) -> bool {
        Self::recorded(dir).is_some()
    }
}

#[async_trait]
impl VmProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn provision(&self, spec: &VmSpec) -> Result<VmHandle, VmError> {
        let (id, dir) = crate::vmdir::new_vm(&self.root, spec)?;
        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                root = %self.root.display(),
                "local provider: jobs run as plain host processes, with no isolation from this machine"
            );
        }
        match self.create(spec, &dir).await {
            Ok(child) => {
                lock(&self.children).insert(id.clone(), child);
                Ok(VmHandle {
                    id,
                    owner: spec.owner.clone(),
                })
            }
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                Err(e)
            }
        }
    }

    async fn state(&self, id: &VmId) -> Result<VmState, VmError> {
        if let Some(child) = lock(&self.children).get_mut(id) {
            return Ok(match child.try_wait() {
                Ok(None) => VmState::Running,
                Ok(Some(status)) => VmState::Stopped(status.code()),
                Err(e) => VmState::Failed(e.to_string()),
            });
        }
        let dir = self.dir(id);
        if !dir.join("owner").exists() {
            return Err(VmError::NotFound(id.clone()));
        }
        Ok(if Self::recorded_alive(&dir) {
            VmState::Running
        } else {
            VmState::Stopped(None)
        })
    }

    async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        if !crate::vmdir::safe_name(&id.0) {
            return Ok(());
        }
        let dir = self.dir(id);
        let child = lock(&self.children).remove(id);
        if let Some(mut child) = child {
            if let Some(pid) = child.id() {
                // SIGTERM first: the runner then kills its steps, which run
                // in process groups of their own; SIGKILL whatever is left.
                let group = Pid::from_raw(pid as i32);
                let _ = killpg(group, Signal::SIGTERM);
                let _ = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
                let _ = killpg(group, Signal::SIGKILL);
            }
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        } else {
            // Left behind by an earlier process, or half-created.
            Self::kill_recorded(&dir);
        }
        let marked = dir.clone();
        let stragglers = tokio::task::spawn_blocking(move || kill_marked(&marked))
            .await
            .unwrap_or(0);
        if stragglers > 0 {
            tracing::warn!(vm = %id.0, processes = stragglers, "killed processes the runner left behind");
        }
        crate::vmdir::remove(&dir).await
    }

    async fn list(&self) -> Result<Vec<VmInfo>, VmError> {
        let mut out = Vec::new();
        for (id, owner) in crate::vmdir::owned(&self.root).await? {
            let state = self.state(&id).await.unwrap_or(VmState::Stopped(None));
            out.push(VmInfo { id, owner, state });
        }
        Ok(out)
    }
}
