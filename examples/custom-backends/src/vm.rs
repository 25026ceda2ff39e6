//! [`DirProvider`]: a [`VmProvider`] whose VMs are directories.

use std::io::ErrorKind;
use std::path::PathBuf;

use async_trait::async_trait;
use solstice_vmm::{VmError, VmHandle, VmId, VmInfo, VmProvider, VmSpec, VmState};

/// Each VM is `ROOT/NAME/` with its owner in `ROOT/NAME/owner`.
#[derive(Debug, Clone)]
pub struct DirProvider {
    root: PathBuf,
}

impl DirProvider {
    /// VMs under `root` (created when missing).
    pub fn new(root: impl Into<PathBuf>) -> DirProvider {
        DirProvider { root: root.into() }
    }

    /// The VM's directory. A name comes from a job (a stranger's workflow
    /// chooses its parts): refuse anything but a plain file name.
    fn dir(&self, name: &str) -> Option<PathBuf> {
        let plain = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !name.starts_with('.');
        plain.then(|| self.root.join(name))
    }
}

fn provider_error(what: &str, e: std::io::Error) -> VmError {
    VmError::provider_because(what, e)
}

#[async_trait]
impl VmProvider for DirProvider {
    fn name(&self) -> &'static str {
        "dir"
    }

    async fn provision(&self, spec: &VmSpec) -> Result<VmHandle, VmError> {
        let dir = self
            .dir(&spec.name)
            .ok_or_else(|| VmError::boot(format!("unusable VM name {:?}", spec.name)))?;
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| provider_error("creating the root", e))?;
        // `create_dir` (not `_all`): two VMs never share a directory.
        tokio::fs::create_dir(&dir)
            .await
            .map_err(|e| VmError::boot_because(format!("creating {}", dir.display()), e))?;
        if let Err(e) = tokio::fs::write(dir.join("owner"), &spec.owner).await {
            // Nothing is left behind by a failed provision.
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(VmError::boot_because("recording the owner", e));
        }
        Ok(VmHandle::new(VmId(spec.name.clone()), spec.owner.clone()))
    }

    async fn state(&self, id: &VmId) -> Result<VmState, VmError> {
        match self.dir(&id.0) {
            Some(dir) if tokio::fs::metadata(&dir).await.is_ok() => Ok(VmState::Running),
            _ => Err(VmError::NotFound(id.clone())),
        }
    }

    async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        let Some(dir) = self.dir(&id.0) else {
            return Ok(()); // no such VM can exist
        };
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(provider_error("destroying", e)),
            _ => Ok(()),
        }
    }

    async fn list(&self) -> Result<Vec<VmInfo>, VmError> {
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(provider_error("listing", e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| provider_error("listing", e))?
        {
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not one of ours
            };
            let owner = tokio::fs::read_to_string(entry.path().join("owner"))
                .await
                .unwrap_or_default();
            out.push(VmInfo::new(VmId(name), owner, VmState::Running));
        }
        Ok(out)
    }
}
