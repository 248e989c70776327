//! `vessel`: host-side tool over the vessel-runtime library.
//!
//! * `vessel check` — can this host run vessel (exit 1 if not)
//! * `vessel config` — print the effective configuration and where it came from
//! * `vessel list` — sandboxes under the state root (per containerd namespace)
//! * `vessel cleanup [--namespace NS] <sandbox-id>...` — release what a dead shim left behind
//! * `vessel probe` — boot a throw-away pod, wait for its agent, tear it down
//! * `vessel run --bundle DIR` — run an OCI bundle's container in a pod of its own, its
//!   output on this terminal, exit with its status (the same `Pods` the shim uses)
//! * `vessel snapshot create|list|remove` — the VM snapshots pods start from

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use vessel_protocol::errors::chain;

use clap::{Parser, Subcommand};
use vessel_runtime::check::{evaluate, HostFacts};
use vessel_runtime::cleanup::cleanup_sandbox_dir;
use vessel_runtime::mounts::HostMounter;
use vessel_runtime::pod::{CreateRequest, ExitEvent, PodEvents, StdioPaths};
use vessel_runtime::snapshot::snapshot_key;
use vessel_runtime::state::SandboxPaths;
use vessel_runtime::vm::backend_from_config;
use vessel_runtime::{Config, Pods, PodsDeps};

/// The containerd namespace the CLI's own pods live in.
const CLI_NAMESPACE: &str = "vessel";

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
    /// Serve Prometheus metrics of this host's pods on `GET /metrics` (prints the address it
    /// listens on, then serves until killed).
    Monitor {
        /// Address to listen on (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
    },
    /// Kill leftover VMMs, unmount and remove the state of the named sandboxes.
    Cleanup {
        /// containerd namespace of the sandboxes.
        #[arg(long, default_value = "default")]
        namespace: String,
        ids: Vec<String>,
    },
    /// Boot a throw-away pod, wait for its agent, report, and tear it down.
    Probe {
        /// Pod id to use.
        #[arg(long, default_value = "vessel-probe")]
        id: String,
    },
    /// Run the container of an OCI bundle (config.json + rootfs/) in a pod of its own, with
    /// its output on this process's stdout/stderr; exit with its status.
    Run {
        #[arg(long)]
        bundle: PathBuf,
        /// Container (and pod) id.
        #[arg(long, default_value = "vessel-run")]
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
    let store = vessel_runtime::vm::launch::snapshot_store(config);
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
                        eprintln!("{key}: {e}", e = chain(&e));
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

/// `<root>/<namespace>/<id>` entries with their VMM and mounts.
fn list(root: &std::path::Path) -> anyhow::Result<()> {
    for sb in vessel_runtime::state::list_sandboxes(root)? {
        let name = format!("{}/{}", sb.namespace, sb.id);
        match sb.state {
            Ok(Some(s)) => {
                let vmm = s.vmm.map(|v| {
                    format!(
                        "{} ({})",
                        v.pid,
                        if v.is_alive() { "running" } else { "gone" }
                    )
                });
                println!(
                    "{name}\tvmm={}\tmounts={}",
                    vmm.unwrap_or_else(|| "-".into()),
                    s.mounts.len()
                );
            }
            Ok(None) => println!("{name}\t(no state file)"),
            Err(e) => println!("{name}\t({e})", e = chain(&e)),
        }
    }
    Ok(())
}

/// The CLI's pods: namespace [`CLI_NAMESPACE`], the configured backend, real mounts.
fn cli_pods(config: Config, events: Arc<dyn PodEvents>) -> Pods {
    let backend = backend_from_config(&config);
    Pods::new(PodsDeps {
        namespace: CLI_NAMESPACE.to_string(),
        config: Ok(Arc::new(config)),
        backend,
        mounter: Arc::new(HostMounter),
        events,
    })
}

struct NoEvents;
impl PodEvents for NoEvents {
    fn exited(&self, _: &ExitEvent) {}
    fn oom(&self, container_id: &str) {
        eprintln!("vessel: container {container_id}: out of memory");
    }
}

/// `vessel run`: create, start, wait, delete; the container's exit status is ours.
fn run_bundle(config: Config, bundle: &std::path::Path, id: &str) -> anyhow::Result<ExitCode> {
    let pods = cli_pods(config, Arc::new(NoEvents));
    let stdio = StdioPaths {
        stdout: "/proc/self/fd/1".into(),
        stderr: "/proc/self/fd/2".into(),
        ..Default::default()
    };
    pods.create(CreateRequest {
        id: id.to_string(),
        bundle: bundle.to_path_buf(),
        rootfs: Vec::new(),
        stdio,
    })
    .map_err(|e| anyhow::anyhow!("{}", chain(&e)))?;
    let started = pods.start(id, "");
    let status = match started {
        Ok(_) => pods.wait(id, "").map(|info| info.exit_status),
        Err(e) => Err(e),
    };
    let deleted = pods.delete(id, "");
    let status = status.map_err(|e| anyhow::anyhow!("{}", chain(&e)))?;
    match deleted {
        Ok(d) => {
            if let Err(e) = d.cleanup {
                eprintln!("vessel: cleaning up {id}: {}", chain(&e));
            }
        }
        Err(e) => eprintln!("vessel: deleting {id}: {}", chain(&e)),
    }
    Ok(ExitCode::from(u8::try_from(status).unwrap_or(255)))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vessel: {e}", e = chain(e.as_ref()));
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
            list(&config.runtime.state_root)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Monitor { listen } => {
            let listener = std::net::TcpListener::bind(listen)
                .map_err(|e| anyhow::anyhow!("listening on {listen}: {e}"))?;
            println!("vessel monitor: http://{}/metrics", listener.local_addr()?);
            std::io::Write::flush(&mut std::io::stdout())?;
            vessel_runtime::monitor::serve(&listener, &config.runtime.state_root);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { id } => {
            let started = std::time::Instant::now();
            let pods = cli_pods(config, Arc::new(NoEvents));
            match pods.probe(&id) {
                Ok(pid) => {
                    println!(
                        "pod {id} ready in {:.1} s (VMM pid {pid}); stopped and cleaned up",
                        started.elapsed().as_secs_f64(),
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!(
                        "probe failed after {:.1} s: {}",
                        started.elapsed().as_secs_f64(),
                        chain(&e)
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Run { bundle, id } => run_bundle(config, &bundle, &id),
        Cmd::Snapshot(cmd) => snapshot_cmd(&config, cmd),
        Cmd::Cleanup { namespace, ids } => {
            let mut failed = false;
            for id in ids {
                let paths = SandboxPaths::new(&config.runtime.state_root, &namespace, &id)?;
                match cleanup_sandbox_dir(&paths, &HostMounter, config.shutdown_timeout()) {
                    Ok(r) if !r.existed => println!("{id}: nothing to clean"),
                    Ok(r) => {
                        paths.remove_empty_namespace_dir();
                        println!(
                            "{id}: cleaned (killed vmm: {}, unmounted: {})",
                            r.killed_vmm, r.unmounted
                        )
                    }
                    Err(e) => {
                        eprintln!("{id}: {}", chain(&e));
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
