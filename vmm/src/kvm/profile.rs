//! A sampling profiler of guest RIPs, to see where a slow guest spends its time (on KVM-PVM
//! a kernel boot takes minutes). A `vmm-sampler` thread kicks each vCPU out of KVM_RUN every
//! `interval`; the kicked vCPU records its RIP. At the end the histogram goes to a file
//! (`count rip` per line, most frequent first) ready for `addr2line`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use seccompiler::BpfProgram;

/// RIP -> samples, shared by the vCPUs of one VM.
#[derive(Debug, Default, Clone)]
pub struct RipHistogram(Arc<Mutex<HashMap<u64, u64>>>);

impl RipHistogram {
    pub fn record(&self, rip: u64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(rip).or_insert(0) += 1;
    }

    /// (rip, count), most frequent first (ties by address).
    pub fn sorted(&self) -> Vec<(u64, u64)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(u64, u64)> = map.iter().map(|(r, c)| (*r, *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    pub fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for (rip, count) in self.sorted() {
            writeln!(out, "{count}\t{rip:#x}")?;
        }
        out.flush()
    }
}

/// The thread that kicks vCPUs at a fixed interval.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts kicking `threads` (pthread ids of vCPU threads that stay alive until
    /// [`Sampler::stop`] returns) with `signal` every `interval`, from `delay` on (so a
    /// profile can leave out the boot).
    pub fn start(
        threads: Vec<libc::pthread_t>,
        signal: libc::c_int,
        interval: Duration,
        delay: Duration,
        filter: Option<BpfProgram>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("vmm-sampler".to_string())
            .spawn(move || {
                if let Some(filter) = &filter {
                    if let Err(e) = seccompiler::apply_filter(filter) {
                        log::error!("sampler: seccomp: {e}; not sampling");
                        return;
                    }
                }
                let begin = std::time::Instant::now() + delay;
                while !thread_stop.load(Ordering::Acquire) {
                    std::thread::sleep(interval);
                    if std::time::Instant::now() < begin {
                        continue;
                    }
                    for t in &threads {
                        // SAFETY: the vCPU threads are joined only after `Sampler::stop` has
                        // joined this thread, so every pthread id here is alive.
                        unsafe { libc::pthread_kill(*t, signal) };
                    }
                }
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops and joins the sampler thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_sorts_by_count_and_writes_addr2line_input() {
        let h = RipHistogram::default();
        for rip in [0x30, 0x10, 0x10, 0x20, 0x10, 0x20] {
            h.record(rip);
        }
        assert_eq!(h.sorted(), vec![(0x10, 3), (0x20, 2), (0x30, 1)]);
        let mut out = Vec::new();
        h.write_to(&mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "3\t0x10\n2\t0x20\n1\t0x30\n"
        );
    }
}
