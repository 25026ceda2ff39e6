//! Small shared pieces.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, also after a panic elsewhere poisoned it (every value
/// kept behind one here stays valid whatever a panicking holder did).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
