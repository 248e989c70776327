//! 16550 UART at 0x3f8 (IRQ 4) on `vm-superio`. Output goes to a file or stdout, unbuffered
//! (each byte already cost a VM exit, and nothing is lost if the VMM dies). Input is not
//! wired yet.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;
use crate::log_limit::LogLimiter;

static SERIAL_ERRORS: LogLimiter = LogLimiter::new(5, std::time::Duration::from_secs(10));

/// Raises the serial IRQ through an eventfd registered as a KVM irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub type ConsoleOutput = Box<dyn Write + Send>;

pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, ConsoleOutput>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: ConsoleOutput) -> Self {
        Self {
            serial: Serial::new(EventFdTrigger(irq), out),
        }
    }

    pub fn irq_evt(&self) -> &EventFd {
        &self.serial.interrupt_evt().0
    }

    /// The UART's registers and receive FIFO (snapshots).
    pub fn save_state(&self) -> SerialSnapshot {
        let s = self.serial.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in `state` (raises its interrupt at once if one was pending).
    pub fn restore(
        irq: EventFd,
        out: ConsoleOutput,
        state: &SerialSnapshot,
    ) -> Result<Self, String> {
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let serial = Serial::from_state(&s, EventFdTrigger(irq), NoEvents, out)
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(Self { serial })
    }
}

/// `vm_superio::SerialState`, serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |off| self.serial.read(off));
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.serial.write(off, value) {
            crate::log_limited!(
                SERIAL_ERRORS,
                log::Level::Warn,
                "serial console write: {e:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let sink = Sink::default();
        let mut dev = SerialDevice::new(EventFd::new(0).expect("evt"), Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().expect("lock").as_slice(), b"hi\n");
        // Line status register: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Out-of-range and empty accesses do nothing harmful.
        dev.write(1000, &[1]);
        dev.write(0, &[]);
        let mut none: [u8; 0] = [];
        dev.read(0, &mut none);
    }
}
