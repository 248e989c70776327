//! One descriptor chain in, one FUSE reply out: the checks the guest's input goes through
//! before `fuse-backend-rs` sees it, and the error reply when it cannot be served.
//!
//! A chain is the request (device-readable descriptors: `fuse_in_header` + arguments) and room
//! for the reply (device-writable descriptors). Outcomes:
//! * the server's reply (its length is the used length);
//! * an error reply we write ourselves when the request is malformed but carries a header
//!   (`EINVAL` for a length that disagrees with the chain, `E2BIG` for an oversized xattr
//!   buffer, `EIO` when the server could not decode the body or fit its reply; `EPERM` for
//!   every request when the serving thread could not drop its capabilities, see
//!   [`refuse_chain`]);
//! * no reply (used length 0) when there is no header to answer to, a descriptor lies outside
//!   guest memory, or the request is one the guest never waits on (FORGET, BATCH_FORGET,
//!   INTERRUPT, DESTROY).

use std::io::Write;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{GetxattrIn, InHeader, Opcode, OutHeader};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;
use vm_memory::ByteValued;

use super::backend::FsServer;
use super::policy::XATTR_SIZE_MAX;
use crate::devices::virtio::device::GuestMemory;

/// What became of a chain.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The server answered (or the request needs no answer): bytes written, and the FUSE
    /// opcode (counted in the device's stats).
    Served { written: usize, opcode: u32 },
    /// We answered with an error: bytes written (one `fuse_out_header`).
    Refused {
        errno: i32,
        written: usize,
        why: String,
    },
    /// Returned unanswered.
    Dropped(String),
}

impl Outcome {
    /// The used length to put in the used ring.
    pub(super) fn used_len(&self) -> u32 {
        match self {
            Outcome::Served { written: n, .. } | Outcome::Refused { written: n, .. } => {
                u32::try_from(*n).unwrap_or(u32::MAX)
            }
            Outcome::Dropped(_) => 0,
        }
    }
}

/// Requests the guest does not wait for: nothing is written back for them.
fn expects_reply(opcode: u32) -> bool {
    ![
        Opcode::Forget as u32,
        Opcode::BatchForget as u32,
        Opcode::Interrupt as u32,
        Opcode::Destroy as u32,
    ]
    .contains(&opcode)
}

/// A chain taken apart: the request reader, the same reader past the header, the reply
/// writer, the header, and how many bytes the chain lets the device read.
struct Opened<'a> {
    reader: Reader<'a>,
    body: Reader<'a>,
    writer: VirtioFsWriter<'a>,
    header: InHeader,
    readable: usize,
}

fn open_chain<'a>(
    mem: &'a GuestMemory,
    chain: DescriptorChain<&'a GuestMemory>,
) -> Result<Opened<'a>, Outcome> {
    let reader = Reader::from_descriptor_chain(mem, chain.clone())
        .map_err(|e| Outcome::Dropped(format!("request descriptors: {e}")))?;
    let writer = VirtioFsWriter::new(mem, chain)
        .map_err(|e| Outcome::Dropped(format!("reply descriptors: {e}")))?;
    let readable = reader.available_bytes();
    let mut body = reader.clone();
    let header: InHeader = body.read_obj().map_err(|_| {
        Outcome::Dropped(format!(
            "{readable} readable bytes, a request header needs {}",
            size_of::<InHeader>()
        ))
    })?;
    Ok(Opened {
        reader,
        body,
        writer,
        header,
        readable,
    })
}

/// Serves one chain.
pub(super) fn handle_chain(
    server: &FsServer,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
) -> Outcome {
    let Opened {
        reader,
        mut body,
        writer,
        header,
        readable,
    } = match open_chain(mem, chain) {
        Ok(o) => o,
        Err(outcome) => return outcome,
    };
    if let Some((errno, why)) = check_request(&header, readable, &mut body) {
        return refuse(writer, &header, errno, why);
    }
    match server.handle_message(reader, writer.clone().into(), None, None) {
        Ok(n) => Outcome::Served {
            written: n,
            opcode: header.opcode,
        },
        // Decoding the body failed or the reply did not fit. Whatever the server may have
        // written is replaced by one error header, so the guest's request does not hang.
        Err(e) => refuse(writer, &header, libc::EIO, format!("server: {e}")),
    }
}

/// Answers the chain's request with `-errno` without serving it.
pub(super) fn refuse_chain(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    errno: i32,
    why: &str,
) -> Outcome {
    match open_chain(mem, chain) {
        Ok(o) => refuse(o.writer, &o.header, errno, why.to_string()),
        Err(outcome) => outcome,
    }
}

/// Checks what the server would otherwise trust: the header's length against the chain, and
/// guest-chosen allocation sizes. Returns the errno to answer with.
fn check_request(
    header: &InHeader,
    readable: usize,
    body: &mut Reader<'_>,
) -> Option<(i32, String)> {
    let len = header.len as usize;
    if len < size_of::<InHeader>() || len > readable {
        return Some((
            libc::EINVAL,
            format!("header says {len} bytes, the chain has {readable} readable"),
        ));
    }
    let xattr_query =
        header.opcode == Opcode::Getxattr as u32 || header.opcode == Opcode::Listxattr as u32;
    if xattr_query {
        // The backend reserves a buffer of the size the guest asks for. (This copy of the
        // size is read from guest memory before the server reads its own, so a racing guest
        // could change it in between: `PolicyFs` checks the server's copy again.)
        if let Ok(args) = body.read_obj::<GetxattrIn>() {
            if args.size > XATTR_SIZE_MAX {
                return Some((
                    libc::E2BIG,
                    format!("xattr buffer of {} bytes asked for", args.size),
                ));
            }
        }
    }
    None
}

/// Answers `header` with `-errno` (if it expects an answer and there is room for one).
fn refuse(mut writer: VirtioFsWriter<'_>, header: &InHeader, errno: i32, why: String) -> Outcome {
    if !expects_reply(header.opcode) {
        return Outcome::Dropped(format!("{why} (opcode {} has no reply)", header.opcode));
    }
    let out = OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -errno,
        unique: header.unique,
    };
    match writer.write_all(out.as_slice()) {
        Ok(()) => Outcome::Refused {
            errno,
            written: writer.bytes_written(),
            why,
        },
        Err(e) => Outcome::Dropped(format!("{why}; no room for an error reply: {e}")),
    }
}
