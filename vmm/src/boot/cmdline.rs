//! The guest kernel command line: the VMM's base, the host profile's options, one
//! `virtio_mmio.device=` per device, then the user's additions (last, so they win).

use crate::arch::layout::CMDLINE_MAX_SIZE;

/// Options every guest gets. `reboot=k`: the guest's reboot goes through the i8042 reset,
/// which is our power-off; `panic=-1`: reboot (= power off) at once on a panic.
pub const BASE_CMDLINE: &[&str] = &[
    "console=ttyS0",
    "reboot=k",
    "panic=-1",
    "pci=off",
    "nomodule",
    // One UART only: probing absent ones costs port exits.
    "8250.nr_uarts=1",
    // Every console byte is a port exit; warnings and panics still print. `--cmdline
    // loglevel=7` (appended last) brings the boot log back.
    "quiet",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("kernel command line is {0} bytes, the limit is {max}", max = CMDLINE_MAX_SIZE - 1)]
    TooLong(usize),
    #[error("kernel command line contains a NUL byte or a non-ASCII character")]
    InvalidCharacter,
}

/// A virtio-mmio device as the kernel learns about it from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceSlot {
    pub base: u64,
    pub size: u64,
    pub irq: u32,
}

impl MmioDeviceSlot {
    pub fn cmdline_option(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            self.size / 1024,
            self.base,
            self.irq
        )
    }
}

/// Builds the full command line.
pub fn compose(
    host_options: &[String],
    devices: &[MmioDeviceSlot],
    user: &str,
) -> Result<String, CmdlineError> {
    let mut parts: Vec<String> = BASE_CMDLINE.iter().map(|s| s.to_string()).collect();
    parts.extend(host_options.iter().filter(|s| !s.is_empty()).cloned());
    parts.extend(devices.iter().map(MmioDeviceSlot::cmdline_option));
    let user = user.trim();
    if !user.is_empty() {
        parts.push(user.to_string());
    }
    let line = parts.join(" ");
    if line.bytes().any(|b| b == 0 || !b.is_ascii()) {
        return Err(CmdlineError::InvalidCharacter);
    }
    if line.len() >= CMDLINE_MAX_SIZE {
        return Err(CmdlineError::TooLong(line.len()));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_base_host_devices_user() {
        let host = vec!["noxsave".to_string(), "clearcpuid=cx16,popcnt".to_string()];
        let devs = [
            MmioDeviceSlot {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDeviceSlot {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let line = compose(&host, &devs, "  init=/init quiet ").expect("cmdline");
        assert!(line.starts_with("console=ttyS0 reboot=k panic=-1 "));
        assert!(line.ends_with(
            "noxsave clearcpuid=cx16,popcnt virtio_mmio.device=4K@0xd0000000:5 \
             virtio_mmio.device=4K@0xd0001000:6 init=/init quiet"
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            compose(&[], &[], &long),
            Err(CmdlineError::TooLong(_))
        ));
        assert_eq!(
            compose(&[], &[], "a\0b"),
            Err(CmdlineError::InvalidCharacter)
        );
        assert_eq!(compose(&[], &[], "é"), Err(CmdlineError::InvalidCharacter));
        assert_eq!(compose(&[], &[], "").expect("ok"), BASE_CMDLINE.join(" "));
    }
}
