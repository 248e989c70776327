//! A cgroup per container, on cgroup v2 (the guest) or v1 (hosts with a hybrid layout,
//! used by the host tests): creation, resource limits, processes, freezer, kill, stats, OOM
//! counters, removal. Plain file I/O on the cgroup filesystems.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use super::cgroup_cpu::asks_for_cpu;

/// v1 controllers a container joins (when the host mounts them).
const V1_CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "blkio", "devices",
];
/// v2 controllers enabled for containers (when available). `cpu` is not among them: it is
/// enabled on demand (`cgroup_cpu`).
const V2_CONTROLLERS: &[&str] = &["cpuset", "memory", "pids", "io"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup filesystem found (neither cgroup2 at /sys/fs/cgroup nor v1 controllers)")]
    NoCgroupFs,
    #[error("cgroup path {0:?} must not contain '..'")]
    BadPath(PathBuf),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cgroup {0} still has processes after kill")]
    Busy(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the cgroup filesystems are mounted and which cgroup the agent itself is in.
#[derive(Debug, Clone)]
pub enum CgroupLayout {
    /// Unified hierarchy: (mount point, the agent's own cgroup path, the hierarchy's root
    /// flags among its mount options, e.g. `favordynmods`).
    V2 {
        root: PathBuf,
        own: PathBuf,
        root_flags: String,
    },
    /// Controller name → (mount point, the agent's own cgroup path in that hierarchy).
    V1 {
        hierarchies: BTreeMap<String, (PathBuf, PathBuf)>,
    },
}

/// The cgroup2 root flags among a mount's super options. A cgroup2 mount in the initial
/// cgroup namespace sets the hierarchy's flags to its own options, so a container's mount
/// passes these on rather than clear them (`favordynmods`, see `crate::init`).
fn v2_root_flags(superopts: &str) -> String {
    const ROOT_FLAGS: [&str; 4] = [
        "nsdelegate",
        "favordynmods",
        "memory_localevents",
        "memory_recursiveprot",
    ];
    superopts
        .split(',')
        .filter(|o| ROOT_FLAGS.contains(o))
        .collect::<Vec<_>>()
        .join(",")
}

impl CgroupLayout {
    /// Reads /proc/self/mountinfo and /proc/self/cgroup.
    pub fn detect() -> Result<Self, CgroupError> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(io_err("read", Path::new("/proc/self/cgroup")))?;
        Self::parse(&mountinfo, &own)
    }

    fn parse(mountinfo: &str, own_cgroups: &str) -> Result<Self, CgroupError> {
        let mut v2_root = None;
        let mut hierarchies = BTreeMap::new();
        let own_of = |controller: &str| -> PathBuf {
            for line in own_cgroups.lines() {
                let mut parts = line.splitn(3, ':');
                let (_, ctrls, path) = (
                    parts.next(),
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or("/"),
                );
                if ctrls.split(',').any(|c| c == controller) {
                    return PathBuf::from(path);
                }
            }
            PathBuf::from("/")
        };
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(mountpoint), Some(fstype), Some(superopts)) =
                (fields.get(4), fields.get(sep + 1), fields.get(sep + 3))
            else {
                continue;
            };
            match *fstype {
                "cgroup2" if *mountpoint == "/sys/fs/cgroup" => {
                    v2_root = Some((PathBuf::from(mountpoint), v2_root_flags(superopts)))
                }
                "cgroup" => {
                    for opt in superopts.split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            hierarchies
                                .insert(opt.to_string(), (PathBuf::from(mountpoint), own_of(opt)));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some((root, root_flags)) = v2_root {
            let own = own_cgroups
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"));
            return Ok(CgroupLayout::V2 {
                root,
                own,
                root_flags,
            });
        }
        if hierarchies.is_empty() {
            return Err(CgroupError::NoCgroupFs);
        }
        Ok(CgroupLayout::V1 { hierarchies })
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, CgroupLayout::V2 { .. })
    }

    /// The directories of a container's cgroup. An absolute `cgroups_path` is taken from the
    /// hierarchy root; a relative one (default `vessel/<id>`) from the agent's own cgroup.
    pub fn container_cgroup(
        &self,
        cgroups_path: Option<&Path>,
        id: &str,
    ) -> Result<Cgroup, CgroupError> {
        let default = PathBuf::from("vessel").join(id);
        let rel = match cgroups_path {
            // systemd-style "slice:prefix:name" is not a path; fall back to the default.
            Some(p) if !p.to_string_lossy().contains(':') => p.to_path_buf(),
            _ => default,
        };
        if rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(CgroupError::BadPath(rel));
        }
        let under = |mount: &Path, own: &Path| -> PathBuf {
            let base = if rel.is_absolute() {
                PathBuf::from("/")
            } else {
                own.to_path_buf()
            };
            let full = base.join(&rel);
            mount.join(full.strip_prefix("/").unwrap_or(&full))
        };
        Ok(match self {
            CgroupLayout::V2 { root, own, .. } => Cgroup {
                v2: true,
                root: root.clone(),
                dirs: vec![("".into(), under(root, own))],
            },
            CgroupLayout::V1 { hierarchies } => {
                let mut dirs: Vec<(String, PathBuf)> = Vec::new();
                for (ctrl, (mount, own)) in hierarchies {
                    dirs.push((ctrl.clone(), under(mount, own)));
                }
                Cgroup {
                    v2: false,
                    root: PathBuf::from("/sys/fs/cgroup"),
                    dirs,
                }
            }
        })
    }
}

/// Resource usage read from a cgroup.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_throttled_usec: u64,
    pub cpu_nr_periods: u64,
    pub cpu_nr_throttled: u64,
    pub mem_usage: u64,
    pub mem_limit: u64,
    pub mem_max_usage: u64,
    pub mem_anon: u64,
    pub mem_file: u64,
    pub oom_events: u64,
    pub oom_kill_events: u64,
    pub pids_current: u64,
    pub pids_limit: u64,
}

/// One container's cgroup: one directory (v2) or one per v1 controller.
#[derive(Debug, Clone)]
pub struct Cgroup {
    v2: bool,
    root: PathBuf,
    /// (controller, directory); the controller is "" on v2. v1 controllers that share a
    /// hierarchy share a directory.
    dirs: Vec<(String, PathBuf)>,
}

impl Cgroup {
    pub(super) fn is_v2(&self) -> bool {
        self.v2
    }

    pub(super) fn dir(&self, controller: &str) -> Option<&Path> {
        if self.v2 {
            return self.dirs.first().map(|(_, d)| d.as_path());
        }
        self.dirs
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, d)| d.as_path())
    }

    fn unique_dirs(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::new();
        for (_, d) in &self.dirs {
            if !out.contains(&d.as_path()) {
                out.push(d);
            }
        }
        out
    }

    /// The directory used to list processes.
    pub fn procs_dir(&self) -> Option<&Path> {
        self.dir("pids")
            .or_else(|| self.dir("memory"))
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()))
    }

    /// Whether any of its directories exists already.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|(_, d)| d.exists())
    }

    /// Creates the directories (and, on v2, enables controllers on the way down).
    pub fn create(&self) -> Result<(), CgroupError> {
        if self.v2 {
            for (parent, level) in self.v2_levels() {
                enable_v2_controllers(&parent);
                if !level.exists() {
                    fs::create_dir(&level).map_err(io_err("mkdir", &level))?;
                }
            }
            return Ok(());
        }
        for (ctrl, dir) in &self.dirs {
            if dir.exists() {
                continue;
            }
            fs::create_dir_all(dir).map_err(io_err("mkdir", dir))?;
            if ctrl == "cpuset" {
                init_v1_cpuset(dir)?;
            }
        }
        Ok(())
    }

    /// On v2, each level from the hierarchy's root down to the cgroup's directory, with its
    /// parent: (parent, level).
    pub(super) fn v2_levels(&self) -> Vec<(PathBuf, PathBuf)> {
        let Some(dir) = self.dirs.first().map(|(_, d)| d).filter(|_| self.v2) else {
            return Vec::new();
        };
        let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
        let mut cur = self.root.clone();
        let mut levels = Vec::new();
        for comp in rel.components() {
            let parent = cur.clone();
            cur.push(comp);
            levels.push((parent, cur.clone()));
        }
        levels
    }

    /// Moves `pid` into the cgroup.
    /// The `cgroup.procs` files a process joins this cgroup through (one per v1 hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.unique_dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.unique_dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Applies OCI resource limits (memory, cpu, cpuset, pids), turning v2's `cpu` controller
    /// on by this cgroup's own rule (`cgroup_cpu::asks_for_cpu`).
    pub fn apply(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        self.apply_without_cpu(res)?;
        if let Some(cpu) = res.cpu() {
            self.apply_cpu(cpu, asks_for_cpu(cpu))?;
        }
        Ok(())
    }

    /// Applies every limit of `res` but the CPU's (`cgroup_cpu`).
    pub(super) fn apply_without_cpu(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        if let Some(mem) = res.memory() {
            self.apply_memory(mem.limit(), mem.swap(), mem.reservation(), mem.swappiness())?;
        }
        if let Some(pids) = res.pids() {
            let v = if pids.limit() > 0 {
                pids.limit().to_string()
            } else {
                "max".into()
            };
            write_in(self.dir("pids"), "pids.max", &v)?;
        }
        Ok(())
    }

    fn apply_memory(
        &self,
        limit: Option<i64>,
        swap: Option<i64>,
        reservation: Option<i64>,
        swappiness: Option<u64>,
    ) -> Result<(), CgroupError> {
        let unlimited = |v: i64| v <= 0;
        if self.v2 {
            let dir = self.dir("");
            if let Some(r) = reservation {
                write_in(
                    dir,
                    "memory.low",
                    &(if unlimited(r) {
                        "0".into()
                    } else {
                        r.to_string()
                    }),
                )?;
            }
            if let Some(l) = limit {
                write_in(
                    dir,
                    "memory.max",
                    &(if unlimited(l) {
                        "max".into()
                    } else {
                        l.to_string()
                    }),
                )?;
            }
            // OCI swap is memory+swap; v2 limits swap alone.
            if let Some(s) = swap {
                let v = match (s, limit) {
                    (s, _) if unlimited(s) => "max".to_string(),
                    (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                    (s, _) => s.to_string(),
                };
                if dir
                    .map(|d| d.join("memory.swap.max").exists())
                    .unwrap_or(false)
                {
                    write_in(dir, "memory.swap.max", &v)?;
                }
            }
            return Ok(());
        }
        let dir = self.dir("memory");
        if let Some(r) = reservation {
            write_in(
                dir,
                "memory.soft_limit_in_bytes",
                &(if unlimited(r) { -1 } else { r }).to_string(),
            )?;
        }
        let l = limit.map(|l| if unlimited(l) { -1 } else { l });
        let has_memsw = dir
            .map(|d| d.join("memory.memsw.limit_in_bytes").exists())
            .unwrap_or(false);
        let s = swap
            .filter(|_| has_memsw)
            .map(|s| if unlimited(s) { -1 } else { s });
        match (l, s) {
            (Some(l), Some(s)) => {
                // The kernel requires limit <= memsw at every step: try both orders.
                if write_in(dir, "memory.limit_in_bytes", &l.to_string()).is_err()
                    || write_in(dir, "memory.memsw.limit_in_bytes", &s.to_string()).is_err()
                {
                    write_in(dir, "memory.memsw.limit_in_bytes", &s.to_string())?;
                    write_in(dir, "memory.limit_in_bytes", &l.to_string())?;
                }
            }
            (Some(l), None) => write_in(dir, "memory.limit_in_bytes", &l.to_string())?,
            (None, Some(s)) => write_in(dir, "memory.memsw.limit_in_bytes", &s.to_string())?,
            (None, None) => {}
        }
        if let Some(sw) = swappiness.filter(|v| *v <= 100) {
            write_in(dir, "memory.swappiness", &sw.to_string())?;
        }
        Ok(())
    }

    /// Pids of every process in the cgroup (in the agent's pid namespace).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let Some(dir) = self.procs_dir() else {
            return Ok(Vec::new());
        };
        let path = dir.join("cgroup.procs");
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Freezes (pause) or thaws (resume) every process, waiting until the state is reached.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        if self.v2 {
            let dir = self.dir("");
            write_in(dir, "cgroup.freeze", if frozen { "1" } else { "0" })?;
            let want = if frozen { "frozen 1" } else { "frozen 0" };
            while Instant::now() < deadline {
                let events = read_in(dir, "cgroup.events").unwrap_or_default();
                if events.lines().any(|l| l == want) {
                    return Ok(());
                }
                sleep(Duration::from_millis(5));
            }
            return Ok(());
        }
        let dir = self.dir("freezer");
        let want = if frozen { "FROZEN" } else { "THAWED" };
        while Instant::now() < deadline {
            write_in(dir, "freezer.state", want)?;
            if read_in(dir, "freezer.state").unwrap_or_default().trim() == want {
                return Ok(());
            }
            sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Sends `signal` to every process in the cgroup. For SIGKILL, freezes first (v1) so
    /// nothing forks in between, or uses cgroup.kill (v2).
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) -> Result<(), CgroupError> {
        use nix::sys::signal::Signal;
        if signal == Signal::SIGKILL && self.v2 {
            if let Some(dir) = self.dir("") {
                if dir.join("cgroup.kill").exists() {
                    return write(&dir.join("cgroup.kill"), "1");
                }
            }
        }
        let freeze = signal == Signal::SIGKILL && self.dir("freezer").is_some();
        if freeze {
            let _ = self.set_frozen(true);
        }
        for pid in self.pids()? {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        if freeze {
            let _ = self.set_frozen(false);
        }
        Ok(())
    }

    /// Reads CPU, memory and pids usage.
    pub fn stats(&self) -> CgroupStats {
        let mut st = CgroupStats::default();
        let num = |s: Option<String>| s.and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
        let kv = |s: &str, key: &str| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix(key)
                        .and_then(|r| r.strip_prefix(' '))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let limit = |s: Option<String>| match s.as_deref().map(str::trim) {
            Some("max") | None => 0,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|v| *v < (1 << 62))
                .unwrap_or(0),
        };
        if self.v2 {
            let dir = self.dir("");
            let cpu = read_in(dir, "cpu.stat").unwrap_or_default();
            st.cpu_usage_usec = kv(&cpu, "usage_usec");
            st.cpu_user_usec = kv(&cpu, "user_usec");
            st.cpu_system_usec = kv(&cpu, "system_usec");
            st.cpu_throttled_usec = kv(&cpu, "throttled_usec");
            st.cpu_nr_periods = kv(&cpu, "nr_periods");
            st.cpu_nr_throttled = kv(&cpu, "nr_throttled");
            st.mem_usage = num(read_in(dir, "memory.current"));
            st.mem_limit = limit(read_in(dir, "memory.max"));
            st.mem_max_usage = num(read_in(dir, "memory.peak"));
            let mem = read_in(dir, "memory.stat").unwrap_or_default();
            st.mem_anon = kv(&mem, "anon");
            st.mem_file = kv(&mem, "file");
            let ev = read_in(dir, "memory.events").unwrap_or_default();
            st.oom_events = kv(&ev, "oom");
            st.oom_kill_events = kv(&ev, "oom_kill");
            st.pids_current = num(read_in(dir, "pids.current"));
            st.pids_limit = limit(read_in(dir, "pids.max"));
            return st;
        }
        let acct = self.dir("cpuacct");
        st.cpu_usage_usec = num(read_in(acct, "cpuacct.usage")) / 1000;
        let ticks = crate::sys::clock_ticks_per_second();
        let cs = read_in(acct, "cpuacct.stat").unwrap_or_default();
        st.cpu_user_usec = kv(&cs, "user") * 1_000_000 / ticks;
        st.cpu_system_usec = kv(&cs, "system") * 1_000_000 / ticks;
        let cpu = read_in(self.dir("cpu"), "cpu.stat").unwrap_or_default();
        st.cpu_nr_periods = kv(&cpu, "nr_periods");
        st.cpu_nr_throttled = kv(&cpu, "nr_throttled");
        st.cpu_throttled_usec = kv(&cpu, "throttled_time") / 1000;
        let mdir = self.dir("memory");
        st.mem_usage = num(read_in(mdir, "memory.usage_in_bytes"));
        st.mem_limit = limit(read_in(mdir, "memory.limit_in_bytes"));
        st.mem_max_usage = num(read_in(mdir, "memory.max_usage_in_bytes"));
        let mem = read_in(mdir, "memory.stat").unwrap_or_default();
        st.mem_anon = kv(&mem, "total_rss").max(kv(&mem, "rss"));
        st.mem_file = kv(&mem, "total_cache").max(kv(&mem, "cache"));
        st.oom_events = num(read_in(mdir, "memory.failcnt"));
        st.oom_kill_events = self.oom_kill_count();
        st.pids_current = num(read_in(self.dir("pids"), "pids.current"));
        st.pids_limit = limit(read_in(self.dir("pids"), "pids.max"));
        st
    }

    /// The kernel's count of OOM kills in this cgroup.
    pub fn oom_kill_count(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = read_in(self.dir("memory"), file).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The file whose changes signal OOM: memory.events (v2, inotify) or memory.oom_control
    /// (v1, cgroup.event_control).
    pub fn oom_watch_files(&self) -> Option<(PathBuf, PathBuf)> {
        let dir = self.dir("memory")?;
        if self.v2 {
            Some((dir.join("memory.events"), PathBuf::new()))
        } else {
            Some((
                dir.join("memory.oom_control"),
                dir.join("cgroup.event_control"),
            ))
        }
    }

    /// Kills what is left and removes the directories (deepest first, retrying while the
    /// kernel still counts exiting tasks).
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in self.unique_dirs() {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        let _ = self.signal_all(nix::sys::signal::Signal::SIGKILL);
                        sleep(Duration::from_millis(10));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        return Err(CgroupError::Busy(dir.to_path_buf()))
                    }
                    Err(e) => return Err(io_err("rmdir", dir)(e)),
                }
            }
        }
        Ok(())
    }
}

fn enable_v2_controllers(dir: &Path) {
    enable_v2_controllers_of(dir, V2_CONTROLLERS)
}

/// Enables those of `controllers` that `dir` has and has not enabled for its children.
pub(super) fn enable_v2_controllers_of(dir: &Path, controllers: &[&str]) {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in controllers {
        if available.split_whitespace().any(|a| a == *c)
            && !enabled.split_whitespace().any(|a| a == *c)
        {
            if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                log::warn!("enabling cgroup controller {c} in {}: {e}", dir.display());
            }
        }
    }
}

/// v1 cpuset refuses tasks until cpus and mems are set: copy them from the parent, level by
/// level.
fn init_v1_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let mut chain = Vec::new();
    let mut cur = dir;
    while let Some(parent) = cur.parent() {
        chain.push(cur.to_path_buf());
        if parent.join("cpuset.cpus").exists()
            && !read_in(Some(parent), "cpuset.cpus")
                .unwrap_or_default()
                .trim()
                .is_empty()
        {
            break;
        }
        cur = parent;
    }
    for d in chain.iter().rev() {
        let parent = d.parent().unwrap_or(d);
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if read_in(Some(d), f).unwrap_or_default().trim().is_empty() {
                let v = read_in(Some(parent), f).unwrap_or_default();
                write(&d.join(f), v.trim())?;
            }
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

pub(super) fn write_in(dir: Option<&Path>, file: &str, value: &str) -> Result<(), CgroupError> {
    match dir {
        Some(d) => write(&d.join(file), value),
        None => {
            log::warn!("cgroup controller for {file} is not available; not set");
            Ok(())
        }
    }
}

fn read_in(dir: Option<&Path>, file: &str) -> Option<String> {
    fs::read_to_string(dir?.join(file)).ok()
}

/// A v2 layout whose hierarchy is mounted at `root`, the agent in its root cgroup.
#[cfg(test)]
pub(super) fn v2_layout(root: &Path) -> CgroupLayout {
    CgroupLayout::V2 {
        root: root.to_path_buf(),
        own: PathBuf::from("/"),
        root_flags: String::new(),
    }
}

/// Plain files standing in for a cgroup2 root: `available` in `cgroup.controllers`, `enabled`
/// in `cgroup.subtree_control` (a written `subtree_control` then holds the last write).
#[cfg(test)]
pub(super) fn fake_v2_root(available: &str, enabled: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("cgroup.controllers"), available).unwrap();
    fs::write(root.path().join("cgroup.subtree_control"), enabled).unwrap();
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpuacct
35 30 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd";

    #[test]
    fn hybrid_layout_is_v1_with_own_paths() {
        let own = "4:memory:/sandbox/x\n1:cpu:/\n2:cpuacct:/\n0::/\n";
        let layout = CgroupLayout::parse(HYBRID, own).unwrap();
        assert!(!layout.is_v2());
        let cg = layout.container_cgroup(None, "c1").unwrap();
        assert_eq!(
            cg.dir("memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/sandbox/x/vessel/c1")
        );
        assert_eq!(
            cg.dir("cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu/vessel/c1")
        );
        assert_eq!(
            cg.dir("cpuacct").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/vessel/c1")
        );
        assert!(cg.dir("name=systemd").is_none());
        let abs = layout
            .container_cgroup(Some(Path::new("/pods/c1")), "c1")
            .unwrap();
        assert_eq!(
            abs.dir("memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/pods/c1")
        );
        assert!(layout
            .container_cgroup(Some(Path::new("../escape")), "c1")
            .is_err());
    }

    #[test]
    fn unified_layout_is_v2() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let layout = CgroupLayout::parse(mi, "0::/\n").unwrap();
        assert!(layout.is_v2());
        assert!(matches!(&layout, CgroupLayout::V2 { root_flags, .. } if root_flags.is_empty()));
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate,favordynmods";
        assert!(matches!(
            CgroupLayout::parse(mi, "0::/\n").unwrap(),
            CgroupLayout::V2 { root_flags, .. } if root_flags == "nsdelegate,favordynmods"
        ));
        let cg = layout
            .container_cgroup(Some(Path::new("kubepods.slice:cri:abc")), "abc")
            .unwrap();
        assert_eq!(
            cg.dir("memory").unwrap(),
            Path::new("/sys/fs/cgroup/vessel/abc")
        );
    }
}
