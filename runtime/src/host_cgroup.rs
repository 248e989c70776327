//! The pod's cgroup on the host: the VMM runs in the sandbox spec's `cgroupsPath`, so what
//! the pod's VM costs (guest memory, vCPU threads, device threads) is charged where kubelet
//! accounts the pod and its overhead, as with runc's pause container.
//!
//! * cgroup v2 (unified): one directory under the cgroup2 mount.
//! * cgroup v1 (or hybrid, as on this project's hosts): one directory per mounted hierarchy
//!   (every `cgroup`/`cgroup2` mount under the cgroup root), as runc's cgroupfs driver does;
//!   a new cpuset directory gets its parent's `cpuset.cpus`/`cpuset.mems` (v1 leaves them
//!   empty, and an empty cpuset cannot take a task).
//! * `cgroupsPath` forms: absolute (`/kubepods/pod1/<id>`, cgroupfs), relative (under the
//!   runtime's own cgroup, as runc), and systemd's `slice:prefix:name`, expanded the way runc's
//!   systemd driver names it (`/a.slice/a-b.slice/prefix-name.scope`) but created through
//!   cgroupfs (vessel talks to no systemd).
//!
//! Only the leaf is removed at cleanup (parents are kubelet's, or shared by pods), after the
//! VMM has exited; the kernel may still count exiting tasks for a moment, so removal retries.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error("cgroupsPath {path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("no cgroup hierarchy is mounted under {root}")]
    NoHierarchy { root: PathBuf },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup {path} still has tasks {waited:?} after its VMM exited: {tasks:?}")]
    Busy {
        path: PathBuf,
        waited: Duration,
        /// `tid (comm) state` of each task left.
        tasks: Vec<String>,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HostCgroupError {
    let path = path.to_path_buf();
    move |source| HostCgroupError::Io { op, path, source }
}

/// A cgroup hierarchy mounted on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Mount point (e.g. `/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// The controllers (v1 super options such as `memory`, `cpu,cpuacct`, `name=systemd`); empty
    /// for cgroup2.
    pub controllers: Vec<String>,
    /// This process's cgroup in the hierarchy (for relative cgroupsPaths).
    pub own: PathBuf,
}

impl Hierarchy {
    fn is_cpuset(&self) -> bool {
        self.controllers.iter().any(|c| c == "cpuset")
    }
}

/// The hierarchies of a mountinfo text under `root`, with this process's place in each
/// from a `/proc/self/cgroup` text.
pub fn parse_hierarchies(mountinfo: &str, proc_cgroup: &str, root: &Path) -> Vec<Hierarchy> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (fstype, _source, super_opts) = (r.next(), r.next(), r.next().unwrap_or(""));
        let mount = PathBuf::from(mount);
        if !mount.starts_with(root) {
            continue;
        }
        let controllers: Vec<String> = match fstype {
            Some("cgroup2") => Vec::new(),
            Some("cgroup") => super_opts
                .split(',')
                .filter(|o| {
                    !matches!(*o, "rw" | "ro" | "nosuid" | "nodev" | "noexec" | "relatime")
                        && !o.starts_with("release_agent")
                        && *o != "clone_children"
                        && *o != "noprefix"
                        && *o != "xattr"
                })
                .map(str::to_string)
                .collect(),
            _ => continue,
        };
        let own = own_cgroup(proc_cgroup, &controllers);
        found.push(Hierarchy {
            mount,
            controllers,
            own,
        });
    }
    found
}

/// This process's path in the hierarchy with `controllers` (`0::` line for cgroup2).
fn own_cgroup(proc_cgroup: &str, controllers: &[String]) -> PathBuf {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next(), parts.next(), parts.next());
        let (Some(list), Some(path)) = (list, path) else {
            continue;
        };
        let matches = if controllers.is_empty() {
            list.is_empty()
        } else {
            let mine: Vec<&str> = list.split(',').collect();
            controllers.iter().all(|c| mine.contains(&c.as_str()))
        };
        if matches {
            return PathBuf::from(path);
        }
    }
    PathBuf::from("/")
}

/// The cgroup path (from a hierarchy's root) that `cgroups_path` names; `own` is where this
/// process is, for relative paths.
pub fn resolve_path(cgroups_path: &str, own: &Path) -> Result<PathBuf, HostCgroupError> {
    let bad = |reason| HostCgroupError::BadPath {
        path: cgroups_path.chars().take(256).collect(),
        reason,
    };
    if cgroups_path.is_empty() {
        return Err(bad("empty"));
    }
    let path = if !cgroups_path.starts_with('/') && cgroups_path.matches(':').count() == 2 {
        expand_systemd(cgroups_path).ok_or_else(|| bad("not a systemd slice:prefix:name"))?
    } else if cgroups_path.starts_with('/') {
        PathBuf::from(cgroups_path)
    } else {
        own.join(cgroups_path)
    };
    let mut clean = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => clean.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(bad("'..' is not allowed")),
        }
    }
    if clean == Path::new("/") {
        return Err(bad("names the root cgroup"));
    }
    Ok(clean)
}

/// runc's systemd naming: `a-b.slice:prefix:name` → `/a.slice/a-b.slice/prefix-name.scope`
/// (a `name` ending in `.slice` is itself the unit).
fn expand_systemd(s: &str) -> Option<PathBuf> {
    let mut parts = s.splitn(3, ':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if name.is_empty() || name.contains('/') || prefix.contains('/') || slice.contains('/') {
        return None;
    }
    let mut path = PathBuf::from("/");
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    if slice != "-.slice" {
        let stem = slice.strip_suffix(".slice")?;
        if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
            return None;
        }
        let mut acc = String::new();
        for part in stem.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(part);
            path.push(format!("{acc}.slice"));
        }
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    Some(path)
}

/// The pod's cgroup: one directory per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCgroup {
    /// (hierarchy, full directory) pairs.
    dirs: Vec<(Hierarchy, PathBuf)>,
    /// (memory bytes, tasks) written when created.
    limits: Option<(u64, u64)>,
}

impl HostCgroup {
    /// The cgroup `cgroups_path` names on this host (nothing is created yet).
    pub fn for_path(cgroups_path: &str) -> Result<HostCgroup, HostCgroupError> {
        let root = Path::new(CGROUP_ROOT);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(io_err("reading", Path::new("/proc/self/cgroup")))?;
        Self::from_hierarchies(
            cgroups_path,
            parse_hierarchies(&mountinfo, &own, root),
            root,
        )
    }

    fn from_hierarchies(
        cgroups_path: &str,
        hierarchies: Vec<Hierarchy>,
        root: &Path,
    ) -> Result<HostCgroup, HostCgroupError> {
        if hierarchies.is_empty() {
            return Err(HostCgroupError::NoHierarchy {
                root: root.to_path_buf(),
            });
        }
        let mut dirs = Vec::new();
        for h in hierarchies {
            let rel = resolve_path(cgroups_path, &h.own)?;
            let dir = h.mount.join(rel.strip_prefix("/").unwrap_or(&rel));
            dirs.push((h, dir));
        }
        Ok(HostCgroup { dirs, limits: None })
    }

    /// The directories, for the state file (recorded before anything is created).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    /// The limits [`HostCgroup::create`] puts on it (see [`HostCgroup::set_limits`]).
    pub fn with_limits(mut self, memory_bytes: u64, pids: u64) -> HostCgroup {
        self.limits = Some((memory_bytes, pids));
        self
    }

    /// Creates the directories (and missing parents) and sets the limits.
    pub fn create(&self) -> Result<(), HostCgroupError> {
        for (h, dir) in &self.dirs {
            if h.is_cpuset() {
                create_cpuset_dirs(&h.mount, dir)?;
            } else {
                std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
            }
        }
        if let Some((memory, pids)) = self.limits {
            self.set_limits(memory, pids)?;
        }
        Ok(())
    }

    /// Caps the memory and the number of tasks of the cgroup (the VMM's own bound, below
    /// whatever kubelet sets on the pod's parent): v1 `memory.limit_in_bytes` /
    /// `pids.max`, v2 `memory.max` / `pids.max` where those controllers are enabled.
    pub fn set_limits(&self, memory_bytes: u64, pids: u64) -> Result<(), HostCgroupError> {
        for (h, dir) in &self.dirs {
            let files: &[(&str, u64)] = if h.controllers.is_empty() {
                &[("memory.max", memory_bytes), ("pids.max", pids)]
            } else if h.controllers.iter().any(|c| c == "memory") {
                &[("memory.limit_in_bytes", memory_bytes)]
            } else if h.controllers.iter().any(|c| c == "pids") {
                &[("pids.max", pids)]
            } else {
                &[]
            };
            for (name, value) in files {
                let f = dir.join(name);
                // A v2 hierarchy without the controller enabled has no such file.
                if !f.exists() {
                    continue;
                }
                std::fs::write(&f, value.to_string()).map_err(io_err("writing", &f))?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files, as C strings for [`join_before_exec`].
    fn procs_files(&self) -> Vec<std::ffi::CString> {
        self.dirs
            .iter()
            .filter_map(|(_, d)| {
                std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .ok()
            })
            .collect()
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<(), HostCgroupError> {
        for (_, dir) in &self.dirs {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io_err("writing", &procs))?;
        }
        Ok(())
    }
}

/// Makes the command's process join `cg` between fork and exec, so it runs in the pod's
/// cgroup from its first instruction (and so do the processes it forks, like the jailed
/// VMM's child). Best effort in the child: a failed write leaves it where it was (the cgroup
/// was created and checked writable by the runtime before).
pub fn join_before_exec(cmd: &mut std::process::Command, cg: &HostCgroup) {
    crate::sys::write_zero_before_exec(cmd, cg.procs_files());
}

/// Creates `dir` and missing parents below `mount`, giving each new cpuset its parent's
/// cpus and mems.
fn create_cpuset_dirs(mount: &Path, dir: &Path) -> Result<(), HostCgroupError> {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut cur = mount.to_path_buf();
    for c in rel.components() {
        let parent = cur.clone();
        cur.push(c);
        if cur.is_dir() {
            continue;
        }
        std::fs::create_dir(&cur).map_err(io_err("creating", &cur))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let mine = cur.join(file);
            let current = std::fs::read_to_string(&mine).unwrap_or_default();
            if current.trim().is_empty() {
                let from = std::fs::read_to_string(parent.join(file))
                    .map_err(io_err("reading", &parent.join(file)))?;
                std::fs::write(&mine, from.trim()).map_err(io_err("writing", &mine))?;
            }
        }
    }
    Ok(())
}

/// `tid (comm) state` of the tasks in cgroup `dir` (diagnostics).
fn tasks_of(dir: &Path) -> Vec<String> {
    let tasks = std::fs::read_to_string(dir.join("tasks"))
        .or_else(|_| std::fs::read_to_string(dir.join("cgroup.threads")))
        .unwrap_or_default();
    tasks
        .split_whitespace()
        .take(16)
        .map(|tid| {
            let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).unwrap_or_default();
            // "tid (comm) S ...": comm may hold spaces and parentheses.
            let comm = stat
                .split_once('(')
                .and_then(|(_, r)| r.rsplit_once(')'))
                .map_or(("?", ""), |(c, rest)| (c, rest.trim_start()));
            let state = comm.1.split_whitespace().next().unwrap_or("?");
            format!("{tid} ({}) {state}", comm.0)
        })
        .collect()
}

/// Removes the leaf directories `dirs` (a recorded [`HostCgroup::dirs`]), retrying while the
/// kernel still counts exiting tasks; a missing one is fine.
pub fn remove_dirs(dirs: &[PathBuf], wait: Duration) -> Result<(), HostCgroupError> {
    let deadline = Instant::now() + wait;
    for dir in dirs {
        // Only ever cgroup directories: never remove anything outside the cgroup root.
        if !dir.starts_with(CGROUP_ROOT) {
            continue;
        }
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(HostCgroupError::Busy {
                        path: dir.clone(),
                        waited: wait,
                        tasks: tasks_of(dir),
                    })
                }
                Err(e) => return Err(io_err("removing", dir)(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 26 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
40 35 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
41 35 0:36 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
42 35 0:37 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,cpuset,clone_children
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
";
    const PROC_CGROUP: &str = "\
5:memory:/user.slice
4:cpu,cpuacct:/user.slice
3:cpuset:/
1:name=systemd:/user.slice/session-1.scope
0::/user.slice/session-1.scope
";

    #[test]
    fn finds_every_hierarchy_and_our_place_in_it() {
        let h = parse_hierarchies(HYBRID, PROC_CGROUP, Path::new(CGROUP_ROOT));
        let mounts: Vec<_> = h.iter().map(|h| h.mount.display().to_string()).collect();
        assert_eq!(
            mounts,
            [
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/cpuset"
            ]
        );
        assert_eq!(h[1].controllers, ["name=systemd"]);
        assert_eq!(h[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(h[4].controllers, ["cpuset"]);
        assert_eq!(h[0].own, Path::new("/user.slice/session-1.scope"));
        assert_eq!(h[3].own, Path::new("/user.slice"));
    }

    #[test]
    fn cgroups_path_forms() {
        let own = Path::new("/user.slice");
        assert_eq!(
            resolve_path("/kubepods/besteffort/pod1/abc", own).unwrap(),
            Path::new("/kubepods/besteffort/pod1/abc")
        );
        assert_eq!(
            resolve_path("vessel/abc", own).unwrap(),
            Path::new("/user.slice/vessel/abc")
        );
        assert_eq!(
            resolve_path("kubepods-besteffort-pod1.slice:cri-containerd:abc", own).unwrap(),
            Path::new(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
            )
        );
        for bad in ["", "/", "/a/../../etc", "a.slice:x:y/z", "-a.slice:p:n"] {
            assert!(resolve_path(bad, own).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn one_dir_per_hierarchy() {
        let h = parse_hierarchies(HYBRID, PROC_CGROUP, Path::new(CGROUP_ROOT));
        let cg =
            HostCgroup::from_hierarchies("/kubepods/pod1/sb", h, Path::new(CGROUP_ROOT)).unwrap();
        let dirs = cg.dirs();
        assert_eq!(dirs.len(), 5);
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/memory/kubepods/pod1/sb")));
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/unified/kubepods/pod1/sb")));
        assert!(matches!(
            HostCgroup::from_hierarchies("/x", Vec::new(), Path::new(CGROUP_ROOT)),
            Err(HostCgroupError::NoHierarchy { .. })
        ));
    }

    /// The real thing on this host (root): create, move a process in, remove after it exits.
    #[test]
    fn places_a_process_and_removes_the_leaf() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root to create cgroups"
        );
        let path = format!("/vessel-test-cg-{}/leaf", std::process::id());
        let cg = HostCgroup::for_path(&path)
            .unwrap()
            .with_limits(300 << 20, 50);
        cg.create().unwrap();
        for d in cg.dirs() {
            let mem = d.join("memory.limit_in_bytes");
            if mem.exists() {
                assert_eq!(std::fs::read_to_string(&mem).unwrap().trim(), "314572800");
            }
            let pids = d.join("pids.max");
            if pids.exists() && d.starts_with("/sys/fs/cgroup/pids") {
                assert_eq!(std::fs::read_to_string(&pids).unwrap().trim(), "50");
            }
        }
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        cg.add_process(child.id() as i32).unwrap();
        let mine = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(mine.contains(&path), "{mine}");
        // Busy while the process lives.
        assert!(remove_dirs(&cg.dirs(), Duration::from_millis(100)).is_err());
        child.kill().unwrap();
        child.wait().unwrap();
        remove_dirs(&cg.dirs(), Duration::from_secs(10)).unwrap();
        for d in cg.dirs() {
            assert!(!d.exists(), "{} left", d.display());
            let _ = std::fs::remove_dir(d.parent().unwrap());
        }
    }
}
