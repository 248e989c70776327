//! Host memory of processes: PSS from `/proc/<pid>/smaps_rollup`, the process tree from
//! `/proc/<pid>/stat`, and finding a container's shim by its command line.
//!
//! PSS (proportional set size) charges each shared page to its sharers in equal parts, so the
//! PSS of several processes adds up without counting shared libraries twice. The guest memory
//! a VMM has touched is anonymous memory of the VMM, so it is in the VMM's PSS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ProcMemError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no `{field}:` line (is this a smaps_rollup file?)")]
    MissingField { path: String, field: &'static str },
    #[error("{path}: bad value in line {line:?}")]
    BadLine { path: String, line: String },
    #[error("{path}: cannot parse {what}")]
    BadStat { path: String, what: &'static str },
}

/// The fields of a smaps_rollup file the benchmark uses, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub pss_anon_kib: u64,
    pub pss_file_kib: u64,
    pub pss_shmem_kib: u64,
    pub swap_pss_kib: u64,
}

impl std::ops::Add for Rollup {
    type Output = Rollup;
    fn add(self, o: Rollup) -> Rollup {
        Rollup {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
            pss_anon_kib: self.pss_anon_kib + o.pss_anon_kib,
            pss_file_kib: self.pss_file_kib + o.pss_file_kib,
            pss_shmem_kib: self.pss_shmem_kib + o.pss_shmem_kib,
            swap_pss_kib: self.swap_pss_kib + o.swap_pss_kib,
        }
    }
}

/// Parses the text of `/proc/<pid>/smaps_rollup`; `origin` names it in errors. `Pss` must be
/// there; the split fields (Linux >= 5.9) and `SwapPss` count as 0 when absent.
pub fn parse_smaps_rollup(text: &str, origin: &str) -> Result<Rollup, ProcMemError> {
    let mut r = Rollup::default();
    let mut have_pss = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "Rss" => &mut r.rss_kib,
            "Pss" => {
                have_pss = true;
                &mut r.pss_kib
            }
            "Pss_Anon" => &mut r.pss_anon_kib,
            "Pss_File" => &mut r.pss_file_kib,
            "Pss_Shmem" => &mut r.pss_shmem_kib,
            "SwapPss" => &mut r.swap_pss_kib,
            _ => continue,
        };
        let mut words = rest.split_whitespace();
        let value = words.next().and_then(|v| v.parse::<u64>().ok());
        match (value, words.next()) {
            (Some(v), Some("kB")) => *slot = v,
            _ => {
                return Err(ProcMemError::BadLine {
                    path: origin.to_string(),
                    line: line.to_string(),
                })
            }
        }
    }
    if !have_pss {
        return Err(ProcMemError::MissingField {
            path: origin.to_string(),
            field: "Pss",
        });
    }
    Ok(r)
}

/// Reads and parses `<proc>/<pid>/smaps_rollup`.
pub fn read_rollup(proc_root: &Path, pid: u32) -> Result<Rollup, ProcMemError> {
    let path = proc_root.join(pid.to_string()).join("smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|source| ProcMemError::Read {
        path: path.clone(),
        source,
    })?;
    parse_smaps_rollup(&text, &path.display().to_string())
}

/// One process as seen in /proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
}

impl ProcInfo {
    /// The program's file name from its command line (comm is cut at 15 bytes), else comm.
    pub fn name(&self) -> String {
        self.cmdline
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.comm.clone())
    }
}

/// `(comm, ppid)` from the text of `/proc/<pid>/stat`. The comm is in parentheses and may
/// itself contain spaces and parentheses, so the fields after it start after the last `)`.
pub fn parse_stat(text: &str, origin: &str) -> Result<(String, u32), ProcMemError> {
    let bad = |what| ProcMemError::BadStat {
        path: origin.to_string(),
        what,
    };
    let open = text.find('(').ok_or_else(|| bad("comm"))?;
    let close = text.rfind(')').ok_or_else(|| bad("comm"))?;
    if close < open {
        return Err(bad("comm"));
    }
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_whitespace();
    let _state = rest.next().ok_or_else(|| bad("state"))?;
    let ppid = rest
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| bad("ppid"))?;
    Ok((comm, ppid))
}

/// A snapshot of the processes under a /proc root.
#[derive(Debug, Clone, Default)]
pub struct ProcTable {
    pub procs: HashMap<u32, ProcInfo>,
}

impl ProcTable {
    /// Reads every `<proc_root>/<pid>/{stat,cmdline}`; processes that exit meanwhile are
    /// skipped.
    pub fn scan(proc_root: &Path) -> Result<ProcTable, ProcMemError> {
        let entries = std::fs::read_dir(proc_root).map_err(|source| ProcMemError::Read {
            path: proc_root.to_path_buf(),
            source,
        })?;
        let mut procs = HashMap::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
                continue;
            };
            let Ok((comm, ppid)) = parse_stat(&stat, &dir.display().to_string()) else {
                continue;
            };
            let cmdline = std::fs::read(dir.join("cmdline"))
                .map(|raw| split_cmdline(&raw))
                .unwrap_or_default();
            procs.insert(
                pid,
                ProcInfo {
                    pid,
                    ppid,
                    comm,
                    cmdline,
                },
            );
        }
        Ok(ProcTable { procs })
    }

    /// `root` and all its descendants (sorted), if `root` is in the table.
    pub fn tree(&self, root: u32) -> Vec<u32> {
        if !self.procs.contains_key(&root) {
            return Vec::new();
        }
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        for p in self.procs.values() {
            children.entry(p.ppid).or_default().push(p.pid);
        }
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            if let Some(kids) = children.get(&out[i]) {
                for k in kids {
                    // A pid cannot be its own ancestor, but never loop on a torn snapshot.
                    if !out.contains(k) {
                        out.push(*k);
                    }
                }
            }
            i += 1;
        }
        out.sort_unstable();
        out
    }

    /// The long-running shim serving container `id` in `namespace`: a `containerd-shim-*`
    /// process with `-namespace <namespace>` and `-id <id>` that is not a transient
    /// `start`/`delete` invocation.
    pub fn find_shim(&self, namespace: &str, id: &str) -> Option<u32> {
        let mut found: Vec<u32> = self
            .procs
            .values()
            .filter(|p| is_shim_for(&p.cmdline, namespace, id))
            .map(|p| p.pid)
            .collect();
        found.sort_unstable();
        found.first().copied()
    }
}

fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == flag || w[0] == format!("-{flag}"))
        .map(|w| w[1].as_str())
}

/// Whether a command line is the serving shim of `namespace`/`id`.
pub fn is_shim_for(cmdline: &[String], namespace: &str, id: &str) -> bool {
    let Some(exe) = cmdline.first() else {
        return false;
    };
    let base = Path::new(exe)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let transient = matches!(
        cmdline.last().map(String::as_str),
        Some("start") | Some("delete")
    );
    base.starts_with("containerd-shim")
        && !transient
        && flag_value(cmdline, "-namespace") == Some(namespace)
        && flag_value(cmdline, "-id") == Some(id)
}

/// The summed rollup of `pids` (processes that vanished meanwhile are reported in `gone`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeMemory {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub total: Rollup,
    pub gone: Vec<u32>,
}

/// Sums the smaps_rollup of `root`'s process tree.
pub fn tree_memory(proc_root: &Path, table: &ProcTable, root: u32) -> TreeMemory {
    let mut out = TreeMemory::default();
    for pid in table.tree(root) {
        match read_rollup(proc_root, pid) {
            Ok(r) => {
                out.total = out.total + r;
                out.pids.push(pid);
                out.comms.push(
                    table
                        .procs
                        .get(&pid)
                        .map(ProcInfo::name)
                        .unwrap_or_default(),
                );
            }
            Err(_) => out.gone.push(pid),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c8a6f000-7ffc2b3f7000 ---p 00000000 00:00 0                          [rollup]
Rss:               12148 kB
Pss:                8125 kB
Pss_Dirty:          6020 kB
Pss_Anon:           5980 kB
Pss_File:           2105 kB
Pss_Shmem:            40 kB
Shared_Clean:       4412 kB
Shared_Dirty:          0 kB
Private_Clean:      1680 kB
Private_Dirty:      6056 kB
Referenced:        12148 kB
Anonymous:          6056 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
Swap:                  0 kB
SwapPss:              12 kB
Locked:                0 kB
";

    #[test]
    fn parses_a_smaps_rollup_sample() {
        let r = parse_smaps_rollup(SAMPLE, "sample").unwrap();
        assert_eq!(
            r,
            Rollup {
                rss_kib: 12148,
                pss_kib: 8125,
                pss_anon_kib: 5980,
                pss_file_kib: 2105,
                pss_shmem_kib: 40,
                swap_pss_kib: 12,
            }
        );
        // Pss_Dirty must not be taken for Pss.
        assert_ne!(r.pss_kib, 6020);
    }

    #[test]
    fn old_kernels_without_split_fields_still_parse() {
        let r = parse_smaps_rollup("Rss: 10 kB\nPss: 7 kB\n", "old").unwrap();
        assert_eq!((r.rss_kib, r.pss_kib, r.pss_anon_kib), (10, 7, 0));
    }

    #[test]
    fn rejects_text_without_pss_or_with_garbage() {
        let e = parse_smaps_rollup("Rss: 10 kB\n", "f").unwrap_err();
        assert!(e.to_string().contains("Pss"), "{e}");
        let e = parse_smaps_rollup("Pss: lots kB\n", "f").unwrap_err();
        assert!(matches!(e, ProcMemError::BadLine { .. }), "{e}");
        let e = parse_smaps_rollup("Pss: 5 MB\n", "f").unwrap_err();
        assert!(matches!(e, ProcMemError::BadLine { .. }), "{e}");
    }

    #[test]
    fn reads_our_own_rollup() {
        let r = read_rollup(Path::new("/proc"), std::process::id()).unwrap();
        assert!(r.pss_kib > 0 && r.rss_kib >= r.pss_kib, "{r:?}");
    }

    #[test]
    fn stat_comm_with_spaces_and_parens() {
        let (comm, ppid) =
            parse_stat("4242 (we (ird) name) S 17 4242 4242 0 -1 4194560", "x").unwrap();
        assert_eq!(comm, "we (ird) name");
        assert_eq!(ppid, 17);
        assert!(parse_stat("4242 (x S", "x").is_err());
        assert!(parse_stat("4242 (x) S notanumber", "x").is_err());
    }

    #[test]
    fn tree_finds_a_real_child_and_grandchild() {
        use std::os::unix::process::CommandExt;
        // sh -> sleep: both must be in our tree.
        // Own process group, so the test can end both processes it started.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let me = std::process::id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut ok = false;
        while std::time::Instant::now() < deadline {
            let table = ProcTable::scan(Path::new("/proc")).unwrap();
            let tree = table.tree(me);
            let has_sleep = tree
                .iter()
                .any(|p| table.procs[p].comm == "sleep" && table.procs[p].ppid == child.id());
            if tree.contains(&child.id()) && has_sleep {
                let mem = tree_memory(Path::new("/proc"), &table, child.id());
                assert_eq!(mem.pids.len() + mem.gone.len(), 2, "{mem:?}");
                assert!(mem.total.pss_kib > 0);
                ok = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "sh and its sleep child not found under pid {me}");
        assert!(ProcTable::default().tree(1).is_empty());
    }

    #[test]
    fn recognises_the_serving_shim_only() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let serving = v("/usr/bin/containerd-shim-runc-v2 -namespace ns -id c1 -address /x.sock");
        assert!(is_shim_for(&serving, "ns", "c1"));
        assert!(!is_shim_for(&serving, "ns", "c2"));
        assert!(!is_shim_for(&serving, "other", "c1"));
        let vessel =
            v("/t/containerd-shim-vessel-v2 -namespace ns -id c1 -address /a -socket unix:///s");
        assert!(is_shim_for(&vessel, "ns", "c1"));
        let start =
            v("containerd-shim-runc-v2 -namespace ns -address /a -publish-binary /c -id c1 start");
        assert!(!is_shim_for(&start, "ns", "c1"));
        let not_shim = v("ctr -namespace ns -id c1");
        assert!(!is_shim_for(&not_shim, "ns", "c1"));
        assert!(!is_shim_for(&[], "ns", "c1"));
    }
}
