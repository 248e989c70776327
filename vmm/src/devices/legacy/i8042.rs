//! A minimal i8042 keyboard controller: just enough for the guest's reboot (`reboot=k`
//! writes 0xfe, "pulse reset line", to port 0x64), which we treat as power-off.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitReason, ExitSignal};

/// Offsets from port 0x60.
#[cfg(test)]
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: no data waiting, input buffer empty (so `kb_wait()` returns at once);
        // data port reads 0. Nothing else to emulate: no keyboard is attached.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            log::info!("guest requested reset through the i8042; stopping the VM");
            self.exit.request(ExitReason::GuestReset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_exit() {
        let exit = Arc::new(ExitSignal::new().expect("eventfd"));
        let mut dev = I8042::new(exit.clone());
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(DATA_OFFSET, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }
}
