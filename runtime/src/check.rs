//! `vessel check`: can this host run vessel, and if not, why not.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Works, with a caveat worth knowing.
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
}

/// The whole report.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// True when nothing failed (warnings allowed).
    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| i.outcome != Outcome::Fail)
    }

    fn push(&mut self, name: &'static str, outcome: Outcome, detail: impl Into<String>) {
        self.items.push(CheckItem {
            name,
            outcome,
            detail: detail.into(),
        });
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in &self.items {
            let tag = match i.outcome {
                Outcome::Pass => "ok  ",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
            };
            writeln!(f, "[{tag}] {:<12} {}", i.name, i.detail)?;
        }
        write!(
            f,
            "{}",
            if self.ok() {
                "this host can run vessel"
            } else {
                "this host cannot run vessel (see FAIL lines)"
            }
        )
    }
}

/// What the host looks like; gathered by [`HostFacts::probe`], separate so the verdicts can be
/// tested on made-up hosts.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub kvm_exists: bool,
    /// Ok(api version) or the error opening /dev/kvm / asking its version.
    pub kvm_api: Option<Result<i32, String>>,
    pub kvm_pvm_module: bool,
    pub pvm_native: Option<bool>,
    pub cpu_vmx: bool,
    pub cpu_svm: bool,
    /// (path, found) for vmm, kernel, initrd.
    pub files: Vec<(&'static str, PathBuf, bool)>,
    pub containerd: Option<PathBuf>,
    pub cgroups: CgroupMode,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CgroupMode {
    #[default]
    Unknown,
    V1,
    Hybrid,
    V2,
}

impl HostFacts {
    /// Looks at the real host.
    pub fn probe(config: &Config) -> HostFacts {
        let kvm = Path::new("/dev/kvm");
        let kvm_exists = kvm.exists();
        let kvm_api = kvm_exists.then(|| {
            kvm_ioctls::Kvm::new()
                .map(|k| k.get_api_version())
                .map_err(|e| vessel_protocol::errors::chain(&e))
        });
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        let pvm_native = std::fs::read_to_string("/sys/module/kvm_pvm/parameters/pvm_native")
            .ok()
            .map(|s| s.trim() == "Y");
        let h = &config.hypervisor;
        HostFacts {
            kvm_exists,
            kvm_api,
            kvm_pvm_module: Path::new("/sys/module/kvm_pvm").exists(),
            pvm_native,
            cpu_vmx: flags.contains(&"vmx"),
            cpu_svm: flags.contains(&"svm"),
            files: vec![
                ("vmm", h.path.clone(), h.path.is_file()),
                ("kernel", h.kernel.clone(), h.kernel.is_file()),
                ("initrd", h.initrd.clone(), h.initrd.is_file()),
            ],
            containerd: find_in_path("containerd"),
            cgroups: cgroup_mode(),
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn cgroup_mode() -> CgroupMode {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
    match statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => CgroupMode::V2,
        Ok(_) => match statfs("/sys/fs/cgroup/unified") {
            Ok(u) if u.filesystem_type() == CGROUP2_SUPER_MAGIC => CgroupMode::Hybrid,
            _ => CgroupMode::V1,
        },
        Err(_) => CgroupMode::Unknown,
    }
}

/// Judges the facts.
pub fn evaluate(facts: &HostFacts) -> CheckReport {
    let mut r = CheckReport::default();
    match (&facts.kvm_exists, &facts.kvm_api) {
        (false, _) => r.push(
            "kvm",
            Outcome::Fail,
            "/dev/kvm does not exist (no KVM module loaded?)",
        ),
        (true, Some(Ok(12))) => r.push("kvm", Outcome::Pass, "/dev/kvm opens, KVM API version 12"),
        (true, Some(Ok(v))) => r.push(
            "kvm",
            Outcome::Fail,
            format!("KVM API version {v}, expected 12"),
        ),
        (true, Some(Err(e))) => r.push("kvm", Outcome::Fail, format!("cannot open /dev/kvm: {e}")),
        (true, None) => r.push("kvm", Outcome::Fail, "/dev/kvm was not probed"),
    }
    if facts.cpu_vmx || facts.cpu_svm {
        let which = if facts.cpu_vmx { "VMX" } else { "SVM" };
        r.push(
            "virt",
            Outcome::Pass,
            format!("hardware virtualization ({which})"),
        );
    } else if facts.kvm_pvm_module {
        r.push(
            "virt",
            Outcome::Warn,
            format!(
                "KVM-PVM (no VMX/SVM; pvm_native={}): guest kernel code is emulated, boots are slow",
                match facts.pvm_native {
                    Some(true) => "Y",
                    Some(false) => "N",
                    None => "?",
                }
            ),
        );
    } else {
        r.push(
            "virt",
            Outcome::Fail,
            "neither VMX/SVM in /proc/cpuinfo nor the kvm_pvm module",
        );
    }
    for (what, path, found) in &facts.files {
        let name = match *what {
            "vmm" => "vmm",
            "kernel" => "kernel",
            _ => "initrd",
        };
        if *found {
            r.push(name, Outcome::Pass, path.display().to_string());
        } else {
            r.push(name, Outcome::Fail, format!("{} not found", path.display()));
        }
    }
    match &facts.containerd {
        Some(p) => r.push("containerd", Outcome::Pass, p.display().to_string()),
        None => r.push(
            "containerd",
            Outcome::Warn,
            "containerd not in PATH (needed only for the shim)",
        ),
    }
    let (o, d) = match facts.cgroups {
        CgroupMode::V2 => (Outcome::Pass, "cgroup v2 (unified)"),
        CgroupMode::Hybrid => (
            Outcome::Pass,
            "cgroup v1 hybrid (the guest uses cgroup v2 itself)",
        ),
        CgroupMode::V1 => (Outcome::Pass, "cgroup v1 (the guest uses cgroup v2 itself)"),
        CgroupMode::Unknown => (Outcome::Warn, "/sys/fs/cgroup not readable"),
    };
    r.push("cgroups", o, d);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HostFacts {
        HostFacts {
            kvm_exists: true,
            kvm_api: Some(Ok(12)),
            cpu_vmx: true,
            files: vec![
                ("vmm", "/v".into(), true),
                ("kernel", "/k".into(), true),
                ("initrd", "/i".into(), true),
            ],
            containerd: Some("/usr/bin/containerd".into()),
            cgroups: CgroupMode::V2,
            ..Default::default()
        }
    }

    #[test]
    fn good_host_passes() {
        let r = evaluate(&good());
        assert!(r.ok(), "{r}");
        assert!(r.to_string().ends_with("this host can run vessel"));
    }

    #[test]
    fn each_missing_piece_fails_with_reason() {
        let mut f = good();
        f.kvm_exists = false;
        let r = evaluate(&f);
        assert!(!r.ok());
        assert!(r.to_string().contains("/dev/kvm does not exist"));

        let mut f = good();
        f.kvm_api = Some(Err("Permission denied".into()));
        assert!(evaluate(&f).to_string().contains("Permission denied"));

        let mut f = good();
        f.files[1].2 = false;
        let r = evaluate(&f);
        assert!(!r.ok());
        assert!(r.to_string().contains("/k not found"), "{r}");

        let mut f = good();
        f.cpu_vmx = false;
        assert!(!evaluate(&f).ok());
    }

    #[test]
    fn pvm_is_a_warning_not_a_failure() {
        let mut f = good();
        f.cpu_vmx = false;
        f.kvm_pvm_module = true;
        f.pvm_native = Some(true);
        let r = evaluate(&f);
        assert!(r.ok(), "{r}");
        assert!(r.to_string().contains("KVM-PVM"));
    }

    #[test]
    fn probe_of_this_host_sees_kvm_pvm() {
        // This machine (see PLATFORM.md): /dev/kvm is KVM-PVM with API 12 and no VMX.
        let facts = HostFacts::probe(&Config::default());
        assert!(facts.kvm_exists, "/dev/kvm missing on this machine");
        assert_eq!(facts.kvm_api, Some(Ok(12)));
        assert!(facts.kvm_pvm_module || facts.cpu_vmx || facts.cpu_svm);
        assert_ne!(facts.cgroups, CgroupMode::Unknown);
    }
}
