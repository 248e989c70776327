//! The test bed: a containerd of our own with runc and vessel, the busybox image, and the
//! vessel runtime configuration (rewritten per vessel mode; each new shim reads it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use vessel_runtime::config::{Config, DEFAULT_CONFIG_TOML};
use vessel_tests::containerd::{Containerd, NAMESPACE};

use crate::ctr::{Ctr, Runtime};
use crate::exec::run_timed;
use crate::prereq::Tools;

pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
pub const VESSEL_RUNTIME: &str = "io.containerd.vessel.v2";
pub use vessel_tests::containerd::BUSYBOX_REF as IMAGE;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("starting containerd: {0}")]
    Containerd(String),
    #[error("importing the busybox image: {0}")]
    Image(String),
    #[error("vessel runtime config: {0}")]
    Config(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vessel mode {mode}: {reason}")]
    ModeUnavailable { mode: VesselMode, reason: String },
}

/// How vessel pods start: a cold boot, or a restore from a VM snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VesselMode {
    Cold,
    Snapshot,
}

impl std::fmt::Display for VesselMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VesselMode::Cold => "cold",
            VesselMode::Snapshot => "snapshot",
        })
    }
}

/// `cold`, `snapshot` or `both`.
pub fn parse_modes(s: &str) -> Result<Vec<VesselMode>, String> {
    match s {
        "cold" => Ok(vec![VesselMode::Cold]),
        "snapshot" => Ok(vec![VesselMode::Snapshot]),
        "both" => Ok(vec![VesselMode::Cold, VesselMode::Snapshot]),
        other => Err(format!(
            "unknown vessel mode {other:?} (cold, snapshot, both)"
        )),
    }
}

/// What the vessel runtime config is made of.
#[derive(Debug, Clone)]
pub struct VesselSettings {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub state_root: PathBuf,
    pub agent_timeout_secs: u64,
}

/// The runtime configuration TOML for `mode`, validated by the runtime's own parser.
pub fn vessel_config(s: &VesselSettings, mode: VesselMode) -> Result<String, SetupError> {
    let mut c = Config::from_toml(DEFAULT_CONFIG_TOML, "built-in")
        .map_err(|e| SetupError::Config(e.to_string()))?;
    c.hypervisor.backend = "vmm".into();
    c.hypervisor.path = absolute(&s.vmm);
    c.hypervisor.kernel = absolute(&s.kernel);
    c.hypervisor.initrd = absolute(&s.initrd);
    c.hypervisor.memory_mib = s.memory_mib;
    c.hypervisor.vcpus = s.vcpus;
    c.runtime.state_root = absolute(&s.state_root);
    c.runtime.agent_timeout_secs = s.agent_timeout_secs;
    if mode == VesselMode::Snapshot {
        // Integration point for VM snapshot/restore (in progress in another branch of work):
        // once the runtime config has its `[snapshot]` section, set it here.
        return Err(SetupError::ModeUnavailable {
            mode,
            reason: "the runtime config has no [snapshot] section in this build".into(),
        });
    }
    let text = toml::to_string_pretty(&c).map_err(|e| SetupError::Config(e.to_string()))?;
    // Round trip through the runtime's parser: what the shim will read must be valid.
    Config::from_toml(&text, "generated").map_err(|e| SetupError::Config(e.to_string()))?;
    Ok(text)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether this build of vessel can do `mode` (asks the `vessel` CLI).
pub fn mode_available(mode: VesselMode, vessel_cli: Option<&Path>) -> Result<(), SetupError> {
    if mode == VesselMode::Cold {
        return Ok(());
    }
    let Some(cli) = vessel_cli else {
        return Err(SetupError::ModeUnavailable {
            mode,
            reason: "the `vessel` CLI was not found (cargo build --release -p vessel-runtime)"
                .into(),
        });
    };
    let mut cmd = std::process::Command::new(cli);
    cmd.args(["snapshot", "--help"]);
    let out = run_timed(cmd, "vessel snapshot --help", Duration::from_secs(20));
    match out {
        Ok(t) if t.success() => Err(SetupError::ModeUnavailable {
            mode,
            reason: "`vessel snapshot` exists but this harness does not set up snapshot mode yet \
                     (fill in setup::vessel_config for the [snapshot] section)"
                .into(),
        }),
        Ok(t) => Err(SetupError::ModeUnavailable {
            mode,
            reason: format!(
                "this build of vessel has no snapshot support (`{} snapshot --help`: {})",
                cli.display(),
                crate::report::one_line(&t.stderr, 200)
            ),
        }),
        Err(e) => Err(SetupError::ModeUnavailable {
            mode,
            reason: e.to_string(),
        }),
    }
}

/// containerd + image + config file.
pub struct Bed {
    pub containerd: Containerd,
    pub ctr: Ctr,
    pub vessel_config: PathBuf,
}

impl Bed {
    /// Starts containerd with the shim's dir first on PATH and `VESSEL_CONFIG` set, then
    /// imports the image. `config_text` is the initial vessel config.
    pub fn start(tools: &Tools, work: &Path, config_text: &str) -> Result<Bed, SetupError> {
        let vessel_config = work.join("vessel-config.toml");
        write(&vessel_config, config_text)?;
        let shim_dir = tools
            .shim_dir()
            .ok_or_else(|| SetupError::Containerd("the vessel shim was not found".into()))?;
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let config = vessel_config.display().to_string();
        let containerd = Containerd::start_with_env(&[
            ("PATH", path.as_str()),
            ("VESSEL_CONFIG", config.as_str()),
        ])
        .map_err(|e| SetupError::Containerd(format!("{e:#}")))?;
        containerd
            .import_busybox()
            .map_err(|e| SetupError::Image(format!("{e:#}")))?;
        let ctr = Ctr {
            address: containerd.socket(),
            namespace: NAMESPACE.to_string(),
        };
        Ok(Bed {
            containerd,
            ctr,
            vessel_config,
        })
    }

    /// Rewrites the vessel config (new shims pick it up).
    pub fn set_vessel_config(&self, text: &str) -> Result<(), SetupError> {
        write(&self.vessel_config, text)
    }

    /// The last lines of containerd's log (where shims log), for failure reports.
    pub fn log_tail(&self) -> String {
        self.containerd.log_tail()
    }
}

fn write(path: &Path, text: &str) -> Result<(), SetupError> {
    std::fs::write(path, text).map_err(|source| SetupError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The runtimes compared, vessel modes first (A/B order: vessel, then runc).
pub fn runtimes(
    modes: &[VesselMode],
    runc_timeout: Duration,
    vessel_timeout: Duration,
) -> Vec<(Runtime, Option<VesselMode>)> {
    let mut out: Vec<(Runtime, Option<VesselMode>)> = modes
        .iter()
        .map(|m| {
            (
                Runtime {
                    name: format!("vessel ({m})"),
                    runtime_type: VESSEL_RUNTIME.into(),
                    timeout: vessel_timeout,
                    tag: format!("v{}", &m.to_string()[..1]),
                },
                Some(*m),
            )
        })
        .collect();
    out.push((
        Runtime {
            name: "runc".into(),
            runtime_type: RUNC_RUNTIME.into(),
            timeout: runc_timeout,
            tag: "r".into(),
        },
        None,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> VesselSettings {
        VesselSettings {
            vmm: "/opt/v/vessel-vmm".into(),
            kernel: "/opt/v/vmlinux".into(),
            initrd: "/opt/v/initrd.cpio".into(),
            memory_mib: 256,
            vcpus: 2,
            state_root: "/tmp/vb/state".into(),
            agent_timeout_secs: 123,
        }
    }

    #[test]
    fn cold_config_is_what_the_runtime_reads() {
        let text = vessel_config(&settings(), VesselMode::Cold).unwrap();
        let c = Config::from_toml(&text, "t").unwrap();
        assert_eq!(c.hypervisor.path, PathBuf::from("/opt/v/vessel-vmm"));
        assert_eq!(c.hypervisor.kernel, PathBuf::from("/opt/v/vmlinux"));
        assert_eq!((c.hypervisor.memory_mib, c.hypervisor.vcpus), (256, 2));
        assert_eq!(c.runtime.state_root, PathBuf::from("/tmp/vb/state"));
        assert_eq!(c.runtime.agent_timeout_secs, 123);
        assert_eq!(c.hypervisor.backend, "vmm");
    }

    #[test]
    fn bad_settings_are_refused_by_the_runtime_parser() {
        let mut s = settings();
        s.memory_mib = 1;
        let e = vessel_config(&s, VesselMode::Cold).unwrap_err();
        assert!(e.to_string().contains("memory_mib"), "{e}");
    }

    #[test]
    fn snapshot_mode_is_refused_clearly_in_this_build() {
        let e = vessel_config(&settings(), VesselMode::Snapshot).unwrap_err();
        assert!(e.to_string().contains("vessel mode snapshot"), "{e}");
        let e = mode_available(VesselMode::Snapshot, None).unwrap_err();
        assert!(e.to_string().contains("`vessel` CLI was not found"), "{e}");
        assert!(mode_available(VesselMode::Cold, None).is_ok());
    }

    #[test]
    fn modes_and_runtimes() {
        assert_eq!(
            parse_modes("both").unwrap(),
            vec![VesselMode::Cold, VesselMode::Snapshot]
        );
        assert!(parse_modes("warm").is_err());
        let rts = runtimes(
            &[VesselMode::Cold],
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        let names: Vec<&str> = rts.iter().map(|(r, _)| r.name.as_str()).collect();
        assert_eq!(names, ["vessel (cold)", "runc"]);
        assert!(rts[0].0.is_vessel() && !rts[1].0.is_vessel());
    }
}
