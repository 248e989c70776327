//! x86_64 boot-time machine state: memory layout, GDT, registers, MSRs, MP table.

pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
