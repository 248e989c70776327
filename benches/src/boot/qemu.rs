//! Configuring qemu like vessel-vmm: the CPUID bits and kernel command line vessel-vmm chose
//! for this host (read from its info log), mapped to qemu's options.

use std::path::Path;

/// What vessel-vmm logged about its choices for this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmmChoices {
    pub removed_features: Option<Vec<String>>,
    pub cmdline: Option<String>,
}

impl VmmChoices {
    /// Takes what a vessel-vmm log line says (`CPUID features removed: [a,b]`,
    /// `kernel command line: ...`).
    pub fn absorb(&mut self, line: &str) {
        if let Some(rest) = line.split("CPUID features removed: [").nth(1) {
            if let Some(list) = rest.split(']').next() {
                self.removed_features = Some(
                    list.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            }
        }
        if let Some(rest) = line.split("kernel command line: ").nth(1) {
            self.cmdline = Some(rest.trim().to_string());
        }
    }
}

/// qemu's `-cpu` value for vessel's removed features: `host,-a,-b,...`, plus the names qemu
/// has no switch for (OS-controlled bits like `osxsave`, which follow `xsave` anyway).
///
/// On KVM-PVM qemu also needs `-arch-capabilities`: with it, qemu aborts at start-up
/// ("failed to set MSR 0x10a", PVM refuses the write). vessel-vmm never writes that MSR.
pub fn qemu_cpu(removed: &[String], pvm: bool) -> (String, Vec<String>) {
    let mut arg = String::from("host");
    if pvm {
        arg.push_str(",-arch-capabilities");
    }
    let mut unmapped = Vec::new();
    for name in removed {
        let q = match name.as_str() {
            "osxsave" | "ospke" => None,
            "sse4_1" => Some("sse4.1".to_string()),
            "sse4_2" => Some("sse4.2".to_string()),
            "kvm_pv_send_ipi" => Some("kvm-pv-ipi".to_string()),
            n => Some(n.replace('_', "-")),
        };
        match q {
            Some(q) => {
                arg.push_str(",-");
                arg.push_str(&q);
            }
            None => unmapped.push(name.clone()),
        }
    }
    (arg, unmapped)
}

/// The kernel command line for qemu: vessel's, without its `virtio_mmio.device=` slots
/// (qemu's microvm announces its own transports).
pub fn qemu_append(vessel_cmdline: &str) -> String {
    vessel_cmdline
        .split_whitespace()
        .filter(|w| !w.starts_with("virtio_mmio.device="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The qemu arguments (PLATFORM.md's microvm line).
pub fn qemu_args(
    kernel: &Path,
    initrd: &Path,
    mem_mib: u32,
    vcpus: u32,
    cpu: &str,
    append: &str,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off",
        "-enable-kvm",
        "-cpu",
        cpu,
        "-m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(mem_mib.to_string());
    a.push("-smp".into());
    a.push(vcpus.to_string());
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-kernel",
    ] {
        a.push(s.into());
    }
    a.push(kernel.display().to_string());
    a.push("-initrd".into());
    a.push(initrd.display().to_string());
    a.push("-append".into());
    a.push(append.to_string());
    a.push("-no-reboot".into());
    a
}

/// Shell-style rendering of a command, for the report.
pub fn show_command(program: &Path, args: &[String]) -> String {
    let quote = |s: &str| {
        if s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
        {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_vmm_choices_from_its_log() {
        let mut c = VmmChoices::default();
        c.absorb("vessel-vmm [main] INFO  host kvm-pvm; CPUID features removed: [cx16,xsave,osxsave,sse4_1,kvm_pv_unhalt]; boot entry linux64 at 0x1000000; 1 vCPU(s), 128 MiB");
        c.absorb("vessel-vmm [main] INFO  kernel command line: console=ttyS0 reboot=k quiet noxsave virtio_mmio.device=4K@0xd0000000:5 vessel.log=info");
        c.absorb("unrelated line");
        assert_eq!(
            c.removed_features.as_deref().unwrap(),
            ["cx16", "xsave", "osxsave", "sse4_1", "kvm_pv_unhalt"]
        );
        let (cpu, unmapped) = qemu_cpu(c.removed_features.as_deref().unwrap(), false);
        assert_eq!(cpu, "host,-cx16,-xsave,-sse4.1,-kvm-pv-unhalt");
        assert_eq!(unmapped, ["osxsave"]);
        let (cpu, _) = qemu_cpu(&["cx16".to_string()], true);
        assert_eq!(cpu, "host,-arch-capabilities,-cx16");
        assert_eq!(
            qemu_append(c.cmdline.as_deref().unwrap()),
            "console=ttyS0 reboot=k quiet noxsave vessel.log=info"
        );
        let mut none = VmmChoices::default();
        none.absorb("host hardware; CPUID features removed: []; boot entry pvh");
        assert_eq!(none.removed_features, Some(vec![]));
        assert_eq!(qemu_cpu(&[], false).0, "host");
    }

    #[test]
    fn commands_render_quoted() {
        let args = qemu_args(
            Path::new("/k/vmlinux"),
            Path::new("/k/initrd.cpio"),
            128,
            1,
            "host,-cx16",
            "console=ttyS0 quiet",
        );
        let q = show_command(Path::new("/usr/bin/qemu-system-x86_64"), &args);
        assert!(q.contains("-cpu host,-cx16 -m 128 -smp 1"), "{q}");
        assert!(
            q.contains("-kernel /k/vmlinux -initrd /k/initrd.cpio"),
            "{q}"
        );
        assert!(
            q.contains("-append 'console=ttyS0 quiet' -no-reboot"),
            "{q}"
        );
        assert_eq!(
            show_command(Path::new("/x"), &["it's".to_string()]),
            r"/x 'it'\''s'"
        );
    }
}
