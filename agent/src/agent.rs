//! Start-up: options, logging, PID 1 setup, reaper, and the ttrpc server.

use std::path::PathBuf;
use std::sync::Arc;
use vessel_protocol::errors::chain;

use log::LevelFilter;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use vessel_protocol::agent_ttrpc::create_agent;

use crate::reaper::Reaper;
use crate::sandbox::Sandbox;
use crate::server::AgentService;

const USAGE: &str = "usage: vessel-agent [--listen unix:///path.sock | vsock://-1:1024] [--log-level LEVEL] [--state-dir DIR] [--spare-setup-children N]";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("{what}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("ttrpc server on {addr}")]
    Server { addr: String, source: ttrpc::Error },
}

/// Command-line options.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub listen: Option<String>,
    pub log_level: Option<LevelFilter>,
    pub state_dir: Option<PathBuf>,
    /// Setup children to start before serving (`container::process`); in the guest the
    /// warm-up decides.
    pub spare_setup_children: usize,
}

pub fn parse_args(args: &[String]) -> Result<Options, StartupError> {
    parse_args_inner(args, true)
}

/// As PID 1 the kernel hands init every command-line word it did not recognise (`nomodule`,
/// `noxsave`, …) as arguments. None of them is meant for us and PID 1 must not fail on them,
/// so they are skipped; our own flags still apply (a test runs the agent as PID 1 of a pid
/// namespace with `--listen`). Guest options come from `vessel.*` words in /proc/cmdline.
pub fn parse_init_args(args: &[String]) -> Result<Options, StartupError> {
    parse_args_inner(args, false)
}

fn parse_args_inner(args: &[String], strict: bool) -> Result<Options, StartupError> {
    let mut o = Options {
        listen: None,
        log_level: None,
        state_dir: None,
        spare_setup_children: 0,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| StartupError::Usage(format!("{name} needs a value")))
        };
        match a.as_str() {
            "--listen" => o.listen = Some(value("--listen")?),
            "--log-level" => {
                let v = value("--log-level")?;
                o.log_level = Some(
                    crate::logger::parse_level(&v)
                        .ok_or_else(|| StartupError::Usage(format!("bad log level {v:?}")))?,
                );
            }
            "--state-dir" => o.state_dir = Some(PathBuf::from(value("--state-dir")?)),
            "--spare-setup-children" => {
                let v = value("--spare-setup-children")?;
                o.spare_setup_children =
                    v.parse().ok().filter(|n| *n <= 8).ok_or_else(|| {
                        StartupError::Usage(format!("bad spare count {v:?} (0-8)"))
                    })?;
            }
            "-h" | "--help" => return Err(StartupError::Usage("help".into())),
            other if strict => {
                return Err(StartupError::Usage(format!("unknown argument {other:?}")))
            }
            _ => {}
        }
    }
    Ok(o)
}

/// Runs the agent; returns only on a start-up error (or after SIGTERM on a host).
pub fn run(args: &[String]) -> Result<(), StartupError> {
    let pid1 = nix::unistd::getpid().as_raw() == 1;
    let opts = if pid1 {
        parse_init_args(args)?
    } else {
        parse_args(args)?
    };
    // Before any thread exists, so all inherit the mask: SIGCHLD goes to the reaper,
    // SIGTERM/SIGINT to the main thread's sigwait.
    let mut mask = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(s);
    }
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&mask), None);

    crate::logger::init(opts.log_level.unwrap_or(LevelFilter::Warn));
    if pid1 {
        // Before any thread exists, so all inherit it.
        if let Err(e) = crate::priority::raise_agent() {
            log::warn!("raising the agent's priority: {e}");
        }
        let failures = crate::init::setup_pid1();
        if opts.log_level.is_none() {
            if let Some(level) = crate::init::cmdline_value("vessel.log")
                .and_then(|v| crate::logger::parse_level(&v))
            {
                log::set_max_level(level);
            }
        }
        if failures > 0 {
            log::error!("PID 1 setup: {failures} steps failed; serving anyway");
        }
    } else if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!("PR_SET_CHILD_SUBREAPER: {e}");
    }
    Reaper::global()
        .start()
        .map_err(|source| StartupError::Io {
            what: "starting reaper",
            source,
        })?;

    let listen = match (&opts.listen, pid1) {
        (Some(l), _) => l.clone(),
        (None, true) => format!("vsock://-1:{}", vessel_protocol::AGENT_VSOCK_PORT),
        (None, false) => {
            return Err(StartupError::Usage(
                "--listen is required when not PID 1".into(),
            ))
        }
    };
    let state_dir = opts.state_dir.clone().unwrap_or_else(|| {
        if pid1 {
            PathBuf::from("/run/vessel-agent")
        } else {
            std::env::temp_dir().join(format!("vessel-agent-{}", std::process::id()))
        }
    });
    if let Some(path) = listen.strip_prefix("unix://") {
        // A stale socket from an earlier run would make bind fail.
        let _ = std::fs::remove_file(path);
    }
    let sandbox =
        Arc::new(
            Sandbox::new(state_dir.clone(), pid1).map_err(|source| StartupError::Io {
                what: "agent state",
                source,
            })?,
        );
    // Before serving: a snapshot is taken once the agent answers, and should hold the
    // warmed state (`crate::warmup`).
    let spares = if pid1 && crate::warmup::wanted() {
        match crate::warmup::run(&sandbox) {
            Ok(took) => log::info!("warm-up container made and removed in {took:?}"),
            Err(e) => log::warn!("warm-up container: {e}"),
        }
        match sandbox.make_spare_cgroups(crate::warmup::SPARE_CGROUPS) {
            Ok(n) => log::info!("{n} spare cgroups made"),
            Err(e) => log::warn!("spare cgroups: {e}"),
        }
        match crate::pod_network::nics_up() {
            Ok(n) => log::info!("{n} NIC(s) up ahead of the pod's network"),
            Err(e) => log::warn!("NICs up: {e}", e = chain(&e)),
        }
        crate::warmup::SPARE_SETUP_CHILDREN
    } else {
        opts.spare_setup_children
    };
    if spares > 0 {
        match crate::container::process::start_spares(spares) {
            Ok(n) => log::info!("{n} spare setup children waiting"),
            Err(e) => log::warn!("spare setup children: {e}", e = chain(&e)),
        }
    }
    let service = Arc::new(AgentService {
        sandbox: sandbox.clone(),
    });
    // As PID 1 a failure to listen (e.g. the vsock driver not ready yet) is retried: PID 1
    // cannot exit, and the host keeps trying to connect.
    let _server = loop {
        match serve(&listen, service.clone()) {
            Ok(server) => break server,
            Err(e) if pid1 => {
                log::error!("{e}; retrying", e = chain(&e));
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    };
    log::info!("serving on {listen} (pid1: {pid1})");

    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    loop {
        match stop.wait() {
            Ok(sig) if !pid1 => {
                log::info!("{sig}: removing containers and exiting");
                if let Err(e) = sandbox.destroy_sandbox() {
                    log::error!("cleanup on {sig}: {e}", e = chain(&e));
                }
                if let Some(path) = listen.strip_prefix("unix://") {
                    let _ = std::fs::remove_file(path);
                }
                let _ = std::fs::remove_dir_all(&state_dir);
                return Ok(());
            }
            Ok(sig) => log::warn!("PID 1 ignores {sig}"),
            Err(e) => {
                log::error!("sigwait: {e}");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

/// ttrpc handler threads started per connection (see `serve`).
const HANDLER_THREADS: usize = 10;

fn serve(listen: &str, service: Arc<AgentService>) -> Result<ttrpc::Server, StartupError> {
    let server_err = |source| StartupError::Server {
        addr: listen.to_string(),
        source,
    };
    // ttrpc starts DEFAULT handler threads per connection and, whenever fewer than MIN are
    // idle, tops them up to DEFAULT. The runtime keeps long calls open on its one
    // connection (GetOOMEvent; per container WaitProcess, ReadStdout, ReadStderr): with 4,
    // a pod's first container used them up and the agent spawned threads while it started
    // (each a clone, a stack and page faults: dear on KVM-PVM). With 10, a sandbox and one
    // container (or a standalone container) never need more, and the snapshot's parked
    // connection holds them already made.
    let mut server = ttrpc::Server::new()
        .bind(listen)
        .map_err(server_err)?
        .register_service(create_agent(service))
        .set_thread_count_min(2)
        .set_thread_count_default(HANDLER_THREADS)
        .set_thread_count_max(32);
    server.start().map_err(server_err)?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let o = a(&["--listen", "unix:///tmp/a.sock", "--log-level", "debug"]).unwrap();
        assert_eq!(o.listen.as_deref(), Some("unix:///tmp/a.sock"));
        assert_eq!(o.log_level, Some(LevelFilter::Debug));
        assert!(a(&["--listen"]).is_err());
        assert!(a(&["--bogus"]).is_err());
        assert!(a(&["--log-level", "loud"]).is_err());
    }

    #[test]
    fn pid1_skips_kernel_leftovers() {
        let v = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = parse_init_args(&v(&["nomodule", "noxsave", "--log-level", "debug"])).unwrap();
        assert_eq!(o.log_level, Some(LevelFilter::Debug));
        assert_eq!(o.listen, None);
        assert!(parse_args(&v(&["nomodule"])).is_err(), "strict off PID 1");
    }
}
