//! `vessel-vmm`: boots one micro-VM, restores one from a snapshot, or creates a snapshot.
//! A thin edge over the `vessel_vmm` library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use vessel_protocol::errors::chain;
use vessel_protocol::log_format::{self, LogFormat, LogSource};
use vessel_protocol::vmm_launch::SNAPSHOT_NOW;
use vessel_protocol::vmm_metrics;
use vessel_vmm::config::{DEFAULT_INITRD, DEFAULT_KERNEL, DEFAULT_MEM_MIB, DEFAULT_VSOCK_CID};
use vessel_vmm::jail::{Access, JailSpec};
use vessel_vmm::metrics_file::MetricsFile;
use vessel_vmm::snapshot::{RestoreConfig, RestoreExpectations, SnapshotOptions};
use vessel_vmm::{
    BootEntry, ConsoleConfig, HostKindChoice, RunningVm, SharedDirConfig, Vm, VmConfig, VmmError,
    VsockConfig,
};

use vessel_protocol::VMM_EXIT_SNAPSHOT_REJECTED as EXIT_SNAPSHOT_REJECTED;

/// Boots a Linux micro-VM (ELF vmlinux + initrd) on KVM, or restores one from a snapshot.
#[derive(Debug, Parser)]
#[command(name = "vessel-vmm", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    boot: BootArgs,
    /// Restore the snapshot in this directory instead of booting. --kernel, --initrd,
    /// --no-initrd, --cmdline, --mem-mib, --vcpus and --vsock-cid, if given, must match it.
    #[arg(long)]
    restore: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot, wait until the host writes `snapshot` on stdin (it does once the guest agent
    /// answered its Check) or --delay-secs pass, save a snapshot into --snapshot-dir
    /// (keeping an idle host connection, that Check's, for the restored VM's first client)
    /// and exit 0. End of file on stdin first: exit 1, no snapshot.
    SnapshotCreate(SnapshotCreateArgs),
    /// Check, without starting a VM, that --snapshot-dir can be restored here and matches
    /// the given boot flags (as --restore would). Exit 0 if so, 6 if not.
    SnapshotCheck(SnapshotCheckArgs),
}

#[derive(Debug, Args)]
struct SnapshotCheckArgs {
    #[arg(long)]
    snapshot_dir: PathBuf,
    #[command(flatten)]
    boot: BootArgs,
}

#[derive(Debug, Args)]
struct SnapshotCreateArgs {
    /// Directory to write `vm.json` and `memory.bin` into (must not hold a snapshot).
    #[arg(long)]
    snapshot_dir: PathBuf,
    /// Snapshot this many seconds after boot instead of waiting for the host's
    /// `snapshot` line on stdin.
    #[arg(long)]
    delay_secs: Option<u64>,
    #[command(flatten)]
    boot: BootArgs,
}

#[derive(Debug, Args)]
struct BootArgs {
    /// Guest kernel (ELF vmlinux) [default: /usr/local/share/vessel/vmlinux].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed) [default: /usr/local/share/vessel/initrd.cpio].
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Boot without an initrd.
    #[arg(long, conflicts_with = "initrd")]
    no_initrd: bool,
    /// Appended to the command line the VMM builds.
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest memory [default: 128].
    #[arg(long)]
    mem_mib: Option<u32>,
    /// [default: 1]
    #[arg(long)]
    vcpus: Option<u8>,
    /// Host end of the guest's vsock (Unix socket, Firecracker's hybrid vsock).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// [default: 3]
    #[arg(long, requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// Share a host directory over virtio-fs; the guest mounts it with
    /// `mount -t virtiofs TAG DIR` (repeatable).
    #[arg(long = "shared-dir", value_name = "TAG=HOSTPATH", value_parser = SharedDirConfig::parse)]
    shared_dirs: Vec<SharedDirConfig>,
    /// Pass extended attributes through on every --shared-dir (off by default: with them
    /// the guest asks for security.capability before every write).
    #[arg(long, requires = "shared_dirs")]
    shared_dir_xattr: bool,
    /// Give the guest a NIC (virtio-net). Part of what the guest sees: a snapshot made with
    /// it must be restored with it.
    #[arg(long)]
    net: bool,
    /// The NIC's host end: an inherited fd open on a tap (IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR). Without it the NIC drops what the guest sends.
    #[arg(long, requires = "net", value_name = "FD")]
    net_tap_fd: Option<i32>,
    /// An inherited fd open on a regular file: the VMM rewrites its counters there (vCPU
    /// exits, virtio devices) every 2 s and when the VM stops (`vessel_protocol::vmm_metrics`).
    #[arg(long, value_name = "FD")]
    metrics_fd: Option<i32>,
    /// Serial console output file (default: stdout).
    #[arg(long)]
    console: Option<PathBuf>,
    /// Cut the --console file back to empty when it would grow past this many bytes.
    #[arg(long, requires = "console")]
    console_max_bytes: Option<u64>,
    /// Kernel entry: pvh or linux64 (default: chosen for the host).
    #[arg(long)]
    boot_entry: Option<BootEntry>,
    /// Host profile for CPUID and command line: auto, pvm or hardware.
    #[arg(long, default_value = "auto")]
    host_kind: HostKindChoice,
    /// Run without seccomp filters (debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// Sample guest RIPs every 10 ms; write `count rip` lines here when the VM stops.
    #[arg(long)]
    profile_rips: Option<PathBuf>,
    /// Start sampling this many seconds after the VM starts (leave the boot out).
    #[arg(long, default_value_t = 0, requires = "profile_rips")]
    profile_rips_after: u64,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = parse_level)]
    log_level: log::LevelFilter,
    /// Log line format: text, or json (one object per line; `vessel_protocol::log_format`).
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
    /// The sandbox this VM runs, named in JSON log lines.
    #[arg(long)]
    log_sandbox: Option<String>,
    /// Run jailed (see `vessel_vmm::jail`): a pid namespace of its own, a mount namespace
    /// holding only what the VM needs built on this empty directory, new ipc/uts/net
    /// namespaces, capped limits, only the capabilities virtio-fs needs, no_new_privs.
    #[arg(long, value_name = "EMPTY_DIR")]
    jail: Option<PathBuf>,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse().map_err(|_| format!("unknown log level {s:?}"))
}

struct StderrLogger;

static FUSE_BACKEND_LOGS: vessel_vmm::log_limit::LogLimiter =
    vessel_vmm::log_limit::LogLimiter::new(20, Duration::from_secs(10));

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        // fuse-backend-rs logs what a guest's bad requests trigger, unlimited: cap it.
        if record.target().starts_with("fuse_backend_rs") && FUSE_BACKEND_LOGS.check().is_none() {
            return;
        }
        if self.enabled(record.metadata()) {
            let thread = std::thread::current();
            let line = match JSON_SOURCE.get() {
                Some(source) => log_format::json_line(source, record, thread.name()),
                None => format!(
                    "vessel-vmm [{}] {:<5} {}\n",
                    thread.name().unwrap_or("?"),
                    record.level(),
                    record.args()
                ),
            };
            // One write per line, so lines from threads do not interleave.
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;
/// Set when `--log-format json`: what every JSON line names.
static JSON_SOURCE: std::sync::OnceLock<LogSource> = std::sync::OnceLock::new();

fn config_from(args: &BootArgs) -> VmConfig {
    VmConfig {
        kernel: args
            .kernel
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KERNEL)),
        initrd: (!args.no_initrd).then(|| {
            args.initrd
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_INITRD))
        }),
        cmdline_extra: args.cmdline.clone().unwrap_or_default(),
        mem_mib: args.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
        vcpus: args.vcpus.unwrap_or(1),
        boot_entry: args.boot_entry,
        console: args
            .console
            .clone()
            .map_or(ConsoleConfig::Stdout, ConsoleConfig::File),
        console_max_bytes: args.console_max_bytes,
        vsock: args.vsock_uds.clone().map(|uds_path| VsockConfig {
            guest_cid: args.vsock_cid.unwrap_or(DEFAULT_VSOCK_CID),
            uds_path,
        }),
        shared_dirs: args
            .shared_dirs
            .iter()
            .map(|d| SharedDirConfig {
                xattr: args.shared_dir_xattr,
                ..d.clone()
            })
            .collect(),
        net: args.net.then_some(vessel_vmm::config::NetConfig {
            tap_fd: args.net_tap_fd,
        }),
        seccomp: !args.no_seccomp,
        host_kind: args.host_kind,
        rip_profile: args.profile_rips.clone(),
        rip_profile_after: std::time::Duration::from_secs(args.profile_rips_after),
    }
}

/// The snapshot must be what the explicitly given boot flags describe.
fn expectations_from(args: &BootArgs) -> RestoreExpectations {
    RestoreExpectations {
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        kernel: args.kernel.clone(),
        initrd: if args.no_initrd {
            Some(None)
        } else {
            args.initrd.clone().map(Some)
        },
        cmdline_extra: args.cmdline.clone(),
        vsock_cid: args.vsock_cid,
    }
}

/// What the VMM needs inside its jail, for this configuration.
fn jail_spec(
    dir: &std::path::Path,
    cfg: &VmConfig,
    snapshot: Option<(&std::path::Path, Access)>,
) -> JailSpec {
    let mut spec = JailSpec {
        dir: dir.to_path_buf(),
        virtio_fs: !cfg.shared_dirs.is_empty(),
        ..Default::default()
    };
    let parent = |p: &std::path::Path| p.parent().map(std::path::Path::to_path_buf);
    spec.bind(cfg.kernel.clone(), Access::ReadOnly);
    if let Some(initrd) = &cfg.initrd {
        spec.bind(initrd.clone(), Access::ReadOnly);
    }
    if let Some((snap, access)) = snapshot {
        // A snapshot to create may not exist yet: its directory's parent holds it.
        let path = if access == Access::Writable {
            parent(snap).unwrap_or_else(|| snap.to_path_buf())
        } else {
            snap.to_path_buf()
        };
        spec.bind(path, access);
    }
    if let ConsoleConfig::File(f) = &cfg.console {
        if let Some(d) = parent(f) {
            spec.bind(d, Access::Writable);
        }
    }
    if let Some(v) = &cfg.vsock {
        if let Some(d) = parent(&v.uds_path) {
            spec.bind(d, Access::Writable);
        }
    }
    for d in &cfg.shared_dirs {
        spec.bind(d.path.clone(), Access::Writable);
    }
    if let Some(d) = cfg.rip_profile.as_deref().and_then(parent) {
        spec.bind(d, Access::Writable);
    }
    spec
}

/// Enters the jail when `--jail` was given: host facts first (the jail hides /sys), then the
/// pid namespace (the parent waits outside), then the rest. No thread may exist yet.
fn jail_if_asked(
    args: &BootArgs,
    cfg: &mut VmConfig,
    snapshot: Option<(&std::path::Path, Access)>,
) -> anyhow::Result<()> {
    let Some(dir) = &args.jail else {
        return Ok(());
    };
    if cfg.host_kind == HostKindChoice::Auto {
        let kind = vessel_vmm::cpu_policy::HostProfile::detect(
            HostKindChoice::Auto,
            &vessel_vmm::cpu_policy::SysfsProbe,
        )
        .kind;
        cfg.host_kind = HostKindChoice::Force(kind);
    }
    let spec = jail_spec(dir, cfg, snapshot);
    let started = std::time::Instant::now();
    vessel_vmm::jail::fork_into_pid_namespace()?;
    vessel_vmm::jail::enter(&spec)?;
    log::info!(
        "jailed in {:?} ({} paths bound)",
        started.elapsed(),
        spec.binds.len() + 2
    );
    Ok(())
}

/// Waits for the VM, with the main thread under the VMM filter, and maps its end to a status.
/// With `--metrics-fd` it rewrites the VM's counters there while it waits.
fn run_vm(mut vm: RunningVm, args: &BootArgs) -> anyhow::Result<ExitCode> {
    vessel_vmm::signals::stop_on_termination_signals(&vm).context("handling SIGTERM")?;
    let mut metrics = args
        .metrics_fd
        .map(MetricsFile::from_inherited)
        .transpose()
        .context("the metrics file")?;
    if !args.no_seccomp {
        // This thread now only waits for the VM, writes its counters and tears it down.
        let filters = vessel_vmm::seccomp::default_filters().context("building seccomp filters")?;
        vessel_vmm::seccomp::install(&filters.vmm).context("filtering the main thread")?;
    }
    let reason = match metrics.as_mut() {
        None => vm.wait(),
        Some(file) => loop {
            let stopped = vm.wait_timeout(vmm_metrics::PERIOD);
            if let Err(e) = file.write(&vm.metrics()) {
                log::warn!("writing the metrics file: {e}");
            }
            if let Some(reason) = stopped {
                break reason;
            }
        },
    };
    let code = reason.exit_code();
    if code != 0 {
        log::error!("VM failed (exit status {code})");
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn restore(dir: PathBuf, args: &BootArgs) -> anyhow::Result<ExitCode> {
    if args.boot_entry.is_some() {
        anyhow::bail!("--boot-entry cannot be used with --restore (the snapshot decides)");
    }
    let mut host = config_from(args);
    jail_if_asked(args, &mut host, Some((&dir, Access::ReadOnly)))?;
    let cfg = RestoreConfig {
        snapshot_dir: dir,
        host,
        expect: expectations_from(args),
    };
    match Vm::restore(cfg) {
        Ok(vm) => run_vm(vm, args),
        Err(VmmError::Snapshot(e)) if e.is_rejected_snapshot() => {
            log::error!("snapshot rejected: {}", chain(&e));
            Ok(ExitCode::from(EXIT_SNAPSHOT_REJECTED))
        }
        Err(e) => Err(anyhow::Error::new(e).context("restoring the VM")),
    }
}

/// Waits for the host's [`SNAPSHOT_NOW`] line on stdin (bounded: one short line).
fn read_snapshot_request() -> anyhow::Result<()> {
    use std::io::Read;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut byte).context("reading stdin")? {
            0 => anyhow::bail!("stdin closed before the host asked for the snapshot"),
            _ if byte[0] == b'\n' => break,
            _ if line.len() < 64 => line.push(byte[0]),
            _ => anyhow::bail!("stdin: a line over 64 bytes is not a snapshot request"),
        }
    }
    if line != SNAPSHOT_NOW.as_bytes() {
        anyhow::bail!(
            "stdin: expected {SNAPSHOT_NOW:?}, got {:?}",
            String::from_utf8_lossy(&line)
        );
    }
    Ok(())
}

fn snapshot_create(args: SnapshotCreateArgs) -> anyhow::Result<ExitCode> {
    let mut config = config_from(&args.boot);
    jail_if_asked(
        &args.boot,
        &mut config,
        Some((&args.snapshot_dir, Access::Writable)),
    )?;
    // The main thread stays unfiltered: it waits for the host and writes the snapshot. The
    // vCPU and device threads run under their filters as usual.
    let mut vm = Vm::start(config).context("starting the VM")?;
    vessel_vmm::signals::stop_on_termination_signals(&vm).context("handling SIGTERM")?;
    let stopped = |reason: vessel_vmm::ExitReason| {
        anyhow::anyhow!("the VM stopped before it could be snapshotted: {reason}")
    };
    if let Some(secs) = args.delay_secs {
        if let Some(reason) = vm.wait_timeout(Duration::from_secs(secs)) {
            return Err(stopped(reason));
        }
    } else {
        // The host checks the guest (its agent answers Check) and then says so on stdin; the
        // VMM never speaks the agent's API. A host connection left open (that Check's) is
        // kept in the snapshot for the restored VMs' first client.
        let waiter = std::thread::Builder::new()
            .name("host-wait".to_string())
            .spawn(read_snapshot_request)
            .context("spawning the stdin reader")?;
        while !waiter.is_finished() {
            if let Some(reason) = vm.wait_timeout(Duration::from_millis(100)) {
                return Err(stopped(reason));
            }
        }
        waiter
            .join()
            .map_err(|_| anyhow::anyhow!("the stdin reader panicked"))??;
        log::info!("snapshot requested by the host");
    }
    let summary = vm
        .snapshot(&args.snapshot_dir, &SnapshotOptions::default())
        .context("creating the snapshot")?;
    println!(
        "snapshot {}: {} MiB of RAM, {} KiB non-zero, saved in {} ms",
        summary.dir.display(),
        summary.mem_bytes >> 20,
        summary.memory_data_bytes >> 10,
        summary.save_time.as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn snapshot_check(args: &SnapshotCheckArgs) -> ExitCode {
    let expect = expectations_from(&args.boot);
    match vessel_vmm::snapshot::verify(&args.snapshot_dir, &expect, args.boot.host_kind) {
        Ok((m, _)) => {
            println!(
                "snapshot {}: restorable ({} MiB, {} vCPU(s), {} virtio device(s), vessel-vmm {})",
                args.snapshot_dir.display(),
                m.boot.mem_mib,
                m.boot.vcpus,
                m.virtio.len(),
                m.vmm_version
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("snapshot rejected: {}", chain(&e));
            ExitCode::from(EXIT_SNAPSHOT_REJECTED)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match (cli.command, cli.restore) {
        (Some(Command::SnapshotCreate(args)), _) => snapshot_create(args),
        (Some(Command::SnapshotCheck(args)), _) => Ok(snapshot_check(&args)),
        (None, Some(dir)) => restore(dir, &cli.boot),
        (None, None) => {
            let mut cfg = config_from(&cli.boot);
            jail_if_asked(&cli.boot, &mut cfg, None)?;
            let vm = Vm::start(cfg).context("starting the VM")?;
            run_vm(vm, &cli.boot)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let boot = match &cli.command {
        Some(Command::SnapshotCreate(a)) => &a.boot,
        Some(Command::SnapshotCheck(a)) => &a.boot,
        None => &cli.boot,
    };
    log::set_max_level(boot.log_level);
    if boot.log_format == LogFormat::Json {
        let _ = JSON_SOURCE.set(LogSource {
            process: "vmm",
            sandbox: boot.log_sandbox.clone(),
            namespace: None,
        });
    }
    let _ = log::set_logger(&LOGGER);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{}", chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vessel_protocol::vmm_launch::{GuestFlags, HostFlags, LaunchMode, VmmLaunch};

    fn parse(launch: &VmmLaunch) -> Cli {
        let mut argv = vec![std::ffi::OsString::from("vessel-vmm")];
        argv.extend(launch.to_args());
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{launch:?}: {e}"))
    }

    /// What the runtime asks for is what vessel-vmm's own parser reads.
    fn assert_boot_args_match(b: &BootArgs, launch: &VmmLaunch) {
        let (g, h) = (&launch.guest, &launch.host);
        assert_eq!(b.kernel.as_ref(), Some(&g.kernel));
        assert_eq!(b.initrd.as_ref(), Some(&g.initrd));
        assert!(!b.no_initrd);
        assert_eq!(b.cmdline.as_deref(), Some(g.cmdline.as_str()));
        assert_eq!(b.mem_mib, Some(g.mem_mib));
        assert_eq!(b.vcpus, Some(g.vcpus));
        assert_eq!(b.net, g.net);
        assert_eq!(b.vsock_uds, h.vsock_uds);
        assert_eq!(b.console, h.console);
        assert_eq!(b.console_max_bytes, h.console_max_bytes);
        let shares: Vec<(String, PathBuf)> = b
            .shared_dirs
            .iter()
            .map(|d| (d.tag.clone(), d.path.clone()))
            .collect();
        assert_eq!(shares, h.shared_dirs);
        assert_eq!(b.no_seccomp, h.no_seccomp);
        assert_eq!(b.jail, h.jail);
        assert_eq!(b.net_tap_fd, h.net_tap_fd);
        assert_eq!(b.metrics_fd, h.metrics_fd);
        assert_eq!(b.log_format, h.log_format);
        assert_eq!(b.log_sandbox, h.log_sandbox);
    }

    fn launch(mode: LaunchMode) -> VmmLaunch {
        VmmLaunch {
            mode,
            guest: GuestFlags {
                kernel: "/k/vmlinux".into(),
                initrd: "/k/initrd.cpio".into(),
                cmdline: "quiet vessel.warmup=1".into(),
                mem_mib: 256,
                vcpus: 2,
                net: true,
            },
            host: HostFlags {
                vsock_uds: Some("/run/v/sb/vsock.sock".into()),
                console: Some("/run/v/sb/console.log".into()),
                console_max_bytes: Some(1 << 20),
                shared_dirs: vec![("vessel".into(), "/run/v/sb/shared".into())],
                no_seccomp: false,
                jail: Some("/run/v/sb/jail".into()),
                net_tap_fd: Some(7),
                metrics_fd: Some(8),
                log_format: LogFormat::Json,
                log_sandbox: Some("sb-1".into()),
            },
        }
    }

    #[test]
    fn the_runtimes_launch_round_trips_through_our_parser() {
        let boot = launch(LaunchMode::Boot);
        let cli = parse(&boot);
        assert!(cli.restore.is_none() && cli.command.is_none());
        assert_boot_args_match(&cli.boot, &boot);

        let restore = launch(LaunchMode::Restore("/s/snap".into()));
        let cli = parse(&restore);
        assert_eq!(cli.restore, Some(PathBuf::from("/s/snap")));
        assert_boot_args_match(&cli.boot, &restore);

        let mut create = launch(LaunchMode::SnapshotCreate {
            dir: "/s/new".into(),
        });
        create.host.net_tap_fd = None;
        create.host.metrics_fd = None;
        create.guest.net = false;
        create.host.no_seccomp = true;
        create.host.log_format = LogFormat::Text;
        create.host.log_sandbox = None;
        match parse(&create).command {
            Some(Command::SnapshotCreate(a)) => {
                assert_eq!(a.snapshot_dir, PathBuf::from("/s/new"));
                assert_eq!(a.delay_secs, None);
                assert_boot_args_match(&a.boot, &create);
            }
            other => panic!("snapshot-create parsed as {other:?}"),
        }

        let mut check = launch(LaunchMode::SnapshotCheck {
            dir: "/s/old".into(),
        });
        check.host = HostFlags::default();
        match parse(&check).command {
            Some(Command::SnapshotCheck(a)) => {
                assert_eq!(a.snapshot_dir, PathBuf::from("/s/old"));
                assert_boot_args_match(&a.boot, &check);
            }
            other => panic!("snapshot-check parsed as {other:?}"),
        }
    }
}
