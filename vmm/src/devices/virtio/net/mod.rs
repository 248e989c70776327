//! virtio-net over a tap device, for the pod's network (Kata's tcfilter model: the runtime
//! creates the tap in the pod's network namespace beside CNI's veth, joins them with tc
//! redirects, and hands the tap's fd to the VMM).
//!
//! What the guest sees: one device (ID 1) with a receive and a transmit queue, features
//! `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC`, `VIRTIO_NET_F_MTU` and the offloads of
//! [`offload`]: checksums both ways and TCP segmentation on transmit (frames of up to 64 KiB
//! from the guest, segmented by the host kernel behind the tap). No segmentation offload on
//! receive, no mergeable buffers, no control queue: a frame to the guest is at most MTU +
//! Ethernet header long and fills one buffer (`num_buffers` = 1). Every frame travels with
//! its 12-byte `virtio_net_hdr_v1`, which the tap (`IFF_VNET_HDR`) reads and writes too.
//!
//! The MAC and MTU in the config space are fixed ([`DEFAULT_MAC`], [`DEFAULT_MTU`]): a
//! snapshot's device must look the same at every restore. The agent gives the guest
//! interface the pod's MAC (the veth's) over netlink; the device does not filter by MAC.
//!
//! The tap is optional: without one (a pod with no network, or the snapshot-making boot)
//! the device drops what the guest sends and never receives. A restored VM gets the tap of
//! its own pod (the fd is a host-side setting, like the vsock socket path).
//!
//! Everything the guest writes is bounded: a TX chain is read only when it holds a header
//! and a frame of 14..=[`MAX_FRAME`] bytes ([`offload::MAX_GSO_FRAME`] with TSO acked), and
//! is sent only when its header passes [`offload::check_tx`], an RX chain only when it is device-writable and
//! in guest memory; a frame that does not fit the buffer the guest posted is dropped; each
//! event handles at most [`BURST`] frames per direction (TX re-kicks itself for the rest).

mod device;
mod event_handler;
pub mod offload;
mod tap;

#[cfg(test)]
mod tests;

pub use device::{Net, NetMetrics};
pub use tap::{Tap, TapError};

/// Virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Queue indices (one queue pair, no control queue).
pub const RXQ_INDEX: usize = 0;
pub const TXQ_INDEX: usize = 1;
pub const NUM_QUEUES: usize = 2;
/// Largest queue size the device accepts.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (with `VIRTIO_F_VERSION_1` the header always has
/// `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Ethernet header: destination, source, type.
pub const ETH_HDR_LEN: usize = 14;
/// The MTU the config space offers (the guest's `max_mtu`); pods on networks with larger
/// MTUs are refused by the agent rather than silently losing frames.
pub const DEFAULT_MTU: u16 = 1500;
/// Largest frame accepted from either side: the MTU, the Ethernet header and a VLAN tag.
pub const MAX_FRAME: usize = DEFAULT_MTU as usize + ETH_HDR_LEN + 4;
/// A locally administered unicast address; the agent replaces it in the guest.
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x76, 0x73, 0x6c, 0x00, 0x01];
/// Frames handled per event and direction before the event loop gets a turn.
pub const BURST: usize = 64;

/// Feature bits (virtio spec 5.1.3).
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
