//! A provider per `runs_on` label.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::{VmError, VmHandle, VmId, VmInfo, VmProvider, VmSpec, lock};

/// Sends each VM to the provider of its label ([`VmSpec::label`]), or to
/// the default provider; a label with neither fails to provision with a
/// [`VmError::Provider`] that names it. `list` reports the VMs of every
/// provider, so one reaper covers them all.
pub struct ByLabel {
    routes: BTreeMap<String, Arc<dyn VmProvider>>,
    default: Option<Arc<dyn VmProvider>>,
    /// Which provider (index into `all`) made a VM, for `state` and `destroy`.
    placed: Mutex<HashMap<VmId, usize>>,
    /// Every distinct provider, once.
    all: Vec<Arc<dyn VmProvider>>,
}

impl std::fmt::Debug for ByLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByLabel")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|(l, p)| (l.as_str(), p.name()))
                    .collect::<Vec<_>>(),
            )
            .field("default", &self.default.as_ref().map(|p| p.name()))
            .finish_non_exhaustive()
    }
}

impl ByLabel {
    /// Labels not routed go to `default`, when there is one.
    pub fn new(default: Option<Arc<dyn VmProvider>>) -> ByLabel {
        let mut router = ByLabel {
            routes: BTreeMap::new(),
            default: None,
            placed: Mutex::new(HashMap::new()),
            all: Vec::new(),
        };
        if let Some(p) = default {
            router.index(&p);
            router.default = Some(p);
        }
        router
    }

    /// Jobs of `label` go to `provider`.
    pub fn route(mut self, label: impl Into<String>, provider: Arc<dyn VmProvider>) -> ByLabel {
        self.index(&provider);
        self.routes.insert(label.into(), provider);
        self
    }

    fn index(&mut self, provider: &Arc<dyn VmProvider>) -> usize {
        match self.all.iter().position(|p| Arc::ptr_eq(p, provider)) {
            Some(i) => i,
            None => {
                self.all.push(provider.clone());
                self.all.len() - 1
            }
        }
    }

    /// The providers that may hold `id`: the one that made it, or all.
    fn holders(&self, id: &VmId) -> Vec<&Arc<dyn VmProvider>> {
        match lock(&self.placed).get(id) {
            Some(i) => vec![&self.all[*i]],
            None => self.all.iter().collect(),
        }
    }
}

#[async_trait]
impl VmProvider for ByLabel {
    fn name(&self) -> &'static str {
        "by-label"
    }

    fn copies_share(&self, label: &str) -> bool {
        self.routes
            .get(label)
            .or(self.default.as_ref())
            .is_some_and(|p| p.copies_share(label))
    }

    async fn provision(&self, spec: &VmSpec) -> Result<VmHandle, VmError> {
        let provider = self
            .routes
            .get(&spec.label)
            .or(self.default.as_ref())
            .ok_or_else(|| {
                VmError::provider(format!(
                    "no provider serves label {:?} (configured: {})",
                    spec.label,
                    self.routes.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
        let index = self
            .all
            .iter()
            .position(|p| Arc::ptr_eq(p, provider))
            .unwrap_or_default();
        let handle = provider.provision(spec).await?;
        lock(&self.placed).insert(handle.id.clone(), index);
        Ok(handle)
    }

    async fn state(&self, id: &VmId) -> Result<crate::VmState, VmError> {
        let mut last = VmError::NotFound(id.clone());
        for p in self.holders(id) {
            match p.state(id).await {
                Err(VmError::NotFound(_)) => {}
                Err(e) => last = e,
                Ok(s) => return Ok(s),
            }
        }
        Err(last)
    }

    async fn destroy(&self, id: &VmId) -> Result<(), VmError> {
        for p in self.holders(id) {
            p.destroy(id).await?;
        }
        lock(&self.placed).remove(id);
        Ok(())
    }

    /// Every provider's VMs (each remembered as that provider's, so a
    /// reaper's destroy goes to it alone). A provider that cannot list is
    /// logged and skipped, so it does not stop the others' VMs being
    /// reaped; when none can, the first error.
    async fn list(&self) -> Result<Vec<VmInfo>, VmError> {
        let mut out = Vec::new();
        let mut first_error = None;
        let mut answered = false;
        for (i, p) in self.all.iter().enumerate() {
            match p.list().await {
                Ok(vms) => {
                    answered = true;
                    let mut placed = lock(&self.placed);
                    for vm in &vms {
                        placed.entry(vm.id.clone()).or_insert(i);
                    }
                    drop(placed);
                    out.extend(vms);
                }
                Err(e) => {
                    tracing::warn!(provider = p.name(), error = %e, "cannot list this provider's VMs");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let (false, Some(e)) = (answered, first_error) {
            return Err(e);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn console_tail(&self, id: &VmId) -> Option<String> {
        for p in self.holders(id) {
            if let Some(t) = p.console_tail(id).await {
                return Some(t);
            }
        }
        None
    }
}
