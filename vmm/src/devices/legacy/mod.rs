//! Legacy PC devices the Linux guest needs: the 16550 serial console and the i8042 reset line.

pub mod i8042;
pub mod serial;

/// Port ranges (base, length).
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
