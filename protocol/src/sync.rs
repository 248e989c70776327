//! The one way every vessel process takes a lock.

use std::sync::{Mutex, MutexGuard};

/// Locks `m` even if a thread panicked while holding it. A panic in one request (agent,
/// shim) or one device (VMM) must not wedge every later user of the state behind the lock;
/// each piece of state is kept consistent between statements, so the data is still usable.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
