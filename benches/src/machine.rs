//! Facts about the machine and the software measured; every result carries them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::exec::first_line_of;
use crate::prereq::Tools;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub date_utc: String,
    pub hostname: String,
    pub cpu_model: String,
    pub logical_cpus: usize,
    pub memory_mib: u64,
    pub host_kernel: String,
    pub kvm: String,
    pub kvm_params: BTreeMap<String, String>,
    pub load_avg_at_start: String,
    pub versions: BTreeMap<String, String>,
}

impl Machine {
    /// Looks at /proc, /sys and the tools' `--version`.
    pub fn probe(tools: &Tools) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let (kvm, kvm_params) = kvm_kind(Path::new("/sys/module"), Path::new("/dev/kvm"));
        let mut versions = BTreeMap::new();
        let mut version = |name: &str, program: Option<&Path>, args: &[&str]| {
            if let Some(p) = program {
                let v = first_line_of(&p.display().to_string(), args)
                    .unwrap_or_else(|| "unknown (no --version output)".into());
                versions.insert(name.to_string(), v);
            }
        };
        version("containerd", tools.containerd.as_deref(), &["--version"]);
        version("runc", tools.runc.as_deref(), &["--version"]);
        version("qemu", tools.qemu.as_deref(), &["--version"]);
        version("vessel-vmm", tools.vmm.as_deref(), &["--version"]);
        if let Some(commit) = git_commit() {
            versions.insert("vessel (git)".into(), commit);
        }
        for (name, path) in [("guest kernel", &tools.kernel), ("initrd", &tools.initrd)] {
            if let Some(p) = path {
                let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                versions.insert(name.into(), format!("{} ({size} bytes)", p.display()));
            }
        }
        Machine {
            date_utc: utc_rfc3339(SystemTime::now()),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            logical_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: mem_total_kib(&meminfo).unwrap_or(0) / 1024,
            host_kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            kvm,
            kvm_params,
            load_avg_at_start: load_avg(),
            versions,
        }
    }

    /// One line naming the machine and versions, for captions.
    pub fn caption(&self) -> String {
        let v = |k: &str| self.versions.get(k).map(String::as_str).unwrap_or("-");
        format!(
            "{} · {} CPUs · {} · host {} · {} · containerd {} · runc {} · {}",
            self.cpu_model,
            self.logical_cpus,
            self.kvm,
            self.host_kernel,
            self.date_utc,
            short_version(v("containerd")),
            short_version(v("runc")),
            v("vessel (git)")
        )
    }
}

/// The 1/5/15-minute load averages ("0.52 0.61 0.70"): the machine is shared.
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The version-looking word of a `--version` line ("containerd github.com/... 1.6.20~ds1 ..."
/// -> "1.6.20~ds1").
pub fn short_version(line: &str) -> String {
    line.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .unwrap_or(line)
        .to_string()
}

pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Which KVM this is: KVM-PVM (guest kernel emulated), VMX, SVM, or none; plus the module's
/// parameters when it is PVM.
pub fn kvm_kind(sys_module: &Path, dev_kvm: &Path) -> (String, BTreeMap<String, String>) {
    let mut params = BTreeMap::new();
    if !dev_kvm.exists() {
        return ("none (no /dev/kvm)".into(), params);
    }
    if sys_module.join("kvm_pvm").exists() {
        if let Ok(entries) = std::fs::read_dir(sys_module.join("kvm_pvm/parameters")) {
            for e in entries.flatten() {
                if let Ok(v) = std::fs::read_to_string(e.path()) {
                    params.insert(
                        e.file_name().to_string_lossy().into_owned(),
                        v.trim().into(),
                    );
                }
            }
        }
        let native = params.get("pvm_native").map(String::as_str) == Some("Y");
        let kind = if native {
            "KVM-PVM (native mode: guest kernel code emulated)"
        } else {
            "KVM-PVM"
        };
        return (kind.into(), params);
    }
    let kind = if sys_module.join("kvm_intel").exists() {
        "KVM (Intel VMX)"
    } else if sys_module.join("kvm_amd").exists() {
        "KVM (AMD SVM)"
    } else {
        "KVM (unknown backend)"
    };
    (kind.into(), params)
}

fn git_commit() -> Option<String> {
    // The workspace this binary was built from.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let dir = dir.display().to_string();
    let commit = first_line_of("git", &["-C", &dir, "rev-parse", "--short=12", "HEAD"])?;
    if commit.contains(' ') {
        return None; // an error message, not a commit
    }
    let dirty = first_line_of(
        "git",
        &["-C", &dir, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_some();
    Some(if dirty {
        format!("{commit} (+uncommitted changes)")
    } else {
        commit
    })
}

/// `2024-05-01T12:00:00Z` for `t` (UTC; no time-zone database needed).
pub fn utc_rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let at = |s| utc_rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn cpu_and_memory_lines() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("nothing"), None);
        assert_eq!(
            mem_total_kib("MemTotal:       24609836 kB\n"),
            Some(24_609_836)
        );
    }

    #[test]
    fn versions_shorten() {
        assert_eq!(
            short_version("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1"),
            "1.6.20~ds1"
        );
        assert_eq!(short_version("runc version 1.1.5+ds1"), "1.1.5+ds1");
        assert_eq!(
            short_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"),
            "7.2.22"
        );
        assert_eq!(short_version("odd"), "odd");
    }

    #[test]
    fn kvm_kinds() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("kvm");
        let sys = d.path().join("module");
        assert!(kvm_kind(&sys, &dev).0.starts_with("none"));
        std::fs::write(&dev, "").unwrap();
        std::fs::create_dir_all(sys.join("kvm_amd")).unwrap();
        assert_eq!(kvm_kind(&sys, &dev).0, "KVM (AMD SVM)");
        std::fs::create_dir_all(sys.join("kvm_pvm/parameters")).unwrap();
        std::fs::write(sys.join("kvm_pvm/parameters/pvm_native"), "Y\n").unwrap();
        let (kind, params) = kvm_kind(&sys, &dev);
        assert!(kind.starts_with("KVM-PVM (native"), "{kind}");
        assert_eq!(params.get("pvm_native").map(String::as_str), Some("Y"));
    }
}
