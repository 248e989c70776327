//! The test bed: a containerd of our own with runc and vessel, the busybox image, and the
//! vessel runtime configuration (rewritten per vessel mode; each new shim reads it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use vessel_runtime::config::{Config, DEFAULT_CONFIG_TOML};
use vessel_tests::containerd::{Containerd, NAMESPACE};

use crate::ctr::{Ctr, Runtime};
use crate::exec::run_timed;
use crate::prereq::Tools;
use crate::procmem::ProcTable;

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
    #[error("writing {path}")]
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
    /// `[snapshot] dir` in snapshot mode.
    pub snapshot_dir: PathBuf,
}

/// The runtime configuration TOML for `mode`, validated by the runtime's own parser.
///
/// The `[snapshot]` section (`enabled`, `dir`) is set through the TOML value, so this builds
/// against a runtime with or without it; without it, snapshot mode is unavailable. Cold mode
/// turns snapshots off explicitly (the runtime's default is on).
pub fn vessel_config(s: &VesselSettings, mode: VesselMode) -> Result<String, SetupError> {
    let cfg_err = |e: &dyn std::fmt::Display| SetupError::Config(e.to_string());
    let mut c = Config::from_toml(DEFAULT_CONFIG_TOML, "built-in").map_err(|e| cfg_err(&e))?;
    c.hypervisor.backend = "vmm".into();
    c.hypervisor.path = absolute(&s.vmm);
    c.hypervisor.kernel = absolute(&s.kernel);
    c.hypervisor.initrd = absolute(&s.initrd);
    c.hypervisor.memory_mib = s.memory_mib;
    c.hypervisor.vcpus = s.vcpus;
    c.runtime.state_root = absolute(&s.state_root);
    c.runtime.agent_timeout_secs = s.agent_timeout_secs;
    // A debugging knob, not a measured setting: e.g. `vessel.log=debug` puts the agent's
    // step times on each pod's console (which changes the timings it shows a little).
    if let Some(params) = std::env::var_os("VESSEL_BENCH_KERNEL_PARAMS") {
        c.hypervisor.kernel_params = params.to_string_lossy().into_owned();
    }
    let mut value = toml::Value::try_from(&c).map_err(|e| cfg_err(&e))?;
    let snapshot = value
        .as_table_mut()
        .and_then(|t| t.get_mut("snapshot"))
        .and_then(toml::Value::as_table_mut);
    match (snapshot, mode) {
        (Some(t), VesselMode::Snapshot) => {
            t.insert("enabled".into(), toml::Value::Boolean(true));
            let dir = absolute(&s.snapshot_dir).display().to_string();
            t.insert("dir".into(), toml::Value::String(dir));
        }
        (Some(t), VesselMode::Cold) => {
            t.insert("enabled".into(), toml::Value::Boolean(false));
        }
        (None, VesselMode::Snapshot) => {
            return Err(SetupError::ModeUnavailable {
                mode,
                reason: "the runtime config has no [snapshot] section in this build".into(),
            })
        }
        (None, VesselMode::Cold) => {}
    }
    let text = toml::to_string_pretty(&value).map_err(|e| cfg_err(&e))?;
    // Round trip through the runtime's parser: what the shim will read must be valid.
    Config::from_toml(&text, "generated").map_err(|e| cfg_err(&e))?;
    Ok(text)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Whether this build of vessel can do `mode`: the runtime has a `[snapshot]` section and
/// the `vessel` CLI (which makes snapshots) is there.
pub fn mode_available(mode: VesselMode, vessel_cli: Option<&Path>) -> Result<(), SetupError> {
    if mode == VesselMode::Cold {
        return Ok(());
    }
    let has_section = DEFAULT_CONFIG_TOML
        .parse::<toml::Table>()
        .map(|t| t.contains_key("snapshot"))
        .unwrap_or(false);
    let reason = if !has_section {
        "this build of vessel-runtime has no [snapshot] config section"
    } else if vessel_cli.is_none() {
        "the `vessel` CLI was not found (cargo build --release -p vessel-runtime)"
    } else {
        return Ok(());
    };
    Err(SetupError::ModeUnavailable {
        mode,
        reason: reason.into(),
    })
}

/// Makes the snapshot pods will restore from (`vessel --config CFG snapshot create`), so
/// that no measured pod pays for it; returns how long it took.
pub fn create_snapshot(
    vessel_cli: &Path,
    config: &Path,
    timeout: Duration,
) -> Result<Duration, SetupError> {
    let mut cmd = std::process::Command::new(vessel_cli);
    cmd.arg("--config").arg(config).args(["snapshot", "create"]);
    let fail = |reason: String| SetupError::ModeUnavailable {
        mode: VesselMode::Snapshot,
        reason,
    };
    let t = run_timed(cmd, "vessel snapshot create", timeout)
        .map_err(|e| fail(e.to_string()))?
        .check("vessel snapshot create")
        .map_err(|e| fail(e.to_string()))?;
    log::info!("snapshot: {}", t.stdout.trim());
    Ok(t.elapsed)
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

    /// After the measures: waits up to `grace` for this containerd's shims and the VMMs of
    /// `state_root` to exit, SIGKILLs what is left (all started under this bed), then has
    /// `vessel cleanup` release every sandbox left in `state_root`. Shims outlive containerd by
    /// design, so a step killed at its deadline could otherwise leave a shim and its VM
    /// running. Returns what had to be done (each one a problem worth reporting).
    pub fn reap(
        &self,
        state_root: &Path,
        vessel_cli: Option<&Path>,
        grace: Duration,
    ) -> Vec<String> {
        let socket = self.containerd.socket().display().to_string();
        let root = format!("{}/", state_root.display());
        let ours = |p: &crate::procmem::ProcInfo| {
            let shim = p.name().starts_with("containerd-shim") && p.cmdline.contains(&socket);
            let vmm = p.cmdline.iter().any(|a| a.starts_with(&root));
            shim || vmm
        };
        let find = || -> Vec<(u32, String)> {
            ProcTable::scan(Path::new("/proc"))
                .map(|t| {
                    t.procs
                        .values()
                        .filter(|p| ours(p))
                        .map(|p| (p.pid, p.cmdline.join(" ")))
                        .collect()
                })
                .unwrap_or_default()
        };
        let deadline = std::time::Instant::now() + grace;
        let mut left = find();
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            left = find();
        }
        let mut done = Vec::new();
        for (pid, cmd) in left {
            let r = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            // A killed shim leaves its socket (`-socket unix:///run/containerd/s/<hash>`).
            let words: Vec<&str> = cmd.split(' ').collect();
            if let Some(sock) = words
                .windows(2)
                .find(|w| w[0] == "-socket")
                .and_then(|w| w[1].strip_prefix("unix://"))
            {
                let _ = std::fs::remove_file(sock);
            }
            done.push(format!(
                "leftover process {pid} killed ({}): {}",
                r.map_or_else(|e| e.to_string(), |_| "ok".into()),
                crate::report::one_line(&cmd, 200)
            ));
        }
        let sandboxes: Vec<String> = std::fs::read_dir(state_root)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if !sandboxes.is_empty() {
            let what = format!("vessel cleanup {}", sandboxes.join(" "));
            match vessel_cli {
                Some(cli) => {
                    let mut cmd = std::process::Command::new(cli);
                    cmd.arg("--config")
                        .arg(&self.vessel_config)
                        .arg("cleanup")
                        .args(&sandboxes);
                    let r = run_timed(cmd, &what, Duration::from_secs(120))
                        .map_err(|e| e.to_string())
                        .and_then(|t| t.check(&what).map_err(|e| e.to_string()));
                    done.push(match r {
                        Ok(_) => format!("{what}: done"),
                        Err(e) => e,
                    });
                }
                None => done.push(format!(
                    "sandboxes left in {} and no `vessel` CLI to clean them: {}",
                    state_root.display(),
                    sandboxes.join(" ")
                )),
            }
        }
        done
    }
}

fn write(path: &Path, text: &str) -> Result<(), SetupError> {
    std::fs::write(path, text).map_err(|source| SetupError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// How each kind of runtime is run: a bound per operation, and start-latency runs.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub timeout: Duration,
    pub runs: usize,
    pub warmup: usize,
}

/// The runtimes compared, vessel modes first (A/B order: vessel, then runc).
pub fn runtimes(
    modes: &[VesselMode],
    runc: Schedule,
    vessel: Schedule,
) -> Vec<(Runtime, Option<VesselMode>)> {
    let mut out: Vec<(Runtime, Option<VesselMode>)> = modes
        .iter()
        .map(|m| {
            (
                Runtime {
                    name: format!("vessel ({m})"),
                    runtime_type: VESSEL_RUNTIME.into(),
                    timeout: vessel.timeout,
                    tag: format!("v{}", &m.to_string()[..1]),
                    runs: vessel.runs,
                    warmup: vessel.warmup,
                },
                Some(*m),
            )
        })
        .collect();
    out.push((
        Runtime {
            name: "runc".into(),
            runtime_type: RUNC_RUNTIME.into(),
            timeout: runc.timeout,
            tag: "r".into(),
            runs: runc.runs,
            warmup: runc.warmup,
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
            snapshot_dir: "/tmp/vb/snapshots".into(),
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
    fn snapshot_section_follows_the_mode() {
        let has_section = DEFAULT_CONFIG_TOML
            .parse::<toml::Table>()
            .unwrap()
            .contains_key("snapshot");
        let cold: toml::Table = vessel_config(&settings(), VesselMode::Cold)
            .unwrap()
            .parse()
            .unwrap();
        let snap = vessel_config(&settings(), VesselMode::Snapshot);
        if has_section {
            // Cold must switch snapshots off (the runtime's default is on).
            assert_eq!(cold["snapshot"]["enabled"].as_bool(), Some(false));
            let snap: toml::Table = snap.unwrap().parse().unwrap();
            assert_eq!(snap["snapshot"]["enabled"].as_bool(), Some(true));
            assert_eq!(snap["snapshot"]["dir"].as_str(), Some("/tmp/vb/snapshots"));
            assert!(mode_available(VesselMode::Snapshot, Some(Path::new("/x/vessel"))).is_ok());
        } else {
            assert!(!cold.contains_key("snapshot"));
            let e = snap.unwrap_err();
            assert!(e.to_string().contains("vessel mode snapshot"), "{e}");
        }
        let e = mode_available(VesselMode::Snapshot, None).unwrap_err();
        assert!(e.to_string().contains("vessel mode snapshot"), "{e}");
        assert!(mode_available(VesselMode::Cold, None).is_ok());
    }

    #[test]
    fn modes_and_runtimes() {
        assert_eq!(
            parse_modes("both").unwrap(),
            vec![VesselMode::Cold, VesselMode::Snapshot]
        );
        assert!(parse_modes("warm").is_err());
        let sched = |s, runs| Schedule {
            timeout: Duration::from_secs(s),
            runs,
            warmup: 1,
        };
        let rts = runtimes(&[VesselMode::Cold], sched(1, 20), sched(2, 3));
        assert_eq!((rts[0].0.runs, rts[1].0.runs), (3, 20));
        let names: Vec<&str> = rts.iter().map(|(r, _)| r.name.as_str()).collect();
        assert_eq!(names, ["vessel (cold)", "runc"]);
        assert!(rts[0].0.is_vessel() && !rts[1].0.is_vessel());
    }
}
