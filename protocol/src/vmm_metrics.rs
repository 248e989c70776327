//! The VMM's counters, as it hands them to the host: a JSON record it rewrites in place every
//! [`PERIOD`] in a file the runtime opened for it (`--metrics-fd`, the sandbox's
//! [`FILE_NAME`]), and that `vessel monitor` reads. Firecracker's model (a metrics file the
//! VMM flushes), without a socket into the jailed VMM.
//!
//! Every record is padded to [`RECORD_LEN`] bytes and written at offset 0 in one `write`, so
//! the file never shrinks and a reader never sees the tail of an older, longer record. A
//! read that raced a write does not parse: [`decode`] says so and the reader tries again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The file in the sandbox's state directory.
pub const FILE_NAME: &str = "vmm-metrics.json";
/// Every record's length (JSON, then spaces, then a newline).
pub const RECORD_LEN: usize = 8192;
/// How often the VMM rewrites it (and once more when the VM stops).
pub const PERIOD: Duration = Duration::from_secs(2);

/// One record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmMetrics {
    /// Counts the records written (so a reader can tell a fresh one).
    pub seq: u64,
    /// vCPU exits to the VMM by kind (`io_in`, `mmio_write`, `hlt`, …), all vCPUs together.
    pub vcpu_exits: BTreeMap<String, u64>,
    /// Per virtio device (`net`, `vsock`, `fs`): its counters by name.
    pub devices: BTreeMap<String, BTreeMap<String, u64>>,
}

/// A record that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics record of {0} bytes is longer than {RECORD_LEN}")]
    TooLong(usize),
    #[error("metrics record does not parse (torn by a concurrent write, or not ours)")]
    Malformed(#[source] serde_json::Error),
}

/// The record as written: JSON padded to [`RECORD_LEN`].
pub fn encode(m: &VmmMetrics) -> Result<Vec<u8>, MetricsError> {
    let mut out = serde_json::to_vec(m).map_err(MetricsError::Malformed)?;
    if out.len() >= RECORD_LEN {
        return Err(MetricsError::TooLong(out.len()));
    }
    out.resize(RECORD_LEN - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

/// Parses what a reader found in the file (at most [`RECORD_LEN`] bytes are ever needed).
pub fn decode(bytes: &[u8]) -> Result<VmmMetrics, MetricsError> {
    if bytes.len() > RECORD_LEN {
        return Err(MetricsError::TooLong(bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(MetricsError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmmMetrics {
        let mut m = VmmMetrics {
            seq: 3,
            ..Default::default()
        };
        m.vcpu_exits.insert("io_out".into(), 12);
        m.devices
            .entry("net".into())
            .or_default()
            .insert("tx_bytes".into(), 1500);
        m
    }

    #[test]
    fn records_are_fixed_length_and_round_trip() {
        let m = sample();
        let bytes = encode(&m).unwrap();
        assert_eq!(bytes.len(), RECORD_LEN);
        assert_eq!(decode(&bytes).unwrap(), m);
        // A shorter record over a longer one leaves nothing of the old behind.
        let mut file = encode(&VmmMetrics { seq: 9, ..sample() }).unwrap();
        file[..RECORD_LEN].copy_from_slice(&encode(&VmmMetrics::default()).unwrap());
        assert_eq!(decode(&file).unwrap(), VmmMetrics::default());
    }

    #[test]
    fn torn_oversized_and_foreign_records_are_errors() {
        // A reader that saw the head of a new record over the rest of an older one.
        let old = encode(&sample()).unwrap();
        let mut new = sample();
        new.vcpu_exits.insert("hlt".into(), 5);
        let new = encode(&new).unwrap();
        let mut torn = old.clone();
        torn[..30].copy_from_slice(&new[..30]);
        assert!(matches!(decode(&torn), Err(MetricsError::Malformed(_))));
        assert!(matches!(
            decode(&vec![b' '; RECORD_LEN + 1]),
            Err(MetricsError::TooLong(_))
        ));
        assert!(decode(b"[1,2]").is_err());
        let mut huge = VmmMetrics::default();
        for i in 0..1000 {
            huge.vcpu_exits.insert(format!("kind{i}"), u64::MAX);
        }
        assert!(matches!(encode(&huge), Err(MetricsError::TooLong(_))));
    }
}
