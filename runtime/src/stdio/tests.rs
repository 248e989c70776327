use super::*;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// In-memory output source: chunks, optionally with pauses, then end of stream.
struct Chunks {
    chunks: VecDeque<Vec<u8>>,
    delay: Duration,
}

impl OutputSource for Chunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        std::thread::sleep(self.delay);
        Ok(self.chunks.pop_front())
    }
}

fn chunks(total: usize, size: usize, delay: Duration) -> (Chunks, Vec<u8>) {
    let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
    let c = Chunks {
        chunks: data.chunks(size).map(|c| c.to_vec()).collect(),
        delay,
    };
    (c, data)
}

/// A sink shared with the test so it can look inside after the pump thread is gone.
#[derive(Clone, Default)]
struct SharedSink(Arc<Mutex<Vec<u8>>>);
impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct FailAfter(usize);
impl Write for FailAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let n = buf.len().min(self.0);
        self.0 -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn output_pump_keeps_order_and_tail() {
    let (mut src, data) = chunks(1 << 20, 4093, Duration::ZERO);
    let mut sink = Vec::new();
    let r = pump_output(&mut src, &mut sink);
    assert_eq!(r.read, data.len() as u64);
    assert_eq!(r.written, data.len() as u64);
    assert_eq!(sink, data);
    assert_eq!(r.sink_error, None);
}

#[test]
fn output_pump_drains_source_when_sink_fails() {
    let (mut src, data) = chunks(100_000, 1000, Duration::ZERO);
    let r = pump_output(&mut src, &mut FailAfter(2500));
    assert_eq!(r.read, data.len() as u64, "source not drained");
    assert!(r.sink_error.is_some());
    assert!(r.written < r.read);
    assert!(src.chunks.is_empty());
}

#[derive(Default, Clone)]
struct RecordingInput(Arc<Mutex<(Vec<u8>, bool, bool)>>); // data, closed, write-after-close
impl InputSink for RecordingInput {
    fn write(&mut self, data: &[u8]) -> Result<(), String> {
        let mut g = self.0.lock().unwrap();
        if g.1 {
            g.2 = true;
        }
        g.0.extend_from_slice(data);
        Ok(())
    }
    fn close(&mut self) -> Result<(), String> {
        self.0.lock().unwrap().1 = true;
        Ok(())
    }
}

#[test]
fn input_pump_writes_all_then_closes() {
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let mut sink = RecordingInput::default();
    let n = pump_input(&mut &data[..], &mut sink).unwrap();
    assert_eq!(n, data.len() as u64);
    let g = sink.0.lock().unwrap();
    assert_eq!(g.0, data);
    assert!(g.1, "stdin not closed at end of input");
    assert!(!g.2, "write after close");
}

fn fifo(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    p
}

#[test]
fn fifo_reader_opened_before_writer_is_not_eof() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(&dir, "stdin");
    let cancel = Canceller::new().unwrap();
    let mut reader = open_fifo_reader(&p, cancel).unwrap();
    let p2 = p.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut w = std::fs::OpenOptions::new().write(true).open(p2).unwrap();
        w.write_all(b"hello").unwrap();
    });
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got, b"hello");
}

#[test]
fn cancel_unblocks_reader_and_writer() {
    let dir = tempfile::tempdir().unwrap();
    let p_in = fifo(&dir, "in");
    let p_out = fifo(&dir, "out");
    let cancel = Canceller::new().unwrap();
    let mut reader = open_fifo_reader(&p_in, cancel.clone()).unwrap();
    // Writer with nobody reading: opened read-write, fills up, then blocks.
    let mut writer = open_fifo_writer(&p_out, cancel.clone()).unwrap();
    let t1 = std::thread::spawn(move || reader.read(&mut [0u8; 16]));
    let t2 = std::thread::spawn(move || writer.write_all(&vec![0u8; 4 << 20]));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!t1.is_finished() && !t2.is_finished());
    cancel.cancel();
    assert!(t1.join().unwrap().is_err());
    assert!(t2.join().unwrap().is_err());
}

#[test]
fn one_mib_through_a_fifo_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(&dir, "stdout");
    // The reader (containerd's side) is open first, as containerd does.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&p)
        .unwrap();
    let cancel = Canceller::new().unwrap();
    let writer = open_fifo_writer(&p, cancel.clone()).unwrap();
    let (src, data) = chunks(1 << 20, 65536, Duration::ZERO);
    let io = ProcessIo::start(
        "t",
        vec![(Box::new(src), Box::new(writer))],
        None,
        cancel,
        Canceller::new().unwrap(),
    )
    .unwrap();
    let mut r = FdReader::new(reader.into(), Canceller::new().unwrap());
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(io.wait_outputs(Duration::from_secs(60)));
    assert_eq!(got.len(), data.len());
    assert!(got == data, "content differs");
}

#[test]
fn wait_outputs_returns_only_after_the_tail() {
    // The "process exits" while output is still in flight: waiting for the outputs must not
    // return before the last chunk is in the sink.
    let (src, data) = chunks(64 * 1024, 1024, Duration::from_millis(2));
    let sink = SharedSink::default();
    let io = ProcessIo::start(
        "t",
        vec![(Box::new(src), Box::new(sink.clone()))],
        None,
        Canceller::new().unwrap(),
        Canceller::new().unwrap(),
    )
    .unwrap();
    assert!(io.wait_outputs(Duration::from_secs(60)));
    assert_eq!(*sink.0.lock().unwrap(), data);
}

#[test]
fn wait_outputs_is_bounded_by_grace() {
    let src = Chunks {
        chunks: VecDeque::from(vec![b"a".to_vec()]),
        delay: Duration::from_millis(1500),
    };
    let io = ProcessIo::start(
        "t",
        vec![(Box::new(src), Box::new(SharedSink::default()))],
        None,
        Canceller::new().unwrap(),
        Canceller::new().unwrap(),
    )
    .unwrap();
    assert!(!io.wait_outputs(Duration::from_millis(100)));
    assert!(io.wait_outputs(Duration::from_secs(60)));
}

/// A stdin pump from `reader` (cancelled by `cancel`) into a recording sink.
fn pump_stdin(reader: FdReader, cancel: Canceller) -> (ProcessIo, RecordingInput) {
    let sink = RecordingInput::default();
    let io = ProcessIo::start(
        "t",
        vec![],
        Some((Box::new(reader), Box::new(sink.clone()))),
        Canceller::new().unwrap(),
        cancel,
    )
    .unwrap();
    (io, sink)
}

/// Waits (up to 30 s) until the pump has closed the process's stdin.
fn wait_stdin_closed(sink: &RecordingInput) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sink.0.lock().unwrap().1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stdin_from_fifo_reaches_sink_then_closes() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(&dir, "stdin");
    let cancel = Canceller::new().unwrap();
    let reader = open_fifo_reader(&p, cancel.clone()).unwrap();
    let (io, sink) = pump_stdin(reader, cancel);
    {
        let mut w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all(b"input line\n").unwrap();
    }
    wait_stdin_closed(&sink);
    let g = sink.0.lock().unwrap();
    assert_eq!(g.0, b"input line\n");
    assert!(g.1);
    drop(io);
}

#[test]
fn close_stdin_closes_even_without_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(&dir, "stdin");
    let cancel = Canceller::new().unwrap();
    let reader = open_fifo_reader(&p, cancel.clone()).unwrap();
    let (io, sink) = pump_stdin(reader, cancel);
    io.close_stdin();
    wait_stdin_closed(&sink);
    assert!(sink.0.lock().unwrap().1);
}

/// CloseIO right after the client's last write (ctr with piped stdin): the input already in
/// the fifo still reaches the process, then its stdin closes. Before, the cancel could win
/// the race and the process read nothing (seen once in CI).
#[test]
fn close_stdin_delivers_what_the_fifo_already_holds() {
    let dir = tempfile::tempdir().unwrap();
    let p = fifo(&dir, "stdin");
    let cancel = Canceller::new().unwrap();
    let reader = open_fifo_reader(&p, cancel.clone()).unwrap();
    let mut client = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblock()
        .open(&p)
        .unwrap();
    client.write_all(b"piped input\n").unwrap();
    // Cancel before the pump even starts: the worst order.
    cancel.cancel();
    let (io, sink) = pump_stdin(reader, cancel);
    wait_stdin_closed(&sink);
    let g = sink.0.lock().unwrap();
    assert_eq!(g.0, b"piped input\n");
    assert!(g.1, "stdin not closed after the drain");
    drop(g);
    drop(io);
    drop(client);
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}
impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NONBLOCK)
    }
}
