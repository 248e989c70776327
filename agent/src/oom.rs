//! OOM-kill events per container, for GetOOMEvent.
//!
//! One thread sleeps in poll() on: an eventfd to wake it when watches change, an inotify
//! descriptor watching each v2 cgroup's `memory.events` (the kernel signals a modification
//! on every change), and one eventfd per v1 cgroup registered through
//! `cgroup.event_control` on `memory.oom_control`. On any wake-up it compares each
//! cgroup's `oom_kill` counter with the last value seen; no timers, no polling loop.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::container::cgroups::Cgroup;
use crate::reaper::lock;

/// Events kept for GetOOMEvent before the oldest are dropped.
const MAX_QUEUED: usize = 1024;

struct Watch {
    cgroup: Cgroup,
    last: u64,
    wd: Option<WatchDescriptor>,
    /// v1: (eventfd, memory.oom_control) kept open for the registration's lifetime.
    v1: Option<(Arc<OwnedFd>, File)>,
}

pub struct OomMonitor {
    watches: Mutex<HashMap<String, Watch>>,
    queue: Mutex<VecDeque<String>>,
    queued: Condvar,
    wake: EventFd,
    inotify: Option<Inotify>,
}

impl OomMonitor {
    /// Creates the monitor and starts its thread.
    pub fn start() -> std::io::Result<Arc<OomMonitor>> {
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK) {
            Ok(i) => Some(i),
            Err(e) => {
                log::warn!("inotify unavailable, v2 OOM events will not be reported: {e}");
                None
            }
        };
        let monitor = Arc::new(OomMonitor {
            watches: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            inotify,
        });
        let m = monitor.clone();
        std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || m.run())?;
        Ok(monitor)
    }

    /// Starts watching a container's cgroup.
    pub fn watch(&self, id: &str, cgroup: &Cgroup) {
        let mut w = Watch {
            cgroup: cgroup.clone(),
            last: cgroup.oom_kill_count(),
            wd: None,
            v1: None,
        };
        match cgroup.oom_watch_files() {
            Some((events, control)) if control.as_os_str().is_empty() => {
                if let Some(ino) = &self.inotify {
                    match ino.add_watch(&events, AddWatchFlags::IN_MODIFY) {
                        Ok(wd) => w.wd = Some(wd),
                        Err(e) => log::warn!("container {id}: watching {}: {e}", events.display()),
                    }
                }
            }
            Some((oom_control, control)) => match register_v1(&oom_control, &control) {
                Ok(v1) => w.v1 = Some(v1),
                Err(e) => log::warn!("container {id}: registering OOM notification: {e}"),
            },
            None => {
                log::warn!("container {id}: no memory controller; OOM events will not be reported")
            }
        }
        log::debug!(
            "container {id}: watching OOM kills (inotify {}, eventfd {})",
            w.wd.is_some(),
            w.v1.is_some()
        );
        lock(&self.watches).insert(id.to_string(), w);
        let _ = self.wake.write(1);
    }

    /// Stops watching (after a last look, so an OOM kill just before removal is reported).
    pub fn unwatch(&self, id: &str) {
        self.check();
        if let Some(w) = lock(&self.watches).remove(id) {
            if let (Some(wd), Some(ino)) = (w.wd, &self.inotify) {
                let _ = ino.rm_watch(wd);
            }
        }
        let _ = self.wake.write(1);
    }

    /// Takes the next event, waiting until `deadline`; `Ok(None)` when none came in time.
    pub fn next(&self, deadline: Option<Instant>, cancelled: &dyn Fn() -> bool) -> Option<String> {
        let mut q = lock(&self.queue);
        loop {
            if let Some(id) = q.pop_front() {
                return Some(id);
            }
            if cancelled() {
                return None;
            }
            let mut slice = Duration::from_secs(5);
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                slice = slice.min(d - now);
            }
            q = self
                .queued
                .wait_timeout(q, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn run(&self) {
        // v1 notifies when the cgroup goes under OOM, slightly before the kill is counted:
        // after such a wake-up, look again for a short while.
        let mut recheck_until: Option<Instant> = None;
        loop {
            let v1_fds: Vec<Arc<OwnedFd>> = lock(&self.watches)
                .values()
                .filter_map(|w| w.v1.as_ref().map(|v| v.0.clone()))
                .collect();
            let mut fds = vec![PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
            if let Some(ino) = &self.inotify {
                fds.push(PollFd::new(ino.as_fd(), PollFlags::POLLIN));
            }
            for fd in &v1_fds {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            let timeout = match recheck_until {
                Some(t) if t > Instant::now() => PollTimeout::from(50u8),
                _ => {
                    recheck_until = None;
                    PollTimeout::NONE
                }
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("oom monitor poll: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
            let v1_woke = fds
                .iter()
                .skip(1 + self.inotify.is_some() as usize)
                .any(|f| f.any().unwrap_or(false));
            if v1_woke {
                recheck_until = Some(Instant::now() + Duration::from_secs(2));
            }
            drop(fds);
            let _ = self.wake.read();
            if let Some(ino) = &self.inotify {
                while let Ok(events) = ino.read_events() {
                    if events.is_empty() {
                        break;
                    }
                }
            }
            for fd in &v1_fds {
                let mut buf = [0u8; 8];
                let _ = nix::unistd::read(fd.as_ref(), &mut buf);
            }
            if self.check() {
                recheck_until = None;
            }
        }
    }

    /// Returns whether a new event was queued.
    fn check(&self) -> bool {
        let mut new_events = Vec::new();
        for (id, w) in lock(&self.watches).iter_mut() {
            let now = w.cgroup.oom_kill_count();
            if now > w.last {
                log::info!("container {id}: OOM kill ({} → {now})", w.last);
                new_events.push(id.clone());
            }
            w.last = now;
        }
        if new_events.is_empty() {
            return false;
        }
        let mut q = lock(&self.queue);
        for id in new_events {
            if q.len() >= MAX_QUEUED {
                q.pop_front();
            }
            q.push_back(id);
        }
        self.queued.notify_all();
        true
    }
}

/// cgroup v1: ask for an eventfd notification on OOM in this memory cgroup.
fn register_v1(
    oom_control: &std::path::Path,
    event_control: &std::path::Path,
) -> std::io::Result<(Arc<OwnedFd>, File)> {
    let efd: OwnedFd =
        EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?.into();
    let ctl = File::open(oom_control)?;
    std::fs::write(
        event_control,
        format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd()),
    )?;
    Ok((Arc::new(efd), ctl))
}
