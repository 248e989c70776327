//! The guest tasks' extended register state (AVX, AVX-512), switched by the VMM on KVM-PVM.
//!
//! KVM-PVM's instruction emulator, which runs the guest kernel, has no XSAVE/XRSTOR, so the
//! guest kernel boots with `noxsave` and saves and restores only the legacy FXSAVE image
//! (x87, XMM0-15) of its tasks. Guest user code runs natively, though, under the host's CR4
//! and XCR0 (user-mode CPUID and XGETBV are not intercepted there: a guest process reads
//! AVX-512 and XCR0 = 0xe7 whatever the VMM and the guest kernel set), so programs use
//! AVX/AVX-512 — glibc 2.36 copies through ZMM16-31 in `memcpy` and `memset` — and the
//! YMM/ZMM upper halves, ZMM16-31 and the opmask registers leaked from one guest task into
//! the next: busybox processes in containers died of SIGSEGV, data was corrupted.
//!
//! Guest-kernel patch 0004 gives every task room for a whole XSAVE image and, when booted with
//! `vessel.xstate_port=PORT`, follows each FXSAVE of a task's registers with
//! `outl(gpa >> 6, PORT)` ([`Op::Save`]) and each FXRSTOR with `outl(gpa >> 6, PORT + 4)`
//! ([`Op::Restore`]), `gpa` being the guest physical address of the task's 4 KiB register
//! image. The vCPU thread answers with KVM_GET_XSAVE / KVM_SET_XSAVE: a save copies the vCPU's
//! XSAVE header and extended components into the image, a restore puts the image's back into
//! the vCPU (keeping the legacy part, which the guest's FXRSTOR just loaded). The guest is not
//! trusted: a restore only takes components KVM offers the guest, and a malformed image resets
//! the extended state instead (KVM_SET_XSAVE validates what is left).

use kvm_bindings::kvm_xsave;

/// First I/O port of the interface (save); restore is `XSTATE_PORT + 4`.
pub const XSTATE_PORT: u16 = 0xe40;

/// Bytes of the register image in each guest task (the guest kernel's
/// `sizeof(union fpregs_state)`), which is also the legacy `kvm_xsave` region.
pub const IMAGE_SIZE: usize = 4096;
/// The legacy FXSAVE area at the start of an XSAVE image; the guest kernel owns it.
pub const LEGACY_SIZE: usize = 512;
/// The XSAVE header after the legacy area.
pub const HEADER_SIZE: usize = 64;
/// Bytes of the image a save writes and a restore reads (from offset [`LEGACY_SIZE`]).
pub const EXTENSION_SIZE: usize = IMAGE_SIZE - LEGACY_SIZE;
/// XSTATE_BV bits of the legacy area: x87 and SSE.
const XFEATURES_FPSSE: u64 = 0b11;
/// `gpa >> 6` in the port value: register images are 64-byte aligned.
const GPA_SHIFT: u32 = 6;

/// What the guest asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Copy the vCPU's extended state into the guest image.
    Save,
    /// Load the guest image's extended state into the vCPU.
    Restore,
}

impl Op {
    /// The operation for an `outl` to `port`, if the port is one of ours.
    pub fn for_port(port: u16) -> Option<Op> {
        match port.checked_sub(XSTATE_PORT)? {
            0 => Some(Op::Save),
            4 => Some(Op::Restore),
            _ => None,
        }
    }
}

/// The guest physical address of the image named by the value of an `outl`; `None` unless
/// the access was 4 bytes wide.
pub fn image_gpa(data: &[u8]) -> Option<u64> {
    let value: [u8; 4] = data.try_into().ok()?;
    Some(u64::from(u32::from_le_bytes(value)) << GPA_SHIFT)
}

fn region_bytes(xsave: &kvm_xsave) -> [u8; IMAGE_SIZE] {
    let mut out = [0u8; IMAGE_SIZE];
    for (chunk, word) in out.chunks_exact_mut(4).zip(xsave.region.iter()) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

fn set_region_bytes(xsave: &mut kvm_xsave, bytes: &[u8; IMAGE_SIZE]) {
    for (word, chunk) in xsave.region.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
}

fn xstate_bv(image: &[u8]) -> u64 {
    let mut bv = [0u8; 8];
    bv.copy_from_slice(&image[LEGACY_SIZE..LEGACY_SIZE + 8]);
    u64::from_le_bytes(bv)
}

/// What a save writes into the guest image at offset [`LEGACY_SIZE`]: the vCPU's XSAVE
/// header and extended area (everything after the legacy part).
pub fn saved_extension(vcpu: &kvm_xsave) -> [u8; EXTENSION_SIZE] {
    let mut out = [0u8; EXTENSION_SIZE];
    out.copy_from_slice(&region_bytes(vcpu)[LEGACY_SIZE..]);
    out
}

/// The `kvm_xsave` a restore hands to KVM: the vCPU's legacy area as it is, the extended
/// components of `extension` (the guest image from offset [`LEGACY_SIZE`]) that `supported`
/// (the XCR0 bits KVM offers the guest) allows. A header with anything but XSTATE_BV set
/// (compacted format, reserved bytes) is not a save of ours: the extended state goes to its
/// init state instead.
pub fn restored(vcpu: &kvm_xsave, extension: &[u8], supported: u64) -> kvm_xsave {
    let mut image = region_bytes(vcpu);
    let current_legacy_bv = xstate_bv(&image) & XFEATURES_FPSSE;
    let ours =
        extension.len() == EXTENSION_SIZE && extension[8..HEADER_SIZE].iter().all(|&b| b == 0);
    let guest_bv = if ours { xstate_bv_of(extension) } else { 0 };
    let bv = current_legacy_bv | (guest_bv & supported & !XFEATURES_FPSSE);
    image[LEGACY_SIZE..].fill(0);
    if ours {
        image[LEGACY_SIZE + HEADER_SIZE..].copy_from_slice(&extension[HEADER_SIZE..]);
    }
    image[LEGACY_SIZE..LEGACY_SIZE + 8].copy_from_slice(&bv.to_le_bytes());
    let mut out = kvm_xsave::default();
    set_region_bytes(&mut out, &image);
    out
}

fn xstate_bv_of(extension: &[u8]) -> u64 {
    let mut bv = [0u8; 8];
    bv.copy_from_slice(&extension[..8]);
    u64::from_le_bytes(bv)
}

/// The XCR0 bits a guest may use according to its CPUID leaf 0xd subleaf 0 (EDX:EAX).
pub fn supported_xcr0(leaf_0xd: Option<(u32, u32)>) -> u64 {
    leaf_0xd.map_or(XFEATURES_FPSSE, |(eax, edx)| {
        u64::from(eax) | (u64::from(edx) << 32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xsave_with(fill: impl Fn(usize) -> u8) -> kvm_xsave {
        let mut bytes = [0u8; IMAGE_SIZE];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = fill(i);
        }
        let mut x = kvm_xsave::default();
        set_region_bytes(&mut x, &bytes);
        x
    }

    fn with_bv(mut x: kvm_xsave, bv: u64) -> kvm_xsave {
        let mut bytes = region_bytes(&x);
        bytes[LEGACY_SIZE..LEGACY_SIZE + HEADER_SIZE].fill(0);
        bytes[LEGACY_SIZE..LEGACY_SIZE + 8].copy_from_slice(&bv.to_le_bytes());
        set_region_bytes(&mut x, &bytes);
        x
    }

    #[test]
    fn ports_and_values() {
        assert_eq!(Op::for_port(XSTATE_PORT), Some(Op::Save));
        assert_eq!(Op::for_port(XSTATE_PORT + 4), Some(Op::Restore));
        assert_eq!(Op::for_port(XSTATE_PORT + 1), None);
        assert_eq!(Op::for_port(XSTATE_PORT - 1), None);
        assert_eq!(Op::for_port(0x3f8), None);
        assert_eq!(image_gpa(&0x0012_3456u32.to_le_bytes()), Some(0x48d_1580));
        assert_eq!(image_gpa(&[1, 2]), None, "only outl");
    }

    #[test]
    fn save_then_restore_round_trips_the_extended_state() {
        // The vCPU of task A: AVX + AVX-512 state in use.
        let a = with_bv(xsave_with(|i| (i % 251) as u8), 0xe7);
        let image_a = saved_extension(&a);
        assert_eq!(xstate_bv_of(&image_a), 0xe7);
        // Task B ran meanwhile; its legacy area (just FXRSTORed for A) is what the vCPU has.
        let b = with_bv(xsave_with(|i| (i % 13) as u8 ^ 0x5a), 0x7);
        let back = region_bytes(&restored(&b, &image_a, 0xe7));
        let (a, b) = (region_bytes(&a), region_bytes(&b));
        assert_eq!(
            back[..LEGACY_SIZE],
            b[..LEGACY_SIZE],
            "legacy area untouched"
        );
        assert_eq!(xstate_bv(&back), 0xe7);
        assert_eq!(back[LEGACY_SIZE + 8..], a[LEGACY_SIZE + 8..]);
    }

    #[test]
    fn restore_keeps_only_what_the_guest_may_use() {
        let vcpu = with_bv(xsave_with(|_| 0x11), 0x3);
        let image = saved_extension(&with_bv(xsave_with(|_| 0x22), 0xffff_ffff_ffff_ffff));
        let back = region_bytes(&restored(&vcpu, &image, 0x7));
        assert_eq!(
            xstate_bv(&back),
            0x7,
            "only AVX added; the vCPU's FP/SSE bits kept"
        );
        let vcpu_init_fp = with_bv(xsave_with(|_| 0x11), 0x2);
        let back = region_bytes(&restored(&vcpu_init_fp, &image, 0xe7));
        assert_eq!(
            xstate_bv(&back),
            0xe6,
            "the legacy bits are the vCPU's, not the image's"
        );
    }

    #[test]
    fn a_malformed_image_resets_the_extended_state() {
        let vcpu = with_bv(xsave_with(|_| 0x11), 0xe7);
        // XCOMP_BV set: compacted format, not a save of ours.
        let mut image = saved_extension(&with_bv(xsave_with(|_| 0x22), 0xe7));
        image[8..16].copy_from_slice(&(1u64 << 63 | 0xe7).to_le_bytes());
        let back = region_bytes(&restored(&vcpu, &image, 0xe7));
        assert_eq!(xstate_bv(&back), 0x3);
        assert!(back[LEGACY_SIZE + 8..].iter().all(|&b| b == 0));
        // Short image.
        let back = region_bytes(&restored(&vcpu, &image[..100], 0xe7));
        assert_eq!(xstate_bv(&back), 0x3);
    }

    #[test]
    fn init_image_resets_the_extended_state() {
        // The guest's init_fpstate: an all-zero header, i.e. every component in init state.
        let vcpu = with_bv(xsave_with(|_| 0x33), 0xe7);
        let back = region_bytes(&restored(&vcpu, &[0u8; EXTENSION_SIZE], 0xe7));
        assert_eq!(xstate_bv(&back), 0x3);
        assert!(back[LEGACY_SIZE + 8..].iter().all(|&b| b == 0));
    }

    #[test]
    fn supported_xcr0_from_cpuid() {
        assert_eq!(supported_xcr0(Some((0xe7, 0))), 0xe7);
        assert_eq!(supported_xcr0(Some((0x7, 0x1))), 0x1_0000_0007);
        assert_eq!(supported_xcr0(None), 0x3);
    }
}
