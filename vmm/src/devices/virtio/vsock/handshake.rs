//! The `CONNECT <port>\n` line a host client sends right after connecting to the vsock socket.
//!
//! The line is read without blocking the event loop: bytes are taken as they arrive (one read
//! per byte, so nothing after the newline, which belongs to the guest, is consumed), a partial
//! line waits for the next readiness event, and the line length is bounded.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// Longest accepted line, newline included (`CONNECT 4294967295\n` is 19 bytes).
pub(crate) const MAX_CONNECT_LINE: usize = 32;

/// A host stream that has not sent its `CONNECT` line yet.
#[derive(Debug)]
pub(crate) struct Handshake {
    pub stream: UnixStream,
    line: Vec<u8>,
    pub deadline: Instant,
}

/// What reading the handshake produced so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HandshakeStatus {
    /// The line is incomplete; wait for more bytes.
    Pending,
    /// A valid line asking for this guest port.
    Connect(u32),
    /// The client closed, sent garbage or an overlong line, or its socket failed.
    Failed(String),
}

impl Handshake {
    pub(crate) fn new(stream: UnixStream, deadline: Instant) -> Self {
        Self {
            stream,
            line: Vec::with_capacity(MAX_CONNECT_LINE),
            deadline,
        }
    }

    /// Reads what is available of the line.
    pub(crate) fn advance(&mut self) -> HandshakeStatus {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return HandshakeStatus::Failed("client closed before CONNECT".into()),
                Ok(_) => {
                    if byte[0] == b'\n' {
                        return match parse_connect_line(&self.line) {
                            Some(port) => HandshakeStatus::Connect(port),
                            None => HandshakeStatus::Failed(format!(
                                "invalid CONNECT line {:?}",
                                String::from_utf8_lossy(&self.line)
                            )),
                        };
                    }
                    self.line.push(byte[0]);
                    // Leave room for the newline.
                    if self.line.len() >= MAX_CONNECT_LINE {
                        return HandshakeStatus::Failed(format!(
                            "CONNECT line longer than {MAX_CONNECT_LINE} bytes"
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HandshakeStatus::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return HandshakeStatus::Failed(format!("reading CONNECT line: {e}")),
            }
        }
    }
}

/// Parses `CONNECT <port>` (Firecracker accepts the keyword in any case, and so do we; a
/// trailing `\r` is tolerated).
pub(crate) fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut words = line.split_ascii_whitespace();
    let keyword = words.next()?;
    let port = words.next()?;
    if !keyword.eq_ignore_ascii_case("connect") || words.next().is_some() {
        return None;
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse::<u32>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn parses_valid_lines_only() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect_line(b"connect 52\r"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect_line(b"CONNECT +5"), None);
        assert_eq!(parse_connect_line(b"CONNECT abc"), None);
        assert_eq!(parse_connect_line(b"CONNECT"), None);
        assert_eq!(parse_connect_line(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect_line(b"HELLO"), None);
        assert_eq!(parse_connect_line(b"\xff\xfe 1"), None);
    }

    #[test]
    fn partial_reads_do_not_block_and_stop_at_newline() {
        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut hs = Handshake::new(server, Instant::now() + Duration::from_secs(60));
        assert_eq!(hs.advance(), HandshakeStatus::Pending);
        client.write_all(b"CONN").unwrap();
        assert_eq!(hs.advance(), HandshakeStatus::Pending);
        client.write_all(b"ECT 77\nguest-data").unwrap();
        assert_eq!(hs.advance(), HandshakeStatus::Connect(77));
        // The bytes after the newline are still in the socket.
        let mut rest = [0u8; 10];
        hs.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"guest-data");
    }

    #[test]
    fn overlong_and_closed_fail() {
        let (mut client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut hs = Handshake::new(server, Instant::now());
        client.write_all(&[b'7'; 100]).unwrap();
        assert!(matches!(hs.advance(), HandshakeStatus::Failed(_)));

        let (client, server) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut hs = Handshake::new(server, Instant::now());
        drop(client);
        assert!(matches!(hs.advance(), HandshakeStatus::Failed(_)));
    }
}
