//! `vessel-vmm`: boots one micro-VM. A thin edge over the `vessel_vmm` library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use vessel_vmm::config::{DEFAULT_INITRD, DEFAULT_KERNEL, DEFAULT_MEM_MIB, DEFAULT_VSOCK_CID};
use vessel_vmm::{BootEntry, ConsoleConfig, HostKindChoice, Vm, VmConfig, VsockConfig};

/// Boots a Linux micro-VM (ELF vmlinux + initrd) on KVM.
#[derive(Debug, Parser)]
#[command(name = "vessel-vmm", version)]
struct Cli {
    /// Guest kernel (ELF vmlinux).
    #[arg(long, default_value = DEFAULT_KERNEL)]
    kernel: PathBuf,
    /// Initramfs (cpio, optionally compressed).
    #[arg(long, default_value = DEFAULT_INITRD)]
    initrd: PathBuf,
    /// Boot without an initrd.
    #[arg(long, conflicts_with = "initrd")]
    no_initrd: bool,
    /// Appended to the command line the VMM builds.
    #[arg(long, default_value = "")]
    cmdline: String,
    #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
    mem_mib: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Host end of the guest's vsock (Unix socket, Firecracker's hybrid vsock).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    #[arg(long, default_value_t = DEFAULT_VSOCK_CID, requires = "vsock_uds")]
    vsock_cid: u64,
    /// Serial console output file (default: stdout).
    #[arg(long)]
    console: Option<PathBuf>,
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
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse().map_err(|_| format!("unknown log level {s:?}"))
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let thread = std::thread::current();
            let line = format!(
                "vessel-vmm [{}] {:<5} {}\n",
                thread.name().unwrap_or("?"),
                record.level(),
                record.args()
            );
            // One write per line, so lines from threads do not interleave.
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

fn config_from(cli: Cli) -> VmConfig {
    VmConfig {
        kernel: cli.kernel,
        initrd: (!cli.no_initrd).then_some(cli.initrd),
        cmdline_extra: cli.cmdline,
        mem_mib: cli.mem_mib,
        vcpus: cli.vcpus,
        boot_entry: cli.boot_entry,
        console: cli
            .console
            .map_or(ConsoleConfig::Stdout, ConsoleConfig::File),
        vsock: cli.vsock_uds.map(|uds_path| VsockConfig {
            guest_cid: cli.vsock_cid,
            uds_path,
        }),
        seccomp: !cli.no_seccomp,
        host_kind: cli.host_kind,
        rip_profile: cli.profile_rips,
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let seccomp = !cli.no_seccomp;
    let vm = Vm::start(config_from(cli)).context("starting the VM")?;
    vessel_vmm::signals::stop_on_termination_signals(&vm).context("handling SIGTERM")?;
    if seccomp {
        // This thread now only waits for the VM and tears it down.
        let filters = vessel_vmm::seccomp::default_filters().context("building seccomp filters")?;
        vessel_vmm::seccomp::install(&filters.vmm).context("filtering the main thread")?;
    }
    let reason = vm.wait();
    let code = reason.exit_code();
    if code != 0 {
        log::error!("VM failed (exit status {code})");
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log::set_max_level(cli.log_level);
    let _ = log::set_logger(&LOGGER);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}
