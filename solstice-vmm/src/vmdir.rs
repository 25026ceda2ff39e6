//! What the providers that keep one directory per VM share: the name rule,
//! the new directory, listing by `owner` files, removal.

use std::path::{Path, PathBuf};

use crate::{VmError, VmId, VmSpec};

/// Whether `name` may name a VM (and its directory): letters, digits,
/// `-_.`, not starting with a dot, at most 128 characters.
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The id and the directory under `root` of a new VM for `spec`; refused
/// when the name is unsafe or the directory exists.
pub(crate) fn new_vm(root: &Path, spec: &VmSpec) -> Result<(VmId, PathBuf), VmError> {
    if !safe_name(&spec.name) {
        return Err(VmError::provider(format!(
            "invalid VM name {:?}",
            spec.name
        )));
    }
    let dir = root.join(&spec.name);
    if dir.exists() {
        return Err(VmError::provider(format!(
            "{} already exists",
            dir.display()
        )));
    }
    Ok((VmId(spec.name.clone()), dir))
}

/// Writes a VM's `owner` file all at once (a temporary file renamed into
/// place): a lister never reads it half-written. (An empty owner read in
/// the middle of a plain write made a reaper destroy a VM being started;
/// found by the fleet's restart test on a second machine.)
pub(crate) fn write_owner(dir: &Path, owner: &str) -> std::io::Result<()> {
    let partial = dir.join(".owner.partial");
    std::fs::write(&partial, owner)?;
    std::fs::rename(&partial, dir.join("owner"))
}

/// The VMs under `root`: each directory with an `owner` file, with it.
pub(crate) async fn owned(root: &Path) -> Result<Vec<(VmId, String)>, VmError> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(root).await {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(VmError::provider_because(root.display().to_string(), e)),
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Ok(owner) = tokio::fs::read_to_string(entry.path().join("owner")).await else {
            continue;
        };
        out.push((VmId(name), owner));
    }
    out.sort();
    Ok(out)
}

/// Removes a VM's directory; one that is gone already is fine.
pub(crate) async fn remove(dir: &Path) -> Result<(), VmError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VmError::provider_because(dir.display().to_string(), e)),
    }
}

/// Every process `/proc` lists (Linux; elsewhere none): its pid and its
/// `/proc/PID` directory.
pub(crate) fn processes() -> impl Iterator<Item = (u32, std::path::PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, entry.path()))
        })
}

/// Whether a process of process group `pgid` still runs (Linux `/proc`).
/// A zombie does not: it has ended and only waits for its parent.
pub(crate) fn group_alive(pgid: i32) -> bool {
    processes().any(|(_, dir)| {
        std::fs::read_to_string(dir.join("stat")).is_ok_and(|stat| {
            // `pid (comm) state ppid pgrp ...`: the command name may hold
            // anything, so the fields are read after its last `)`.
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
            pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
        })
    })
}

/// The process recorded in `file` (a pid file a provider wrote), if one
/// with that number runs. Whether it is still the VM's is the caller's to
/// check: after a reboot the number may be somebody else's.
pub(crate) fn live_pid(file: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(file)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
        .ok()
        .map(|()| pid)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    /// A group runs while a member does; a killed member that its parent
    /// has not waited for yet (a zombie) does not count.
    #[test]
    fn a_group_is_alive_until_its_members_end() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        assert!(super::group_alive(pid));
        child.kill().expect("kill");
        // Not waited for: a zombie once the kill lands.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while super::group_alive(pid) {
            assert!(std::time::Instant::now() < deadline, "still alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        assert!(zombie.contains(") Z "), "{zombie}");
        child.wait().expect("wait");
        assert!(!super::group_alive(pid));
    }
}
