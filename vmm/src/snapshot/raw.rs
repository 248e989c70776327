//! KVM state structs in `vm.json`: their exact bytes as a hex string. Unlike kvm-bindings' own
//! serde (which zero-pads or truncates), decoding checks the length, so a damaged snapshot is
//! an error rather than silently different CPU state.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A plain-old-data KVM struct, (de)serialized as the hex of its bytes.
#[derive(Clone, Copy, Default)]
pub struct Raw<T>(pub T);

impl<T> std::fmt::Debug for Raw<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Raw<{}>", std::any::type_name::<T>())
    }
}

impl<T: IntoBytes + Immutable> PartialEq for Raw<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

pub fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd hex length {}", s.len()));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("bad hex digit {:?}", c as char)),
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Ok((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

impl<T: IntoBytes + Immutable> Serialize for Raw<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(self.0.as_bytes()))
    }
}

impl<'de, T: FromBytes> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = from_hex(&text).map_err(D::Error::custom)?;
        T::read_from_bytes(&bytes).map(Raw).map_err(|_| {
            D::Error::custom(format!(
                "{}: {} bytes, expected {}",
                std::any::type_name::<T>(),
                bytes.len(),
                std::mem::size_of::<T>()
            ))
        })
    }
}

/// Bytes as hex in JSON (config spaces, small buffers).
pub mod hex_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        from_hex(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_lapic_state, kvm_regs};

    #[test]
    fn round_trip_keeps_every_byte() {
        let regs = kvm_regs {
            rax: 0x1122_3344_5566_7788,
            rip: 0xffff_ffff_8100_0000,
            rflags: 2,
            ..Default::default()
        };
        let json = serde_json::to_string(&Raw(regs)).expect("ser");
        let back: Raw<kvm_regs> = serde_json::from_str(&json).expect("de");
        assert_eq!(back.0, regs);
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[0x350] = 0x7;
        let back: Raw<kvm_lapic_state> =
            serde_json::from_str(&serde_json::to_string(&Raw(lapic)).expect("ser")).expect("de");
        assert_eq!(back.0.regs[0x350], 0x7);
    }

    #[test]
    fn wrong_length_or_bad_digits_are_errors() {
        let short = format!("\"{}\"", "00".repeat(std::mem::size_of::<kvm_regs>() - 1));
        let err = serde_json::from_str::<Raw<kvm_regs>>(&short).expect_err("short");
        assert!(err.to_string().contains("expected 144"), "{err}");
        let long = format!("\"{}\"", "00".repeat(std::mem::size_of::<kvm_regs>() + 1));
        assert!(serde_json::from_str::<Raw<kvm_regs>>(&long).is_err());
        assert!(serde_json::from_str::<Raw<kvm_regs>>("\"0g\"").is_err());
        assert!(serde_json::from_str::<Raw<kvm_regs>>("\"000\"").is_err());
        assert!(serde_json::from_str::<Raw<kvm_regs>>("17").is_err());
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(from_hex("00AB10"), Ok(vec![0, 0xab, 0x10]));
        assert!(from_hex("zz").is_err());
    }
}
