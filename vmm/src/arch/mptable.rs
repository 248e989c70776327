//! Intel MultiProcessor table, so that a guest without ACPI finds its CPUs, the IOAPIC and
//! how ISA IRQs are routed.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IRQ_MAX, MAX_VCPUS, MPTABLE_MAX_SIZE, MPTABLE_START};

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 (as Firecracker reports).
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_FPU: u32 = 0x001;
const CPU_FEATURE_APIC: u32 = 0x200;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in the MP table (1..={MAX_VCPUS})")]
    TooManyCpus(u8),
    #[error("writing the MP table to guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The MP table bytes for `num_cpus` vCPUs, laid out for guest address `MPTABLE_START`.
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let table_addr = MPTABLE_START as u32 + 16;

    let mut entries: Vec<u8> = Vec::new();
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION]);
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.push(flags);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    for irq in 0..=IRQ_MAX as u8 {
        // type, irqtype, irqflag (u16, default polarity/trigger), srcbus, srcbusirq, dstapic, dstirq
        entries.extend_from_slice(&[ENTRY_INTSRC, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // Local interrupts: ExtINT to LINT0 of the BSP, NMI to LINT1 of every CPU.
    entries.extend_from_slice(&[ENTRY_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = u16::from(num_cpus) + 1 + 1 + (IRQ_MAX as u16 + 1) + 2;

    let mut header: Vec<u8> = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    let length = (44 + entries.len()) as u16;
    header.extend_from_slice(&length.to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, below
    header.extend_from_slice(b"VESSEL  ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&0u32.to_le_bytes()); // oemptr
    header.extend_from_slice(&0u16.to_le_bytes()); // oemsize
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length/checksum
    debug_assert_eq!(header.len(), 44);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf: Vec<u8> = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&table_addr.to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(MPC_SPEC);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0u8; 5]); // feature bytes: 0 = configuration table present
    mpf[10] = checksum(&mpf);

    let mut out = mpf;
    out.extend_from_slice(&table);
    if out.len() > MPTABLE_MAX_SIZE {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    Ok(out)
}

/// Writes the MP table for `num_cpus` at `MPTABLE_START`.
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        let t = build(2).expect("mptable");
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        assert_eq!(ptr as u64, MPTABLE_START + 16);
        assert_eq!(&t[16..20], b"PCMP");
        let len = u16::from_le_bytes([t[20], t[21]]) as usize;
        assert_eq!(16 + len, t.len());
        assert_eq!(sum(&t[16..16 + len]), 0);
    }

    #[test]
    fn lists_every_cpu_with_one_bsp() {
        let n = 4u8;
        let t = build(n).expect("mptable");
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, u16::from(n) + 2 + 24 + 2);
        let first = 16 + 44;
        for cpu in 0..n as usize {
            let e = &t[first + cpu * 20..first + (cpu + 1) * 20];
            assert_eq!(e[0], ENTRY_PROCESSOR);
            assert_eq!(e[1] as usize, cpu);
            assert_eq!(e[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(e[3] & CPU_BOOTPROCESSOR != 0, cpu == 0);
        }
        let ioapic = first + n as usize * 20 + 8;
        assert_eq!(t[ioapic], ENTRY_IOAPIC);
        assert_eq!(t[ioapic + 1], n + 1);
        assert_eq!(
            u32::from_le_bytes([t[ioapic + 4], t[ioapic + 5], t[ioapic + 6], t[ioapic + 7]]),
            IOAPIC_ADDR as u32
        );
    }

    #[test]
    fn largest_table_fits_in_the_ebda() {
        assert!(build(MAX_VCPUS).expect("mptable").len() <= MPTABLE_MAX_SIZE);
        assert!(matches!(build(0), Err(MptableError::TooManyCpus(0))));
        assert!(build(MAX_VCPUS + 1).is_err());
    }
}
