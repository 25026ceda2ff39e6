//! Small helpers every part of the crate uses: one home each.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also after a panic elsewhere poisoned it. Every lock in this
/// crate guards state that is changed in one step while held, so a panic
/// cannot leave it half changed; failing every later caller instead would
/// turn one bug into a dead engine.
#[cfg_attr(not(feature = "protocol"), allow(dead_code))]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An error and its sources as one line, `outer: inner: ...`: for reasons
/// stored with a job and lines printed by the runner.
#[cfg_attr(not(feature = "protocol"), allow(dead_code))]
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
