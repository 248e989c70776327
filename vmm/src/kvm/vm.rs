//! The KVM VM: /dev/kvm, guest memory (anonymous, MAP_NORESERVE), irqchip, PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{
    mmap::MmapRegionBuilder, GuestAddress, GuestMemory as _, GuestMemoryRegion, GuestRegionMmap,
};

use crate::arch::layout::{ram_regions, KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::devices::virtio::device::GuestMemory;

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel/kvm_amd/kvm_pvm)")]
    NoKvmDevice,
    #[error("no permission to open /dev/kvm (run as root or join the kvm group)")]
    NoPermission,
    #[error("opening /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    #[error("{what}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("allocating {size} bytes of guest memory at {addr:#x}")]
    GuestMemory {
        addr: u64,
        size: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("building the guest memory map: {0}")]
    GuestMemoryMap(String),
}

pub(crate) fn ioctl_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

fn classify_open_error(e: kvm_ioctls::Error) -> KvmError {
    match e.errno() {
        libc::ENOENT => KvmError::NoKvmDevice,
        libc::EACCES | libc::EPERM => KvmError::NoPermission,
        _ => KvmError::Open(e),
    }
}

/// Opens /dev/kvm with errors that say what is wrong.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(classify_open_error)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion(version));
    }
    Ok(kvm)
}

/// Anonymous, private, MAP_NORESERVE guest RAM for `mem_size` bytes.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemory, KvmError> {
    let mut regions = Vec::new();
    for (addr, size) in ram_regions(mem_size) {
        let mapping = MmapRegionBuilder::new(size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| KvmError::GuestMemory { addr, size, source })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(addr))
            .ok_or_else(|| KvmError::GuestMemoryMap(format!("region at {addr:#x} overflows")))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| KvmError::GuestMemoryMap(e.to_string()))
}

/// A VM with memory, an in-kernel irqchip and PIT.
pub struct KvmVm {
    pub kvm: Kvm,
    pub fd: VmFd,
    pub mem: GuestMemory,
}

impl KvmVm {
    pub fn new(mem_size: u64) -> Result<Self, KvmError> {
        Self::with_memory(create_guest_memory(mem_size)?)
    }

    /// A VM over already mapped guest RAM (e.g. a snapshot's memory file).
    pub fn with_memory(mem: GuestMemory) -> Result<Self, KvmError> {
        let kvm = open_kvm()?;
        let fd = kvm.create_vm().map_err(ioctl_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(ioctl_err("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(ioctl_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        for (slot, region) in mem.iter().enumerate() {
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the mapping described by `desc` is owned by `mem`, which this struct keeps
            // alive as long as the VM fd, and KVM only accesses it while the VM exists.
            unsafe { fd.set_user_memory_region(desc) }
                .map_err(ioctl_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        fd.create_irq_chip()
            .map_err(ioctl_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl_err("KVM_CREATE_PIT2"))?;
        Ok(Self { kvm, fd, mem })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn open_errors_say_what_is_wrong() {
        let missing = classify_open_error(kvm_ioctls::Error::new(libc::ENOENT));
        assert!(matches!(missing, KvmError::NoKvmDevice));
        assert!(missing.to_string().contains("/dev/kvm does not exist"));
        let denied = classify_open_error(kvm_ioctls::Error::new(libc::EACCES));
        assert!(matches!(denied, KvmError::NoPermission));
        assert!(denied.to_string().contains("no permission"));
        assert!(matches!(
            classify_open_error(kvm_ioctls::Error::new(libc::EIO)),
            KvmError::Open(_)
        ));
    }

    #[test]
    fn guest_memory_is_split_around_the_mmio_hole() {
        // MAP_NORESERVE: 4 GiB of address space costs nothing until touched.
        let mem = create_guest_memory(4 << 30).expect("memory");
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress(0xcfff_ffff)));
        assert!(!mem.address_in_range(GuestAddress(0xd000_0000)));
        assert!(mem.address_in_range(GuestAddress(1 << 32)));
        mem.write_obj(0xabu8, GuestAddress((1 << 32) + 5))
            .expect("write high");
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress((1 << 32) + 5))
                .expect("read"),
            0xab
        );
    }
}
