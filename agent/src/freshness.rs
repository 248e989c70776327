//! A guest restored from a VM snapshot starts with the snapshot's RNG state and wall clock,
//! the same in every VM restored from it. CreateSandbox carries fresh ones from the host:
//! random bytes credited to the kernel's pool (then a CRNG reseed), and the host's time.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;

use crate::error::{RequestError, RequestResult};
use crate::sys;

/// Most entropy bytes accepted in one request.
pub const MAX_ENTROPY_BYTES: usize = 512;
/// `/proc/self/ns/pid` inode of the initial pid namespace (`PROC_PID_INIT_INO`).
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshened {
    /// Entropy mixed in and credited (false: none given, or mixed in without credit).
    pub entropy_credited: bool,
    pub clock_set: bool,
}

pub fn validate(entropy: &[u8], realtime_ns: i64) -> RequestResult<()> {
    if entropy.len() > MAX_ENTROPY_BYTES {
        return Err(RequestError::invalid(format!(
            "entropy of {} bytes (at most {MAX_ENTROPY_BYTES})",
            entropy.len()
        )));
    }
    if realtime_ns < 0 {
        return Err(RequestError::invalid(format!(
            "realtime_ns {realtime_ns} is before the epoch"
        )));
    }
    Ok(())
}

/// Whether this process is the machine's init (PID 1 of the initial pid namespace, as in
/// a guest), not PID 1 of a namespace on a host whose clock is not ours to set.
fn is_machine_init(pid1: bool) -> bool {
    use std::os::unix::fs::MetadataExt;
    pid1 && std::process::id() == 1
        && std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == PROC_PID_INIT_INO)
}

fn add_entropy(entropy: &[u8]) -> RequestResult<bool> {
    let mut random = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| RequestError::internal(format!("opening /dev/urandom: {e}")))?;
    let credited = match sys::add_entropy(random.as_fd(), entropy) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            // Without CAP_SYS_ADMIN (an agent on a host): mixed in, not credited.
            random
                .write_all(entropy)
                .map_err(|e| RequestError::internal(format!("writing /dev/urandom: {e}")))?;
            false
        }
        Err(e) => return Err(RequestError::internal(format!("RNDADDENTROPY: {e}"))),
    };
    if credited {
        // Make the new bytes count now, not at the next scheduled reseed. ENODATA: the CRNG
        // is not initialised yet (the credit above does that).
        if let Err(e) = sys::reseed_crng(random.as_fd()) {
            if e.raw_os_error() != Some(libc::ENODATA) {
                log::warn!("RNDRESEEDCRNG: {e}");
            }
        }
    }
    Ok(credited)
}

/// Mixes in `entropy` (if any) and sets the wall clock to `realtime_ns` (if non-zero and
/// this is the machine's init). Call [`validate`] first.
pub fn apply(entropy: &[u8], realtime_ns: i64, pid1: bool) -> RequestResult<Freshened> {
    let entropy_credited = if entropy.is_empty() {
        false
    } else {
        add_entropy(entropy)?
    };
    let clock_set = if realtime_ns > 0 && is_machine_init(pid1) {
        sys::set_realtime_ns(realtime_ns)
            .map_err(|e| RequestError::internal(format!("clock_settime: {e}")))?;
        true
    } else {
        false
    };
    log::info!(
        "CreateSandbox: {} bytes of host entropy ({}), clock {}",
        entropy.len(),
        if entropy_credited {
            "credited"
        } else {
            "not credited"
        },
        if clock_set {
            "set from the host"
        } else {
            "left alone"
        }
    );
    Ok(Freshened {
        entropy_credited,
        clock_set,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(validate(&[0; MAX_ENTROPY_BYTES], 1).is_ok());
        assert!(validate(&[], 0).is_ok());
        assert!(validate(&[0; MAX_ENTROPY_BYTES + 1], 1).is_err());
        assert!(validate(&[1; 32], -1).is_err());
    }

    #[test]
    fn a_process_that_is_not_init_never_sets_the_clock() {
        assert!(!is_machine_init(false));
        // Claiming to be PID 1 is not enough: a test process is not.
        assert!(!is_machine_init(true));
    }
}
