//! Vsock packet headers and how they travel over virtio descriptor chains.
//!
//! Everything here reads guest-controlled memory: descriptor direction, lengths and addresses are
//! all checked before any byte is copied, and every failure is a [`ChainError`] (never a panic).

use std::ops::Deref;

use virtio_queue::DescriptorChain;

use super::super::chain::{SegmentError, Segments};
use super::super::device::GuestMemory;

/// Size of `struct virtio_vsock_hdr`.
pub(crate) const HDR_LEN: usize = 44;
/// Largest payload we accept from, or send to, the guest in one packet.
pub(crate) const MAX_PAYLOAD: usize = 64 * 1024;

/// Well-known CID of the host.
pub(crate) const HOST_CID: u64 = 2;

/// `type` of a stream packet (the only type we support; SEQPACKET is not offered).
pub(crate) const TYPE_STREAM: u16 = 1;

pub(crate) const OP_REQUEST: u16 = 1;
pub(crate) const OP_RESPONSE: u16 = 2;
pub(crate) const OP_RST: u16 = 3;
pub(crate) const OP_SHUTDOWN: u16 = 4;
pub(crate) const OP_RW: u16 = 5;
pub(crate) const OP_CREDIT_UPDATE: u16 = 6;
pub(crate) const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will not receive any more data.
pub(crate) const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will not send any more data.
pub(crate) const SHUTDOWN_SEND: u32 = 2;

/// The 44-byte little-endian vsock header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl PacketHeader {
    pub(crate) fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a descriptor chain could not be used. The chain is still returned to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChainError {
    #[error(transparent)]
    Chain(#[from] SegmentError),
    #[error("chain holds {0} bytes, less than a {HDR_LEN}-byte header")]
    TooShort(usize),
    #[error("payload length {0} exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(u32),
    #[error("payload length {len} exceeds the {have} bytes the chain holds after the header")]
    PayloadBeyondChain { len: u32, have: usize },
}

/// Reads a TX chain: returns its header and copies the payload of RW packets into `payload`
/// (cleared first; left empty for the other operations).
pub(crate) fn read_tx_packet<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    payload: &mut Vec<u8>,
) -> Result<PacketHeader, ChainError>
where
    M: Deref<Target = GuestMemory>,
{
    payload.clear();
    let segs = Segments::collect(chain, mem, false)?;
    if segs.len() < HDR_LEN {
        return Err(ChainError::TooShort(segs.len()));
    }
    let mut raw = [0u8; HDR_LEN];
    segs.read_at(mem, 0, &mut raw)?;
    let hdr = PacketHeader::from_bytes(&raw);
    if hdr.len as usize > MAX_PAYLOAD {
        return Err(ChainError::PayloadTooLarge(hdr.len));
    }
    let have = segs.len() - HDR_LEN;
    if hdr.len as usize > have {
        return Err(ChainError::PayloadBeyondChain { len: hdr.len, have });
    }
    if hdr.op == OP_RW && hdr.len > 0 {
        payload.resize(hdr.len as usize, 0);
        segs.read_at(mem, HDR_LEN, payload)?;
    }
    Ok(hdr)
}

/// A validated, device-writable RX chain with room for at least a header.
#[derive(Debug)]
pub(crate) struct RxBuffer {
    segs: Segments,
}

impl RxBuffer {
    pub(crate) fn from_chain<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
    ) -> Result<Self, ChainError>
    where
        M: Deref<Target = GuestMemory>,
    {
        let segs = Segments::collect(chain, mem, true)?;
        if segs.len() < HDR_LEN {
            return Err(ChainError::TooShort(segs.len()));
        }
        Ok(Self { segs })
    }

    /// How many payload bytes fit after the header (capped at [`MAX_PAYLOAD`]).
    pub(crate) fn payload_capacity(&self) -> usize {
        (self.segs.len() - HDR_LEN).min(MAX_PAYLOAD)
    }

    pub(crate) fn write_header(
        &self,
        mem: &GuestMemory,
        hdr: &PacketHeader,
    ) -> Result<(), ChainError> {
        Ok(self.segs.write_at(mem, 0, &hdr.to_bytes())?)
    }

    pub(crate) fn write_payload(&self, mem: &GuestMemory, data: &[u8]) -> Result<(), ChainError> {
        if data.len() > self.payload_capacity() {
            return Err(SegmentError::Memory.into());
        }
        Ok(self.segs.write_at(mem, HDR_LEN, data)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip_is_little_endian() {
        let hdr = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x40000,
            fwd_cnt: 7,
        };
        let b = hdr.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(le_u16(&b, 30), OP_RW);
        assert_eq!(PacketHeader::from_bytes(&b), hdr);
    }
}
