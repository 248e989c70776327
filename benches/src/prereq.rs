//! Finding every tool and artifact a measure needs, before measuring anything.
//!
//! A missing runtime, tool or file is an error that names each missing thing, where it was
//! looked for and how to get it: the harness never measures a partial setup and prints zeros.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vessel_runtime::config::HypervisorConfig;

/// One thing that is not there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub what: String,
    pub looked: String,
    pub hint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PrereqError {
    #[error("cannot run the benchmark, missing:\n{}", list(.0))]
    Missing(Vec<Missing>),
}

fn list(items: &[Missing]) -> String {
    items
        .iter()
        .map(|m| format!("  - {} (looked: {}) -> {}", m.what, m.looked, m.hint))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which measures will run (each needs a different set of things).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// containerd with runc and the vessel shim (start, memory, density).
    pub containerd: bool,
    /// The VMM boot comparison (vessel-vmm and qemu).
    pub boot: bool,
    /// The `vessel` CLI (snapshot mode).
    pub vessel_cli: bool,
}

/// Paths given on the command line (`None`: use the default search).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub vmm: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub shim: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
}

/// Where to search: the PATH to use and the directory of our own binary (the workspace's
/// `target/<profile>`, where `cargo build` put the vessel binaries).
#[derive(Debug, Clone)]
pub struct SearchEnv {
    pub path: std::ffi::OsString,
    pub exe_dir: Option<PathBuf>,
    pub kvm_device: PathBuf,
    pub busybox: PathBuf,
    /// The runtime config's defaults (VMM, kernel, initramfs paths), looked at first.
    pub config_defaults: HypervisorConfig,
}

impl SearchEnv {
    pub fn from_process() -> SearchEnv {
        SearchEnv {
            path: std::env::var_os("PATH")
                .unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            exe_dir: std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_path_buf)),
            kvm_device: PathBuf::from("/dev/kvm"),
            busybox: PathBuf::from("/bin/busybox"),
            config_defaults: HypervisorConfig::default(),
        }
    }
}

/// Everything found (fields a measure does not need may be `None`).
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub containerd: Option<PathBuf>,
    pub ctr: Option<PathBuf>,
    pub runc: Option<PathBuf>,
    pub runc_shim: Option<PathBuf>,
    pub vessel_shim: Option<PathBuf>,
    pub vessel_cli: Option<PathBuf>,
    pub vmm: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub qemu: Option<PathBuf>,
}

impl Tools {
    /// The directory holding the vessel shim (put first on containerd's PATH).
    pub fn shim_dir(&self) -> Option<PathBuf> {
        self.vessel_shim
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The first executable `name` in the colon-separated `path`.
pub fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

struct Finder<'a> {
    env: &'a SearchEnv,
    missing: Vec<Missing>,
}

impl Finder<'_> {
    fn miss(&mut self, what: &str, looked: String, hint: &str) {
        self.missing.push(Missing {
            what: what.to_string(),
            looked,
            hint: hint.to_string(),
        });
    }

    /// A program on PATH.
    fn program(&mut self, name: &str, hint: &str) -> Option<PathBuf> {
        let found = find_on_path(name, &self.env.path);
        if found.is_none() {
            self.miss(name, "PATH".into(), hint);
        }
        found
    }

    /// An explicit path, else the candidates in order; `exec`: must be executable.
    fn file(
        &mut self,
        what: &str,
        explicit: Option<&Path>,
        candidates: &[PathBuf],
        exec: bool,
        hint: &str,
    ) -> Option<PathBuf> {
        let ok = |p: &Path| if exec { is_executable(p) } else { p.is_file() };
        if let Some(p) = explicit {
            if ok(p) {
                return Some(p.to_path_buf());
            }
            self.miss(what, p.display().to_string(), hint);
            return None;
        }
        if let Some(p) = candidates.iter().find(|p| ok(p)) {
            return Some(p.clone());
        }
        let looked = candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        self.miss(what, looked, hint);
        None
    }

    fn workspace_binary(
        &mut self,
        name: &str,
        explicit: Option<&Path>,
        hint: &str,
    ) -> Option<PathBuf> {
        let mut candidates = Vec::new();
        if let Some(d) = &self.env.exe_dir {
            candidates.push(d.join(name));
        }
        candidates.extend(std::env::split_paths(&self.env.path).map(|d| d.join(name)));
        self.file(name, explicit, &candidates, true, hint)
    }
}

/// Finds what `needs` asks for; every missing thing is reported at once.
pub fn find_tools(needs: Needs, o: &Overrides, env: &SearchEnv) -> Result<Tools, PrereqError> {
    let defaults = &env.config_defaults;
    let mut f = Finder {
        env,
        missing: Vec::new(),
    };
    let mut t = Tools::default();
    if needs.containerd || needs.boot {
        if !env.kvm_device.exists() {
            f.miss(
                "KVM",
                env.kvm_device.display().to_string(),
                "vessel needs /dev/kvm (load kvm_intel/kvm_amd/kvm_pvm)",
            );
        }
        let mut vmm_candidates = vec![defaults.path.clone()];
        if let Some(d) = &env.exe_dir {
            vmm_candidates.push(d.join("vessel-vmm"));
        }
        vmm_candidates.extend(std::env::split_paths(&env.path).map(|d| d.join("vessel-vmm")));
        t.vmm = f.file(
            "vessel-vmm",
            o.vmm.as_deref(),
            &vmm_candidates,
            true,
            "cargo build --release -p vessel-vmm; pass --vmm target/release/vessel-vmm",
        );
        t.kernel = f.file(
            "guest kernel (vmlinux)",
            o.kernel.as_deref(),
            std::slice::from_ref(&defaults.kernel),
            false,
            "bash guest-kernel/build.sh prints the path of a built vmlinux; pass --kernel PATH",
        );
        t.initrd = f.file(
            "initramfs with the agent",
            o.initrd.as_deref(),
            std::slice::from_ref(&defaults.initrd),
            false,
            "cargo run -p vessel-rootfs --bin vessel-mkinitrd -- --agent $(bash agent/build-static.sh) --out initrd.cpio; pass --initrd PATH",
        );
    }
    if needs.containerd {
        t.containerd = f.program("containerd", "apt-get install -y containerd");
        t.ctr = f.program("ctr", "apt-get install -y containerd");
        t.runc = f.program("runc", "apt-get install -y runc");
        t.runc_shim = f.program("containerd-shim-runc-v2", "apt-get install -y containerd");
        t.vessel_shim = f.workspace_binary(
            "containerd-shim-vessel-v2",
            o.shim.as_deref(),
            "cargo build --release -p containerd-shim-vessel-v2; pass --shim PATH",
        );
        if !env.busybox.is_file() {
            f.miss(
                "busybox (for the test image)",
                env.busybox.display().to_string(),
                "apt-get install -y busybox-static",
            );
        }
    }
    if needs.vessel_cli {
        t.vessel_cli = f.workspace_binary(
            "vessel",
            None,
            "cargo build --release -p vessel-runtime (the `vessel` CLI)",
        );
    }
    if needs.boot {
        let hint = "apt-get install -y qemu-system-x86";
        t.qemu = match &o.qemu {
            Some(p) => f.file("qemu-system-x86_64", Some(p), &[], true, hint),
            None => f.program("qemu-system-x86_64", hint),
        };
    }
    if f.missing.is_empty() {
        Ok(t)
    } else {
        Err(PrereqError::Missing(f.missing))
    }
}

/// The Debian packages that provide the missing things that come from Debian.
pub fn debian_packages(missing: &[Missing]) -> Vec<String> {
    let mut pkgs: Vec<String> = missing
        .iter()
        .filter_map(|m| m.hint.strip_prefix("apt-get install -y "))
        .map(str::to_string)
        .collect();
    pkgs.sort();
    pkgs.dedup();
    pkgs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn env_in(dir: &Path) -> SearchEnv {
        SearchEnv {
            path: dir.join("bin").into_os_string(),
            exe_dir: Some(dir.join("target")),
            kvm_device: dir.join("kvm"),
            busybox: dir.join("busybox"),
            // Not the real /usr/local: what `make demo` installed there must not count.
            config_defaults: HypervisorConfig {
                path: dir.join("installed/vessel-vmm"),
                kernel: dir.join("installed/vmlinux"),
                initrd: dir.join("installed/initrd.cpio"),
                ..HypervisorConfig::default()
            },
        }
    }

    #[test]
    fn everything_missing_is_listed_at_once() {
        let d = tempfile::tempdir().unwrap();
        let needs = Needs {
            containerd: true,
            boot: true,
            vessel_cli: false,
        };
        let e = find_tools(needs, &Overrides::default(), &env_in(d.path())).unwrap_err();
        let PrereqError::Missing(items) = &e;
        let names: Vec<&str> = items.iter().map(|m| m.what.as_str()).collect();
        for want in [
            "KVM",
            "vessel-vmm",
            "guest kernel (vmlinux)",
            "initramfs with the agent",
            "containerd",
            "ctr",
            "runc",
            "containerd-shim-runc-v2",
            "containerd-shim-vessel-v2",
            "qemu-system-x86_64",
        ] {
            assert!(names.contains(&want), "{want} not reported: {e}");
        }
        let text = e.to_string();
        assert!(
            text.contains("apt-get install -y qemu-system-x86"),
            "{text}"
        );
        assert!(
            text.contains("cargo build --release -p containerd-shim-vessel-v2"),
            "{text}"
        );
        assert_eq!(
            debian_packages(items),
            vec!["busybox-static", "containerd", "qemu-system-x86", "runc"]
        );
    }

    #[test]
    fn a_missing_runtime_alone_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        let target = d.path().join("target");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        for tool in [
            "containerd",
            "ctr",
            "containerd-shim-runc-v2",
            "qemu-system-x86_64",
        ] {
            exe(&bin, tool);
        }
        exe(&target, "vessel-vmm");
        exe(&target, "containerd-shim-vessel-v2");
        std::fs::write(d.path().join("kvm"), "").unwrap();
        std::fs::write(d.path().join("busybox"), "").unwrap();
        let kernel = d.path().join("vmlinux");
        let initrd = d.path().join("initrd.cpio");
        std::fs::write(&kernel, "k").unwrap();
        std::fs::write(&initrd, "i").unwrap();
        let o = Overrides {
            kernel: Some(kernel.clone()),
            initrd: Some(initrd),
            ..Overrides::default()
        };
        let needs = Needs {
            containerd: true,
            boot: true,
            vessel_cli: false,
        };
        // runc is the only thing missing.
        let e = find_tools(needs, &o, &env_in(d.path())).unwrap_err();
        let PrereqError::Missing(items) = &e;
        assert_eq!(items.len(), 1, "{e}");
        assert_eq!(items[0].what, "runc");
        // With it, everything resolves, the vessel binaries from our own dir.
        exe(&bin, "runc");
        let t = find_tools(needs, &o, &env_in(d.path())).unwrap();
        assert_eq!(t.vmm.as_deref(), Some(target.join("vessel-vmm").as_path()));
        assert_eq!(t.shim_dir().as_deref(), Some(target.as_path()));
        assert_eq!(t.kernel.as_deref(), Some(kernel.as_path()));
        // An explicit path that is not there is reported, not replaced by a default.
        let bad = Overrides {
            vmm: Some(d.path().join("nope/vessel-vmm")),
            ..o
        };
        let e = find_tools(needs, &bad, &env_in(d.path())).unwrap_err();
        assert!(e.to_string().contains("nope/vessel-vmm"), "{e}");
    }

    #[test]
    fn non_executable_files_are_not_programs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("runc"), "").unwrap();
        assert_eq!(find_on_path("runc", d.path().as_os_str()), None);
        let p = exe(d.path(), "runc");
        assert_eq!(find_on_path("runc", d.path().as_os_str()), Some(p));
    }
}
