//! GDT entries and the KVM segment registers derived from them.

use kvm_bindings::kvm_segment;

/// Builds a GDT descriptor from access/flags (`0xF0FF` mask: flags nibble + access byte),
/// base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    // With G set the limit counts 4 KiB pages.
    if bit(entry, 55) == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The segment register KVM should hold for GDT entry `entry` at index `table_index`.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// GDT for the 64-bit Linux entry: null, 64-bit code, data, TSS.
pub const GDT_LINUX64: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// GDT for the PVH entry: null, flat 32-bit code, data, TSS.
pub const GDT_PVH: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0x67),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let seg = kvm_segment_from_gdt(GDT_LINUX64[1], 1);
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.type_, 0xb);
        assert_eq!((seg.l, seg.db, seg.g, seg.s, seg.present), (1, 0, 1, 1, 1));
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn flat_32bit_segments() {
        let code = kvm_segment_from_gdt(GDT_PVH[1], 1);
        assert_eq!((code.l, code.db, code.g, code.type_), (0, 1, 1, 0xb));
        assert_eq!(code.limit, 0xffff_ffff);
        let data = kvm_segment_from_gdt(GDT_PVH[2], 2);
        assert_eq!((data.type_, data.selector), (0x3, 16));
        let tss = kvm_segment_from_gdt(GDT_PVH[3], 3);
        assert_eq!((tss.type_, tss.limit, tss.s), (0xb, 0x67, 0));
    }

    #[test]
    fn null_entry_is_unusable() {
        let seg = kvm_segment_from_gdt(0, 0);
        assert_eq!((seg.present, seg.unusable), (0, 1));
    }

    #[test]
    fn base_round_trips() {
        let entry = gdt_entry(0x0093, 0x1234_5678, 0xabcd);
        let seg = kvm_segment_from_gdt(entry, 2);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcd);
    }
}
