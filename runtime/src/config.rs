//! Runtime configuration: a TOML file (`/etc/vessel/config.toml`, or the file named by
//! `VESSEL_CONFIG`) over built-in defaults (`config/default.toml`, embedded at build time).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vessel_protocol::log_format::LogFormat;

/// The built-in configuration, also installed as the documented example.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");
/// Where the configuration is looked up when `VESSEL_CONFIG` is not set.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/vessel/config.toml";
/// Environment variable naming a configuration file to use instead of the system one.
pub const CONFIG_ENV: &str = "VESSEL_CONFIG";

const MIN_MEMORY_MIB: u32 = 32;
const MAX_MEMORY_MIB: u32 = 1 << 20;
const MAX_VCPUS: u32 = 254;
const MAX_KERNEL_PARAMS_LEN: usize = 2048;
/// The pod annotations `hypervisor.enable_annotations` may name (`crate::sizing`).
const SIZE_ANNOTATION_KEYS: [&str; 2] = ["memory_mib", "vcpus"];
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// A loaded configuration, or why it could not be loaded (shared by every request that
/// needs it, so both sides are reference-counted).
pub type LoadedConfig = Result<std::sync::Arc<Config>, std::sync::Arc<ConfigError>>;

/// Why a configuration could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config {origin}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("config {origin}: {key} = {value}: {reason}")]
    Invalid {
        origin: String,
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// The VMM and the guest it boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HypervisorConfig {
    /// "vmm" (a VM per pod), or "host-agent": the agent binary run directly on the host with
    /// no VM and no isolation, to test the runtime and shim where no guest can boot.
    pub backend: String,
    pub path: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The VM's base size: what a pod gets with no resources stated, and what the pod's
    /// resources are added to (see `crate::sizing`).
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Bounds on a pod's VM size.
    pub min_memory_mib: u32,
    pub max_memory_mib: u32,
    pub max_vcpus: u32,
    /// Which `io.vessel.config.hypervisor.<key>` pod annotations may override the size
    /// (`memory_mib`, `vcpus`); none by default.
    pub enable_annotations: Vec<String>,
    pub kernel_params: String,
    pub seccomp: bool,
    /// Run each VMM in its jail (`vessel-vmm --jail`: own pid/mount/ipc/uts/net namespaces,
    /// only the paths it needs, virtio-fs capabilities only, no_new_privs).
    pub jail: bool,
    /// The agent binary for the "host-agent" backend.
    pub agent_path: PathBuf,
}

impl Default for HypervisorConfig {
    fn default() -> Self {
        Self {
            backend: "vmm".to_string(),
            path: PathBuf::from("/usr/local/bin/vessel-vmm"),
            kernel: PathBuf::from("/usr/local/share/vessel/vmlinux"),
            initrd: PathBuf::from("/usr/local/share/vessel/initrd.cpio"),
            memory_mib: 128,
            vcpus: 1,
            min_memory_mib: 64,
            max_memory_mib: 2048,
            max_vcpus: 4,
            enable_annotations: Vec::new(),
            kernel_params: String::new(),
            seccomp: true,
            jail: true,
            agent_path: PathBuf::from("/usr/local/bin/vessel-agent"),
        }
    }
}

/// `runtime.pod_sandbox`: the agent's own pause.
pub const POD_SANDBOX_BUILTIN: &str = "builtin";
/// `runtime.pod_sandbox`: the pause image's program in a full container.
pub const POD_SANDBOX_IMAGE: &str = "image";

/// Host-side runtime behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub state_root: PathBuf,
    pub agent_timeout_secs: u64,
    pub shutdown_timeout_secs: u64,
    pub log_level: String,
    /// How the shim and the VMM write their log lines: `text` (the default) or `json` (one
    /// object per line; `vessel_protocol::log_format`).
    pub log_format: String,
    /// The guest's console log (`<state>/console.log`, on a tmpfs: host memory) is cut back
    /// to empty when it would grow past this.
    pub console_log_max_bytes: u64,
    /// A CRI pod's sandbox container: `builtin` (the agent's own pause, the default) or
    /// `image` (the pause image's program in a full container).
    pub pod_sandbox: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            state_root: PathBuf::from("/run/vessel"),
            agent_timeout_secs: 600,
            shutdown_timeout_secs: 10,
            log_level: "info".to_string(),
            log_format: "text".to_string(),
            console_log_max_bytes: 1 << 20,
            pod_sandbox: POD_SANDBOX_BUILTIN.to_string(),
        }
    }
}

/// Starting pods from a snapshot of a booted VM (see `crate::snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Restore each pod's VM from a snapshot instead of booting it (the snapshot is made on
    /// first use, or with `vessel snapshot create`).
    pub enabled: bool,
    /// Snapshots, one directory per key (a hash of what goes into the VM).
    pub dir: PathBuf,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("/var/cache/vessel/snapshots"),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub runtime: RuntimeConfig,
    pub snapshot: SnapshotConfig,
}

impl Config {
    /// Parses and validates TOML text; `origin` names it in errors (a path or "built-in").
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads and validates the file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// The configuration in effect: `explicit` if given, else `$VESSEL_CONFIG`, else
    /// `/etc/vessel/config.toml` if it exists, else the built-in defaults. Returns where it came
    /// from too. A named file that does not exist is an error, not a silent fallback.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, String), ConfigError> {
        let env = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
        Self::load_from(
            explicit,
            env.as_deref().map(Path::new),
            Path::new(SYSTEM_CONFIG_PATH),
        )
    }

    fn load_from(
        explicit: Option<&Path>,
        env: Option<&Path>,
        system: &Path,
    ) -> Result<(Config, String), ConfigError> {
        if let Some(path) = explicit.or(env) {
            return Ok((Config::from_file(path)?, path.display().to_string()));
        }
        if system.exists() {
            return Ok((Config::from_file(system)?, system.display().to_string()));
        }
        Ok((
            Config::from_toml(DEFAULT_CONFIG_TOML, "built-in")?,
            "built-in".to_string(),
        ))
    }

    /// Checks values that parse but cannot work. Whether the files exist is checked when a
    /// sandbox starts (and by `vessel check`), so a config can be written before installing.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, reason: &'static str| {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                key,
                value,
                reason,
            })
        };
        let h = &self.hypervisor;
        for (key, path) in [
            ("hypervisor.path", &h.path),
            ("hypervisor.kernel", &h.kernel),
            ("hypervisor.initrd", &h.initrd),
            ("runtime.state_root", &self.runtime.state_root),
            ("snapshot.dir", &self.snapshot.dir),
            ("hypervisor.agent_path", &h.agent_path),
        ] {
            if !path.is_absolute() {
                return invalid(key, path.display().to_string(), "must be an absolute path");
            }
        }
        if h.backend != "vmm" && h.backend != "host-agent" {
            return invalid(
                "hypervisor.backend",
                h.backend.clone(),
                "must be \"vmm\" or \"host-agent\"",
            );
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&h.memory_mib) {
            return invalid(
                "hypervisor.memory_mib",
                h.memory_mib.to_string(),
                "must be between 32 and 1048576",
            );
        }
        if !(1..=MAX_VCPUS).contains(&h.vcpus) {
            return invalid(
                "hypervisor.vcpus",
                h.vcpus.to_string(),
                "must be between 1 and 254",
            );
        }
        if !(MIN_MEMORY_MIB..=h.memory_mib).contains(&h.min_memory_mib) {
            return invalid(
                "hypervisor.min_memory_mib",
                h.min_memory_mib.to_string(),
                "must be between 32 and hypervisor.memory_mib",
            );
        }
        if !(h.memory_mib..=MAX_MEMORY_MIB).contains(&h.max_memory_mib) {
            return invalid(
                "hypervisor.max_memory_mib",
                h.max_memory_mib.to_string(),
                "must be between hypervisor.memory_mib and 1048576",
            );
        }
        if !(h.vcpus..=MAX_VCPUS).contains(&h.max_vcpus) {
            return invalid(
                "hypervisor.max_vcpus",
                h.max_vcpus.to_string(),
                "must be between hypervisor.vcpus and 254",
            );
        }
        if let Some(bad) = h
            .enable_annotations
            .iter()
            .find(|a| !SIZE_ANNOTATION_KEYS.contains(&a.as_str()))
        {
            return invalid(
                "hypervisor.enable_annotations",
                bad.clone(),
                "only \"memory_mib\" and \"vcpus\" can be enabled",
            );
        }
        if h.kernel_params.len() > MAX_KERNEL_PARAMS_LEN
            || h.kernel_params.chars().any(|c| c == '\0' || c == '\n')
        {
            return invalid(
                "hypervisor.kernel_params",
                format!("{:?}", h.kernel_params),
                "must be one line of at most 2048 bytes",
            );
        }
        let r = &self.runtime;
        if r.agent_timeout_secs == 0 {
            return invalid("runtime.agent_timeout_secs", "0".into(), "must be > 0");
        }
        if r.console_log_max_bytes < 4096 {
            return invalid(
                "runtime.console_log_max_bytes",
                r.console_log_max_bytes.to_string(),
                "must be at least 4096",
            );
        }
        if r.shutdown_timeout_secs == 0 {
            return invalid("runtime.shutdown_timeout_secs", "0".into(), "must be > 0");
        }
        if !LOG_LEVELS.contains(&r.log_level.as_str()) {
            return invalid(
                "runtime.log_level",
                r.log_level.clone(),
                "must be one of error, warn, info, debug, trace",
            );
        }
        if r.log_format.parse::<LogFormat>().is_err() {
            return invalid(
                "runtime.log_format",
                r.log_format.clone(),
                "must be one of text, json",
            );
        }
        if ![POD_SANDBOX_BUILTIN, POD_SANDBOX_IMAGE].contains(&r.pod_sandbox.as_str()) {
            return invalid(
                "runtime.pod_sandbox",
                r.pod_sandbox.clone(),
                "must be one of builtin, image",
            );
        }
        Ok(())
    }

    /// Whether a CRI pod's sandbox container runs the agent's built-in pause.
    pub fn builtin_pause(&self) -> bool {
        self.runtime.pod_sandbox == POD_SANDBOX_BUILTIN
    }

    pub fn agent_timeout(&self) -> Duration {
        Duration::from_secs(self.runtime.agent_timeout_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.runtime.shutdown_timeout_secs)
    }

    /// The log line format named by `runtime.log_format` (validated).
    pub fn log_format(&self) -> LogFormat {
        self.runtime.log_format.parse().unwrap_or_default()
    }

    /// The `log` level filter named by `runtime.log_level` (validated).
    pub fn log_level(&self) -> log::LevelFilter {
        self.runtime
            .log_level
            .parse()
            .unwrap_or(log::LevelFilter::Info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_matches_code_defaults() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML, "built-in").unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(parsed.agent_timeout(), Duration::from_secs(600));
        assert_eq!(parsed.hypervisor.memory_mib, 128);
        assert_eq!(parsed.runtime.state_root, PathBuf::from("/run/vessel"));
    }

    #[test]
    fn snapshot_section() {
        let c = Config::default();
        assert!(c.snapshot.enabled);
        assert_eq!(c.snapshot.dir, PathBuf::from("/var/cache/vessel/snapshots"));
        let c = Config::from_toml("[snapshot]\nenabled = false\n", "t").unwrap();
        assert!(!c.snapshot.enabled);
        assert_eq!(c.snapshot.dir, SnapshotConfig::default().dir);
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::from_toml("[hypervisor]\nmemory_mib = 256\n", "t").unwrap();
        assert_eq!(c.hypervisor.memory_mib, 256);
        assert_eq!(c.hypervisor.vcpus, 1);
        assert_eq!(c.runtime, RuntimeConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::from_toml("[hypervisor]\nmemory = 256\n", "t").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        let text = vessel_protocol::errors::chain(&err);
        assert!(text.contains("unknown field `memory`"), "{text}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[hypervisor]\nmemory_mib = 1\n", "hypervisor.memory_mib"),
            ("[hypervisor]\nvcpus = 0\n", "hypervisor.vcpus"),
            ("[hypervisor]\nkernel = \"vmlinux\"\n", "hypervisor.kernel"),
            (
                "[hypervisor]\nkernel_params = \"a\\nb\"\n",
                "hypervisor.kernel_params",
            ),
            (
                "[runtime]\nagent_timeout_secs = 0\n",
                "runtime.agent_timeout_secs",
            ),
            ("[runtime]\nlog_level = \"loud\"\n", "runtime.log_level"),
            ("[runtime]\nlog_format = \"yaml\"\n", "runtime.log_format"),
            ("[runtime]\npod_sandbox = \"none\"\n", "runtime.pod_sandbox"),
            ("[runtime]\nstate_root = \"run\"\n", "runtime.state_root"),
            ("[snapshot]\ndir = \"snaps\"\n", "snapshot.dir"),
            ("[hypervisor]\nbackend = \"qemu\"\n", "hypervisor.backend"),
            (
                "[hypervisor]\nmax_memory_mib = 64\n",
                "hypervisor.max_memory_mib",
            ),
            (
                "[hypervisor]\nmin_memory_mib = 512\n",
                "hypervisor.min_memory_mib",
            ),
            (
                "[hypervisor]\nvcpus = 2\nmax_vcpus = 1\n",
                "hypervisor.max_vcpus",
            ),
            (
                "[hypervisor]\nenable_annotations = [\"kernel\"]\n",
                "hypervisor.enable_annotations",
            ),
        ] {
            match Config::from_toml(text, "t") {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: expected Invalid({key}), got {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_type_is_a_parse_error() {
        let err = Config::from_toml("[hypervisor]\nvcpus = \"two\"\n", "x.toml").unwrap_err();
        assert!(err.to_string().contains("x.toml"), "{err}");
    }

    #[test]
    fn load_order_explicit_env_system_builtin() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        let sys = dir.path().join("sys.toml");
        std::fs::write(&a, "[hypervisor]\nvcpus = 2\n").unwrap();
        std::fs::write(&b, "[hypervisor]\nvcpus = 3\n").unwrap();
        let (c, from) = Config::load_from(Some(&a), Some(&b), &sys).unwrap();
        assert_eq!((c.hypervisor.vcpus, from), (2, a.display().to_string()));
        let (c, _) = Config::load_from(None, Some(&b), &sys).unwrap();
        assert_eq!(c.hypervisor.vcpus, 3);
        let (c, from) = Config::load_from(None, None, &sys).unwrap();
        assert_eq!((c, from.as_str()), (Config::default(), "built-in"));
        std::fs::write(&sys, "[hypervisor]\nvcpus = 4\n").unwrap();
        let (c, _) = Config::load_from(None, None, &sys).unwrap();
        assert_eq!(c.hypervisor.vcpus, 4);
    }

    #[test]
    fn named_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = Config::load_from(None, Some(&missing), Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
