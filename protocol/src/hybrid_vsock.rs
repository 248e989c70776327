//! Host side of the hybrid vsock handshake (Firecracker's protocol).
//!
//! The VMM exposes the guest's vsock device as a Unix socket. A host client connects, writes
//! `CONNECT <port>\n` and reads back `OK <host_port>\n`; from then on the stream is a plain byte
//! pipe to the guest listener on `<port>`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest acknowledgement line we accept ("OK 4294967295\n" is 14 bytes).
const MAX_ACK_LEN: usize = 32;

/// Why the handshake with the VMM's vsock socket failed.
#[derive(Debug, thiserror::Error)]
pub enum HybridVsockError {
    #[error("connecting to vsock socket {path}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("vsock handshake i/o")]
    Io(#[from] std::io::Error),
    #[error("vsock handshake: VMM closed the connection before acknowledging (no listener on guest port {0}?)")]
    Closed(u32),
    #[error("vsock handshake: unexpected reply {0:?}")]
    BadReply(String),
    #[error("vsock handshake: no listener on guest port {port} within {waited:?}")]
    Timeout { port: u32, waited: Duration },
}

/// Connects to `uds_path`, asks for guest `port` and returns the stream once the VMM answered
/// `OK`. `io_timeout` bounds the wait for the acknowledgement.
pub fn connect(
    uds_path: &Path,
    port: u32,
    io_timeout: Duration,
) -> Result<UnixStream, HybridVsockError> {
    let mut stream = UnixStream::connect(uds_path).map_err(|source| HybridVsockError::Connect {
        path: uds_path.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(io_timeout))?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read byte by byte so nothing after the newline (guest data) is consumed here.
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(HybridVsockError::Closed(port)),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_ACK_LEN {
                    return Err(HybridVsockError::BadReply(
                        String::from_utf8_lossy(&line).into_owned(),
                    ));
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Err(HybridVsockError::Timeout {
                    port,
                    waited: io_timeout,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    let ok = reply
        .strip_prefix("OK ")
        .is_some_and(|p| p.trim().parse::<u32>().is_ok());
    if !ok {
        return Err(HybridVsockError::BadReply(reply));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// Retries [`connect`] until it succeeds or `deadline` passes; the guest agent may not be
/// listening yet while the VM boots.
pub fn connect_with_retry(
    uds_path: &Path,
    port: u32,
    deadline: Instant,
    poll: Duration,
) -> Result<UnixStream, HybridVsockError> {
    let started = Instant::now();
    loop {
        match connect(uds_path, port, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if Instant::now() + poll >= deadline {
                    return Err(match e {
                        HybridVsockError::Closed(_) | HybridVsockError::Connect { .. } => {
                            HybridVsockError::Timeout {
                                port,
                                waited: started.elapsed(),
                            }
                        }
                        other => other,
                    });
                }
                std::thread::sleep(poll);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(reply: &'static [u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(reply).unwrap();
        });
        (dir, path)
    }

    #[test]
    fn handshake_ok_keeps_following_bytes() {
        let (_d, path) = serve_once(b"OK 1073741824\nhello");
        let mut s = connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "hello");
    }

    #[test]
    fn handshake_rejects_garbage() {
        let (_d, path) = serve_once(b"NOPE\n");
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(err, HybridVsockError::BadReply(ref r) if r == "NOPE"),
            "{err}"
        );
    }

    #[test]
    fn handshake_reports_closed_connection() {
        let (_d, path) = serve_once(b"");
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, HybridVsockError::Closed(1024)), "{err}");
    }

    #[test]
    fn overlong_reply_is_bounded() {
        let (_d, path) = serve_once(b"OK 111111111111111111111111111111111111111111111\n");
        let err = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, HybridVsockError::BadReply(_)), "{err}");
    }
}
