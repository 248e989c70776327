//! Building and running one VM: [`Vm::start`] returns a [`RunningVm`] to wait on or stop.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{IoEventAddress, VcpuFd};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::layout::{
    IRQ_MAX, SERIAL_IRQ, VIRTIO_IRQ_BASE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START,
};
use crate::arch::mptable::setup_mptable;
use crate::arch::regs::BootEntry;
use crate::boot::cmdline::{compose, MmioDeviceSlot};
use crate::boot::loader::{load_initrd, load_kernel};
use crate::boot::params::{build_boot_params, write_boot_params, write_cmdline};
use crate::boot::pvh::write_start_info;
use crate::config::{default_boot_entry, ConsoleConfig, VmConfig};
use crate::cpu_policy::{HostKind, HostProfile, SysfsProbe};
use crate::devices::bus::Bus;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{ConsoleOutput, SerialDevice};
use crate::devices::legacy::{I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::error::VmmError;
use crate::exit::{ExitReason, ExitSignal};
use crate::kvm::exit_counters::ExitCounters;
use crate::kvm::profile::{RipHistogram, Sampler};
use crate::kvm::vcpu::{create_vcpu, kick_signal, register_kick_handler, VcpuBoot, VcpuRunner};
use crate::kvm::vm::KvmVm;
use crate::seccomp::{filters_for, install, ThreadFilters, ThreadNeeds};

pub use crate::devices::virtio::handle::{SharedSubscriber, VirtioDeviceHandle};
pub use vessel_protocol::vmm_metrics::VmmMetrics;

/// A virtio device's name in the metrics (its virtio type otherwise).
fn device_name(device_type: u32) -> String {
    match device_type {
        crate::devices::virtio::net::VIRTIO_ID_NET => "net".into(),
        crate::devices::virtio::vsock::VIRTIO_ID_VSOCK => "vsock".into(),
        crate::devices::virtio::fs::VIRTIO_ID_FS => "fs".into(),
        other => format!("virtio{other}"),
    }
}

/// What the VMM chose for this VM (also logged at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub host: HostKind,
    pub removed_cpu_features: Vec<&'static str>,
    pub boot_entry: BootEntry,
    pub cmdline: String,
    pub virtio_slots: Vec<MmioDeviceSlot>,
}

/// Stops a VM from any thread.
#[derive(Clone)]
pub struct VmStopper(Arc<ExitSignal>);

impl VmStopper {
    pub fn stop(&self) {
        self.0.request(ExitReason::Stopped);
    }
}

pub struct Vm;

impl Vm {
    /// Boots `config` (with its vsock and virtio-fs devices, if configured).
    pub fn start(config: VmConfig) -> Result<RunningVm, VmmError> {
        config.validate()?;
        let devices = configured_devices(&config)?;
        Self::start_with_devices(config, devices)
    }

    /// Boots `config` with `devices` on the virtio-mmio bus, in order.
    pub fn start_with_devices(
        config: VmConfig,
        devices: Vec<VirtioDeviceHandle>,
    ) -> Result<RunningVm, VmmError> {
        config.validate()?;
        let profile = HostProfile::detect(config.host_kind, &SysfsProbe);
        let mem_size = config.mem_bytes();
        let vm = KvmVm::new(mem_size)?;
        let exit = new_exit_signal()?;

        // Kernel, initrd.
        let kernel = load_kernel(&vm.mem, &config.kernel, mem_size)?;
        let boot_entry = config
            .boot_entry
            .unwrap_or_else(|| default_boot_entry(profile.kind));
        let entry_addr = kernel.entry_addr(boot_entry, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(path) => Some(load_initrd(&vm.mem, path, kernel.end, mem_size)?),
            None => None,
        };

        // Devices.
        let serial = SerialDevice::new(
            serial_irq(&vm)?,
            console_output(&config.console, config.console_max_bytes)?,
        );
        let (io_bus, serial) = legacy_bus(serial, &exit)?;
        let virtio = virtio_bus(&vm, devices)?;
        let slots = virtio.slots.clone();

        // Command line and boot data.
        let cmdline = compose(&profile.cmdline, &slots, &config.cmdline_extra)?;
        write_cmdline(&vm.mem, &cmdline)?;
        match boot_entry {
            BootEntry::Pvh => {
                write_start_info(&vm.mem, mem_size, initrd)?;
            }
            BootEntry::Linux64 => {
                let params = build_boot_params(mem_size, cmdline.len(), initrd)?;
                write_boot_params(&vm.mem, &params)?;
            }
        }
        setup_mptable(&vm.mem, config.vcpus)?;

        let info = VmInfo {
            host: profile.kind,
            removed_cpu_features: profile.removed_names(),
            boot_entry,
            cmdline,
            virtio_slots: slots,
        };
        log::info!(
            "host {}; CPUID features removed: [{}]; boot entry {} at {entry_addr:#x}; {} vCPU(s), {} MiB",
            info.host,
            info.removed_cpu_features.join(","),
            info.boot_entry,
            config.vcpus,
            config.mem_mib
        );
        log::info!("kernel command line: {}", info.cmdline);

        // vCPUs, configured here, run on their own threads.
        let cpuid = guest_cpuid(&vm, &profile)?;
        let boot = VcpuBoot {
            entry: boot_entry,
            entry_addr,
            cpuid: &cpuid,
            vcpu_count: config.vcpus,
        };
        let mut vcpu_fds = Vec::new();
        for index in 0..config.vcpus {
            vcpu_fds.push(create_vcpu(&vm.fd, &vm.mem, index, &boot)?);
        }
        launch(Launch {
            config,
            vm,
            exit,
            io_bus,
            serial,
            virtio,
            vcpu_fds,
            info,
            vmm_emulation: profile.vmm_emulation,
        })
    }
}

pub(crate) use crate::devices::virtio::wiring::configured_devices;

/// What the event thread's seccomp filter must allow for `devices`.
fn event_thread_needs(devices: &[Arc<Mutex<dyn VirtioDevice>>]) -> ThreadNeeds {
    let is_fs = |d: &Arc<Mutex<dyn VirtioDevice>>| {
        let dev = d.lock().unwrap_or_else(|e| e.into_inner());
        dev.device_type() == crate::devices::virtio::fs::VIRTIO_ID_FS
    };
    ThreadNeeds {
        shared_fs: devices.iter().any(is_fs),
    }
}

pub(crate) fn new_exit_signal() -> Result<Arc<ExitSignal>, VmmError> {
    Ok(Arc::new(ExitSignal::new().map_err(|source| {
        VmmError::EventFd {
            what: "the VM exit signal",
            source,
        }
    })?))
}

/// KVM's supported CPUID filtered for the host profile (what every vCPU gets at boot).
fn guest_cpuid(vm: &KvmVm, profile: &HostProfile) -> Result<kvm_bindings::CpuId, VmmError> {
    let mut cpuid = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(crate::kvm::vm::ioctl_err("KVM_GET_SUPPORTED_CPUID"))?;
    profile.filter_cpuid(cpuid.as_mut_slice());
    if let Some(pv) = cpuid.as_slice().iter().find(|e| e.function == 0x4000_0001) {
        log::info!(
            "KVM paravirt features for the guest (CPUID 0x40000001 eax): {:#x}",
            pv.eax
        );
    }
    Ok(cpuid)
}

/// A VM whose memory, devices and vCPUs are ready: booted or restored from a snapshot.
pub(crate) struct Launch {
    pub config: VmConfig,
    pub vm: KvmVm,
    pub exit: Arc<ExitSignal>,
    pub io_bus: Bus,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub virtio: VirtioBus,
    pub vcpu_fds: Vec<VcpuFd>,
    pub info: VmInfo,
    pub vmm_emulation: bool,
}

/// Starts the event loop and one thread per vCPU.
pub(crate) fn launch(l: Launch) -> Result<RunningVm, VmmError> {
    let Launch {
        config,
        vm,
        exit,
        io_bus,
        serial,
        virtio,
        vcpu_fds,
        info,
        vmm_emulation,
    } = l;
    let filters = if config.seccomp {
        crate::seccomp::prepare_process();
        Some(filters_for(event_thread_needs(&virtio.devices))?)
    } else {
        log::warn!("seccomp disabled (--no-seccomp)");
        None
    };
    register_kick_handler()?;
    let rip_profile = match &config.rip_profile {
        Some(path) => Some(RipProfile {
            file: std::fs::File::create(path).map_err(|source| VmmError::Profile {
                path: path.clone(),
                source,
            })?,
            samples: RipHistogram::default(),
            sampler: None,
        }),
        None => None,
    };

    let mem = vm.mem.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let VirtioBus {
        bus: mmio_bus,
        subscribers,
        devices,
        transports,
        ..
    } = virtio;
    let exits = Arc::new(ExitCounters::default());
    let mut running = RunningVm {
        exits: exits.clone(),
        metrics_seq: 0,
        exit: exit.clone(),
        stop: stop.clone(),
        vcpus: Vec::new(),
        event_loop: None,
        info,
        finished: None,
        vm: Some(vm),
        profile: rip_profile,
        devices,
        transports,
        serial,
        config,
    };
    running.event_loop = Some(spawn_event_loop(subscribers, filters.as_ref(), &exit)?);
    let io_bus = Arc::new(io_bus);
    let mmio_bus = Arc::new(mmio_bus);
    for (index, fd) in (0u8..).zip(vcpu_fds) {
        let runner = VcpuRunner {
            index,
            fd,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            mem: mem.clone(),
            exit: exit.clone(),
            stop: stop.clone(),
            seccomp: filters.as_ref().map(|f| Arc::new(f.vcpu.clone())),
            rip_samples: running.profile.as_ref().map(|p| p.samples.clone()),
            vmm_emulation,
            vmm_emulated: 0,
            exits: exits.clone(),
        };
        let name = format!("vcpu{index}");
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || runner.run())
            .map_err(|source| VmmError::Spawn { name, source })?;
        running.vcpus.push(handle);
    }
    if let Some(profile) = running.profile.as_mut() {
        use std::os::unix::thread::JoinHandleExt;
        let threads = running.vcpus.iter().map(|h| h.as_pthread_t()).collect();
        let filter = filters.as_ref().map(|f| f.vmm.clone());
        let delay = running.config.rip_profile_after;
        let sampler = Sampler::start(threads, kick_signal(), SAMPLE_INTERVAL, delay, filter)
            .map_err(|source| VmmError::Spawn {
                name: "vmm-sampler".to_string(),
                source,
            })?;
        profile.sampler = Some(sampler);
    }
    Ok(running)
}

pub(crate) fn console_output(
    console: &ConsoleConfig,
    max_bytes: Option<u64>,
) -> Result<ConsoleOutput, VmmError> {
    Ok(match console {
        ConsoleConfig::Stdout => Box::new(std::io::stdout()),
        ConsoleConfig::Discard => Box::new(std::io::sink()),
        ConsoleConfig::File(path) => {
            // Append mode, so a cut back to empty (`CappedConsole`) goes on at the new end.
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .and_then(|f| f.set_len(0).map(|()| f))
                .map_err(|source| VmmError::Console {
                    path: path.clone(),
                    source,
                })?;
            match max_bytes {
                Some(max) => Box::new(crate::console::CappedConsole::new(file, max)),
                None => Box::new(file),
            }
        }
    })
}

/// The serial port's interrupt: an eventfd registered as a KVM irqfd.
pub(crate) fn serial_irq(vm: &KvmVm) -> Result<EventFd, VmmError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::EventFd {
        what: "the serial IRQ",
        source,
    })?;
    vm.fd
        .register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(|source| VmmError::Register {
            what: format!("serial irqfd (IRQ {SERIAL_IRQ})"),
            source,
        })?;
    Ok(serial_irq)
}

/// Serial port and i8042 on the port-I/O bus.
pub(crate) fn legacy_bus(
    serial: SerialDevice,
    exit: &Arc<ExitSignal>,
) -> Result<(Bus, Arc<Mutex<SerialDevice>>), VmmError> {
    let mut bus = Bus::new();
    let serial = Arc::new(Mutex::new(serial));
    bus.insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
    bus.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )?;
    Ok((bus, serial))
}

/// One 4 KiB virtio-mmio window and one IRQ per device; QueueNotify as ioeventfds.
pub(crate) fn virtio_bus(
    vm: &KvmVm,
    devices: Vec<VirtioDeviceHandle>,
) -> Result<VirtioBus, VmmError> {
    let max = (IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;
    if devices.len() > max {
        return Err(VmmError::TooManyDevices(devices.len()));
    }
    let mut bus = Bus::new();
    let mut slots = Vec::new();
    let mut subscribers = Vec::new();
    let mut owned = Vec::new();
    let mut transports = Vec::new();
    for (i, handle) in devices.into_iter().enumerate() {
        let slot = MmioDeviceSlot {
            base: VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SIZE,
            size: VIRTIO_MMIO_SIZE,
            irq: VIRTIO_IRQ_BASE + i as u32,
        };
        {
            let dev = handle.device.lock().unwrap_or_else(|e| e.into_inner());
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                let addr = IoEventAddress::Mmio(slot.base + REG_QUEUE_NOTIFY);
                vm.fd
                    .register_ioevent(evt, &addr, queue as u32)
                    .map_err(|source| VmmError::Register {
                        what: format!("ioeventfd for queue {queue} at {:#x}", slot.base),
                        source,
                    })?;
            }
            vm.fd
                .register_irqfd(&dev.interrupt_trigger().irq_evt, slot.irq)
                .map_err(|source| VmmError::Register {
                    what: format!("irqfd for IRQ {}", slot.irq),
                    source,
                })?;
        }
        owned.push(handle.device.clone());
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            handle.device,
            vm.mem.clone(),
        )));
        bus.insert(transport.clone(), slot.base, slot.size)?;
        transports.push(transport);
        slots.push(slot);
        subscribers.extend(handle.subscriber);
    }
    Ok(VirtioBus {
        bus,
        slots,
        subscribers,
        devices: owned,
        transports,
    })
}

pub(crate) struct VirtioBus {
    pub bus: Bus,
    pub slots: Vec<MmioDeviceSlot>,
    pub subscribers: Vec<SharedSubscriber>,
    /// In bus order; a snapshot saves and restores their state.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// Kept by `RunningVm` so devices are dropped on the tearing-down thread, not on
    /// whichever vCPU or event thread happens to release them last (their seccomp filters
    /// do not allow what a device's `Drop` may do, e.g. removing its socket).
    pub devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
}

/// Ends the event loop when its eventfd fires.
struct LoopStop {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for LoopStop {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("event loop: cannot watch its stop eventfd: {e}");
        }
    }
}

fn spawn_event_loop(
    subscribers: Vec<SharedSubscriber>,
    filters: Option<&ThreadFilters>,
    exit: &Arc<ExitSignal>,
) -> Result<(JoinHandle<()>, EventFd), VmmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::EventFd {
        what: "the event loop stop",
        source,
    })?;
    let thread_evt = evt.try_clone().map_err(|source| VmmError::EventFd {
        what: "the event loop stop",
        source,
    })?;
    let filter = filters.map(|f| f.vmm.clone());
    let exit = exit.clone();
    let name = "vmm-events".to_string();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let fail = |message: String| {
                log::error!("event loop: {message}");
                exit.request(ExitReason::EventLoopFailed { message });
            };
            let stopped = Arc::new(AtomicBool::new(false));
            let mut manager = match EventManager::<SharedSubscriber>::new() {
                Ok(m) => m,
                Err(e) => return fail(format!("creating the event manager: {e}")),
            };
            manager.add_subscriber(Arc::new(Mutex::new(LoopStop {
                evt: thread_evt,
                stopped: stopped.clone(),
            })));
            for sub in subscribers {
                manager.add_subscriber(sub);
            }
            if let Some(filter) = &filter {
                if let Err(e) = install(filter) {
                    return fail(vessel_protocol::errors::chain(&e));
                }
            }
            while !stopped.load(Ordering::Acquire) {
                if let Err(e) = manager.run() {
                    return fail(format!("epoll: {e}"));
                }
            }
        })
        .map_err(|source| VmmError::Spawn { name, source })?;
    Ok((handle, evt))
}

const SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// The RIP sampling profiler's state (`VmConfig::rip_profile`).
pub(crate) struct RipProfile {
    file: std::fs::File,
    samples: RipHistogram,
    sampler: Option<Sampler>,
}

impl RipProfile {
    fn finish(mut self) {
        if let Some(mut sampler) = self.sampler.take() {
            sampler.stop();
        }
        let top: Vec<String> = self
            .samples
            .sorted()
            .iter()
            .take(10)
            .map(|(rip, n)| format!("{rip:#x}:{n}"))
            .collect();
        log::info!("RIP profile, top samples: {}", top.join(" "));
        if let Err(e) = self.samples.write_to(&mut self.file) {
            log::error!("writing the RIP profile: {e}");
        }
    }
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) stop: Arc<AtomicBool>,
    /// Each returns its vCPU fd when it ends (a snapshot saves the vCPUs from them).
    pub(crate) vcpus: Vec<JoinHandle<VcpuFd>>,
    pub(crate) event_loop: Option<(JoinHandle<()>, EventFd)>,
    pub(crate) info: VmInfo,
    pub(crate) finished: Option<ExitReason>,
    /// Kept until the vCPU threads are gone.
    pub(crate) vm: Option<KvmVm>,
    pub(crate) profile: Option<RipProfile>,
    pub(crate) devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    pub(crate) transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    /// What the VM was booted with (a snapshot records it).
    pub(crate) config: VmConfig,
    /// vCPU exits by kind, all vCPUs together.
    pub(crate) exits: Arc<ExitCounters>,
    /// Records [`RunningVm::metrics`] has made.
    pub(crate) metrics_seq: u64,
}

/// How long teardown keeps kicking a vCPU thread before giving up on it.
const KICK_TIMEOUT: Duration = Duration::from_secs(5);

impl RunningVm {
    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    /// The VM's counters now: vCPU exits by kind and each virtio device's counters, by the
    /// device's name (`net`, `vsock`, `fs`).
    pub fn metrics(&mut self) -> VmmMetrics {
        self.metrics_seq += 1;
        let mut m = VmmMetrics {
            seq: self.metrics_seq,
            vcpu_exits: self.exits.snapshot(),
            devices: Default::default(),
        };
        for d in &self.devices {
            let d = d.lock().unwrap_or_else(|e| e.into_inner());
            let counters = d.counters();
            if !counters.is_empty() {
                let name = device_name(d.device_type());
                let entry = m.devices.entry(name).or_default();
                for (k, v) in counters {
                    *entry.entry(k.to_string()).or_default() += v;
                }
            }
        }
        m
    }

    pub fn stopper(&self) -> VmStopper {
        VmStopper(self.exit.clone())
    }

    /// Readable when the VM wants to stop (for callers with their own poll loop).
    pub fn exit_fd(&self) -> RawFd {
        self.exit.event().as_raw_fd()
    }

    /// Blocks until the VM stops (guest power-off, failure or `stop`), then tears it down.
    pub fn wait(mut self) -> ExitReason {
        self.wait_for_exit(None);
        self.teardown()
    }

    /// Like [`RunningVm::wait`] with a timeout; `None` if the VM still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitReason> {
        if let Some(reason) = &self.finished {
            return Some(reason.clone());
        }
        self.wait_for_exit(Some(timeout)).then(|| self.teardown())
    }

    /// Stops the VM and waits for its threads.
    pub fn stop(self) -> ExitReason {
        self.exit.request(ExitReason::Stopped);
        self.wait()
    }

    fn wait_for_exit(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.exit.reason().is_some() {
                return true;
            }
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX)
                }
            };
            if poll_readable(self.exit_fd(), ms) && self.exit.reason().is_none() {
                // Written without a reason: a termination signal (see `signals`).
                self.exit.request(ExitReason::Stopped);
            }
        }
    }

    /// Takes every vCPU out of KVM_RUN and joins its thread; returns the fds of the vCPUs
    /// that stopped (each completed its pending I/O first, so its state is consistent).
    pub(crate) fn stop_vcpus(&mut self) -> Vec<VcpuFd> {
        // The sampler signals vCPU threads: it must be gone before they are joined.
        if let Some(sampler) = self.profile.as_mut().and_then(|p| p.sampler.as_mut()) {
            sampler.stop();
        }
        self.stop.store(true, Ordering::Release);
        let mut fds = Vec::new();
        for handle in self.vcpus.drain(..) {
            let name = handle.thread().name().unwrap_or("vcpu").to_string();
            let start = Instant::now();
            while !handle.is_finished() && start.elapsed() < KICK_TIMEOUT {
                let _ = handle.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                match handle.join() {
                    Ok(fd) => fds.push(fd),
                    Err(_) => log::error!("{name} panicked"),
                }
            } else {
                log::error!("{name} did not stop within {KICK_TIMEOUT:?}; leaving it");
            }
        }
        fds
    }

    /// Stops and joins the device event loop: devices no longer change after this.
    pub(crate) fn stop_event_loop(&mut self) {
        if let Some((handle, evt)) = self.event_loop.take() {
            let _ = evt.write(1);
            if handle.join().is_err() {
                log::error!("event loop thread panicked");
            }
        }
    }

    pub(crate) fn teardown(&mut self) -> ExitReason {
        if let Some(reason) = &self.finished {
            return reason.clone();
        }
        self.stop_vcpus();
        self.stop_event_loop();
        self.transports.clear();
        self.devices.clear();
        self.vm = None;
        if let Some(profile) = self.profile.take() {
            profile.finish();
        }
        let reason = self.exit.reason().unwrap_or(ExitReason::Stopped);
        log::info!("VM stopped: {reason}");
        self.finished = Some(reason.clone());
        reason
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if self.finished.is_none() {
            self.exit.request(ExitReason::Stopped);
            self.teardown();
        }
    }
}

/// True if `fd` became readable within `timeout_ms` (-1: no timeout).
fn poll_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}
