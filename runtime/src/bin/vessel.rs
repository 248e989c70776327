//! `vessel`: host-side tool over the vessel-runtime library.
//!
//! * `vessel check` — can this host run vessel (exit 1 if not)
//! * `vessel config` — print the effective configuration and where it came from
//! * `vessel list` — sandboxes under the state root
//! * `vessel cleanup <sandbox-id>...` — release what a dead shim left behind
//! * `vessel probe` — boot a throw-away sandbox, wait for its agent, tear it down
//! * `vessel snapshot create|list|remove` — the VM snapshots pods start from

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vessel_runtime::check::{evaluate, HostFacts};
use vessel_runtime::cleanup::cleanup_sandbox_dir;
use vessel_runtime::mounts::HostMounter;
use vessel_runtime::snapshot::{snapshot_key, SnapshotStore};
use vessel_runtime::state::{SandboxPaths, SandboxStateFile};
use vessel_runtime::vm::backend_from_config;
use vessel_runtime::{Config, Sandbox, SandboxOptions};

#[derive(Parser)]
#[command(name = "vessel", about = "vessel runtime host tool")]
struct Cli {
    /// Configuration file (default: $VESSEL_CONFIG, then /etc/vessel/config.toml, then built-in).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Report whether this host can run vessel, and why not.
    Check,
    /// Print the effective configuration.
    Config,
    /// List sandboxes in the state root.
    List,
    /// Kill leftover VMMs, unmount and remove the state of the named sandboxes.
    Cleanup { ids: Vec<String> },
    /// Boot a throw-away sandbox, wait for its agent, report, and tear it down.
    Probe {
        /// Sandbox id to use.
        #[arg(long, default_value = "vessel-probe")]
        id: String,
    },
    /// VM snapshots that pods start from (`[snapshot]` in the config).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Make the snapshot for the current configuration (one cold boot), unless it exists.
    Create {
        /// Make it again even if it exists.
        #[arg(long)]
        force: bool,
    },
    /// List snapshots; `*` marks the one the current configuration uses.
    List,
    /// Remove snapshots by key (VMs already restored from them keep running).
    Remove {
        keys: Vec<String>,
        /// Remove every snapshot.
        #[arg(long, conflicts_with = "keys")]
        all: bool,
    },
}

fn snapshot_cmd(config: &Config, cmd: SnapshotCmd) -> anyhow::Result<ExitCode> {
    let store = SnapshotStore::from_config(config);
    match cmd {
        SnapshotCmd::Create { force } => {
            let started = std::time::Instant::now();
            let deadline = started + config.agent_timeout();
            let path = store.create(config, deadline, force)?;
            println!(
                "{} ({:.1} s)",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        SnapshotCmd::List => {
            let current = snapshot_key(config).ok();
            for e in store.list()? {
                let mark = if current.as_deref() == Some(e.key.as_str()) {
                    "*"
                } else {
                    " "
                };
                println!(
                    "{mark} {}\t{:.1} MiB on disk\t{}",
                    e.key,
                    e.disk_bytes as f64 / (1 << 20) as f64,
                    e.summary
                );
            }
        }
        SnapshotCmd::Remove { keys, all } => {
            let keys = if all {
                store.list()?.into_iter().map(|e| e.key).collect()
            } else {
                keys
            };
            let mut failed = false;
            for key in keys {
                match store.remove(&key) {
                    Ok(true) => println!("{key}: removed"),
                    Ok(false) => println!("{key}: no such snapshot"),
                    Err(e) => {
                        eprintln!("{key}: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct StderrLogger;
impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vessel: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let (config, origin) = Config::load(cli.config.as_deref())?;
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(config.log_level());
    match cli.cmd {
        Cmd::Check => {
            println!("config: {origin}");
            let report = evaluate(&HostFacts::probe(&config));
            println!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Config => {
            println!("# from: {origin}");
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::List => {
            let root = &config.runtime.state_root;
            let entries = match std::fs::read_dir(root) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ExitCode::SUCCESS),
                Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", root.display())),
            };
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                let Ok(paths) = SandboxPaths::new(root, &id) else {
                    continue;
                };
                match SandboxStateFile::read(&paths.state_file()) {
                    Ok(Some(s)) => {
                        let vmm = s.vmm.map(|v| {
                            format!(
                                "{} ({})",
                                v.pid,
                                if v.is_alive() { "running" } else { "gone" }
                            )
                        });
                        println!(
                            "{id}\tvmm={}\tmounts={}",
                            vmm.unwrap_or_else(|| "-".into()),
                            s.mounts.len()
                        );
                    }
                    Ok(None) => println!("{id}\t(no state file)"),
                    Err(e) => println!("{id}\t({e})"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { id } => {
            let started = std::time::Instant::now();
            let config = std::sync::Arc::new(config);
            let sandbox = Sandbox::start(SandboxOptions {
                id: id.clone(),
                hostname: id,
                backend: backend_from_config(&config),
                mounter: std::sync::Arc::new(HostMounter),
                config,
            });
            match sandbox {
                Ok(sb) => {
                    println!(
                        "sandbox {} ready in {:.1} s (pid {})",
                        sb.id(),
                        started.elapsed().as_secs_f64(),
                        sb.vmm_pid()
                    );
                    sb.stop()?;
                    println!("stopped and cleaned up");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!(
                        "probe failed after {:.1} s: {e}",
                        started.elapsed().as_secs_f64()
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Snapshot(cmd) => snapshot_cmd(&config, cmd),
        Cmd::Cleanup { ids } => {
            let mut failed = false;
            for id in ids {
                let paths = SandboxPaths::new(&config.runtime.state_root, &id)?;
                match cleanup_sandbox_dir(&paths, &HostMounter, config.shutdown_timeout()) {
                    Ok(r) if !r.existed => println!("{id}: nothing to clean"),
                    Ok(r) => println!(
                        "{id}: cleaned (killed vmm: {}, unmounted: {})",
                        r.killed_vmm, r.unmounted
                    ),
                    Err(e) => {
                        eprintln!("{id}: {e}");
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
