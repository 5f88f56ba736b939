//! The host side of the guest's virtio devices: a stream peer the guest NIC is attached to
//! ([`NetPeer`]) and a raw disk image for virtio-blk ([`DiskImage`]).
//!
//! ## Transport
//!
//! QEMU 7.2's `-netdev stream,id=..,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=<p>`
//! connects to a TCP port the host listens on ([`NetPeer::new`]) and carries each raw
//! Ethernet frame both ways as a 4-byte big-endian length followed by the frame. No root, no
//! tap. A stream cannot drop or reorder a frame, and QEMU reads from it only while the guest
//! has receive buffers, so a guest that falls behind slows the host down instead of losing
//! frames. Why not a datagram backend: QEMU 7.2's `-netdev socket,udp=` and `-netdev dgram`
//! take a datagram of size 0 for the end of the connection and never read again — one empty
//! datagram from anyone on the host killed the guest's NIC for the rest of the run. The stream
//! has one writer, this peer (QEMU connects out to it, and it accepts that one connection
//! only). An empty frame is still fatal in the stream: QEMU 7.2's virtio-net answers a
//! 0-byte packet with 0, which its network layer reads as "queue it and retry later", and
//! the retry answers 0 again, so nothing is delivered after it. [`NetPeer::send_raw`]
//! refuses one with an error saying so; if the link dies anyway, the guest reports the
//! receive stall and gives the NIC up (`kernel/src/workload.rs`).
//!
//! ## Frame format (identical in `kernel/src/drivers/virtio/net.rs`)
//!
//! All integers big-endian. Offsets are from the start of the Ethernet frame.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 6 | destination MAC: [`GUEST_MAC`] host→guest, [`HOST_MAC`] guest→host |
//! | 6 | 6 | source MAC: the other one |
//! | 12 | 2 | EtherType [`ETHERTYPE`] = 0x88B5 (IEEE local experimental 1) |
//! | 14 | 4 | magic [`MAGIC`] = `b"ITHR"` |
//! | 18 | 8 | sequence number (an end marker: the total number of data frames sent) |
//! | 26 | 2 | flags: [`FLAG_ECHO`] (1) the guest echoes it back, [`FLAG_END`] (2) end marker, [`FLAG_REPLY`] (4) sent by the guest |
//! | 28 | 2 | payload length `n` ([`payload_len`] of the sequence number; 8 in an end marker) |
//! | 30 | n | payload: byte `i` is [`payload_byte`]`(seq, i)`; in an end marker the first sequence number of the run it ends (8 bytes), so a late copy of one run's end marker never ends the next run |
//!
//! A frame may be longer than `30 + n` (padding), never shorter. Data frames carry sequence
//! numbers counting up from the first one the guest asked for; the guest verifies every byte
//! and counts in-order frames, gaps (lost), and bad frames. An echo is the received frame with
//! the MACs swapped and the flags `(flags & !ECHO) | REPLY`, nothing else changed; the host
//! verifies it the same way ([`NetPeer::echoes`]). The end marker is sent
//! [`END_REPEATS`] times (UDP may drop one under a flood); the guest counts the first.
//!
//! ## Who asks for traffic
//!
//! The guest prints `@@ net-ready first=<seq> count=<n> echo=<0|1> rate=<frames/s>` when its
//! receive ring is full and it wants `n` data frames numbered from `first` (`rate` 0:
//! unpaced), then the end marker with total `n`. [`NetRequest::parse`] reads the line and
//! [`NetPeer::serve`] does what it says (a serial feeder calls both, see `tests/devices.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The guest NIC's MAC address (set on the QEMU command line).
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x49, 0x54, 0x01];
/// The host peer's MAC address (locally administered).
pub const HOST_MAC: [u8; 6] = [0x02, 0x49, 0x54, 0x48, 0x00, 0x01];
/// EtherType of the test frames (IEEE 802 local experimental EtherType 1).
pub const ETHERTYPE: u16 = 0x88B5;
/// Magic after the Ethernet header.
pub const MAGIC: [u8; 4] = *b"ITHR";
/// Flag: the guest echoes the frame back.
pub const FLAG_ECHO: u16 = 1;
/// Flag: end marker; the sequence field is the number of data frames sent.
pub const FLAG_END: u16 = 2;
/// Flag: the frame was sent by the guest (an echo).
pub const FLAG_REPLY: u16 = 4;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 30;
/// How often the end marker is sent.
pub const END_REPEATS: u32 = 3;

/// Payload length of data frame `seq`: 32..=1280 bytes, so frames of many sizes cross the
/// ring (the largest frame, 1310 bytes, fits a 1514-byte Ethernet frame).
pub fn payload_len(seq: u64) -> usize {
    32 + (seq % 97) as usize * 13
}

/// Byte `i` of data frame `seq`'s payload.
pub fn payload_byte(seq: u64, i: usize) -> u8 {
    let x =
        (seq as u32).wrapping_mul(0x9E37_79B1) ^ (i as u32).wrapping_mul(0x85EB_CA6B) ^ (seq >> 32) as u32;
    (x >> 24) as u8 ^ i as u8
}

/// The data frame the host sends for `seq` with `flags`.
pub fn build_frame(seq: u64, flags: u16) -> Vec<u8> {
    let n = payload_len(seq);
    let mut f = header(seq, flags, n);
    f.extend((0..n).map(|i| payload_byte(seq, i)));
    f
}

/// The end marker of the run of `total` data frames that started at `first`.
pub fn build_end(total: u64, first: u64) -> Vec<u8> {
    let mut f = header(total, FLAG_END, 8);
    f.extend_from_slice(&first.to_be_bytes());
    f
}

fn header(seq: u64, flags: u16, n: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + n);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&flags.to_be_bytes());
    f.extend_from_slice(&(n as u16).to_be_bytes());
    f
}

/// Checks an echo from the guest: addresses, EtherType, magic, the `REPLY` flag, and every
/// payload byte. Returns its sequence number.
pub fn verify_echo(f: &[u8]) -> Option<u64> {
    if f.len() < HEADER_LEN || f[0..6] != HOST_MAC || f[6..12] != GUEST_MAC {
        return None;
    }
    if u16::from_be_bytes([f[12], f[13]]) != ETHERTYPE || f[14..18] != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(f[18..26].try_into().ok()?);
    let flags = u16::from_be_bytes([f[26], f[27]]);
    let n = u16::from_be_bytes([f[28], f[29]]) as usize;
    if flags != FLAG_REPLY || n != payload_len(seq) || f.len() < HEADER_LEN + n {
        return None;
    }
    f[HEADER_LEN..HEADER_LEN + n].iter().enumerate().all(|(i, &b)| b == payload_byte(seq, i)).then_some(seq)
}

/// Echoes received from the guest so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// Echoes that verified.
    pub received: u64,
    /// Datagrams that were not a correct echo.
    pub bad: u64,
}

/// What the guest asked for in a `@@ net-ready` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRequest {
    /// First sequence number.
    pub first: u64,
    /// Number of data frames.
    pub count: u64,
    /// Whether each frame asks for an echo.
    pub echo: bool,
    /// Frames per second (0: unpaced).
    pub rate: u32,
}

impl NetRequest {
    /// Parses `@@ net-ready first=<seq> count=<n> echo=<0|1> rate=<r>` (`None` for any other
    /// line, or a malformed one).
    pub fn parse(line: &str) -> Option<NetRequest> {
        let rest = line.trim_end().strip_prefix("@@ net-ready")?;
        let mut req = NetRequest { first: 0, count: 0, echo: false, rate: 0 };
        let mut seen = 0;
        for kv in rest.split_ascii_whitespace() {
            let (k, v) = kv.split_once('=')?;
            match k {
                "first" => req.first = v.parse().ok()?,
                "count" => req.count = v.parse().ok()?,
                "echo" => {
                    req.echo = match v {
                        "0" => false,
                        "1" => true,
                        _ => return None,
                    }
                }
                "rate" => req.rate = v.parse().ok()?,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 4).then_some(req)
    }
}

/// How long [`NetPeer::send_raw`] waits for QEMU to connect.
pub const CONNECT_WAIT: Duration = Duration::from_secs(30);

/// The host's end of the stream, once QEMU has connected (or why it never will).
#[derive(Default)]
struct Link {
    writer: Option<TcpStream>,
    /// QEMU closed the connection (or reading it failed): the NIC's link is gone.
    closed: Option<String>,
}

/// A TCP listener on 127.0.0.1 that the guest NIC's stream netdev connects to (see the module
/// doc).
pub struct NetPeer {
    addr: SocketAddr,
    link: Arc<(Mutex<Link>, Condvar)>,
    received: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// The first sequence number of the last run [`NetPeer::send`] started.
    run_first: AtomicU64,
    /// Data frames of that run written so far.
    run_sent: AtomicU64,
}

/// Splits the length-framed stream in `buf` into frames; what is left is an incomplete one.
fn take_frames(buf: &mut Vec<u8>, mut each: impl FnMut(&[u8])) {
    let mut at = 0;
    while buf.len() - at >= 4 {
        let n = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if buf.len() - at - 4 < n {
            break;
        }
        each(&buf[at + 4..at + 4 + n]);
        at += 4 + n;
    }
    buf.drain(..at);
}

impl NetPeer {
    /// Listens on a free port of 127.0.0.1 and starts the thread that accepts QEMU's
    /// connection and reads and verifies the guest's echoes.
    pub fn new() -> std::io::Result<NetPeer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let received = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let link = Arc::new((Mutex::new(Link::default()), Condvar::new()));
        let (r, b, s, l) = (received.clone(), bad.clone(), stop.clone(), link.clone());
        let reader = std::thread::Builder::new().name("netpeer-echoes".into()).spawn(move || {
            let set = |f: &dyn Fn(&mut Link)| {
                f(&mut l.0.lock().unwrap_or_else(|e| e.into_inner()));
                l.1.notify_all();
            };
            // QEMU connects once, as it starts.
            let mut conn = loop {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                match listener.accept() {
                    // The one connection: later ones are refused (the listener closes).
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => return set(&|k| k.closed = Some(format!("accepting QEMU's connection: {e}"))),
                }
            };
            drop(listener);
            let prepared = conn
                .set_nonblocking(false)
                .and_then(|_| conn.set_nodelay(true))
                .and_then(|_| conn.set_read_timeout(Some(Duration::from_millis(100))))
                .and_then(|_| conn.try_clone());
            match prepared {
                Ok(w) => set(&|k| k.writer = w.try_clone().ok()),
                Err(e) => return set(&|k| k.closed = Some(format!("setting up QEMU's connection: {e}"))),
            }
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                match conn.read(&mut chunk) {
                    Ok(0) => return set(&|k| k.closed = Some("QEMU closed the NIC's stream".into())),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        take_frames(&mut buf, |f| {
                            if verify_echo(f).is_some() {
                                r.fetch_add(1, Ordering::Relaxed);
                            } else {
                                b.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return set(&|k| k.closed = Some(format!("reading the NIC's stream: {e}"))),
                }
            }
        })?;
        Ok(NetPeer {
            addr,
            link,
            received,
            bad,
            stop,
            reader: Some(reader),
            run_first: AtomicU64::new(0),
            run_sent: AtomicU64::new(0),
        })
    }

    /// The address QEMU connects to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// QEMU arguments: the stream netdev and a virtio-net-pci NIC with [`GUEST_MAC`] (no option
    /// ROM: the kernel boots with `-kernel`).
    pub fn qemu_args(&self) -> Vec<String> {
        let m = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
        vec![
            "-netdev".into(),
            format!(
                "stream,id=itnet0,server=off,addr.type=inet,addr.host={},addr.port={}",
                self.addr.ip(),
                self.addr.port()
            ),
            "-device".into(),
            format!("virtio-net-pci,netdev=itnet0,mac={m},romfile="),
        ]
    }

    /// Sends frames with sequence numbers `seqs`, at most `rate` frames/s (0 = unpaced);
    /// `echo` asks the guest to echo each back.
    pub fn send(&self, seqs: Range<u64>, echo: bool, rate: u32) -> std::io::Result<()> {
        let flags = if echo { FLAG_ECHO } else { 0 };
        let start = Instant::now();
        let first = seqs.start;
        self.run_first.store(first, Ordering::Relaxed);
        self.run_sent.store(0, Ordering::Relaxed);
        for seq in seqs {
            if rate > 0 {
                // Paced against the start: frame k leaves at k / rate seconds.
                let due = start + Duration::from_secs_f64((seq - first) as f64 / rate as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            self.send_raw(&build_frame(seq, flags))?;
            self.run_sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Data frames of the last run [`NetPeer::send`] started written so far.
    pub fn sent_in_run(&self) -> u64 {
        self.run_sent.load(Ordering::Relaxed)
    }

    /// Sends the end marker carrying the total number of data frames sent (and the first
    /// sequence number of the last [`NetPeer::send`]), [`END_REPEATS`] times, 20 ms apart:
    /// the guest counts the first that arrives.
    pub fn send_end(&self, total: u64) -> std::io::Result<()> {
        let end = build_end(total, self.run_first.load(Ordering::Relaxed));
        for i in 0..END_REPEATS {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.send_raw(&end)?;
        }
        Ok(())
    }

    /// Sends one raw frame (a test may send a malformed one): its length, then its bytes.
    /// Waits up to [`CONNECT_WAIT`] for QEMU to connect; an error says why the stream is not
    /// there. An empty frame is refused (see the module doc: it would kill the guest's NIC).
    pub fn send_raw(&self, frame: &[u8]) -> std::io::Result<()> {
        if frame.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an empty frame is refused: QEMU 7.2's virtio-net would take it for \"retry later\" \
                 forever and never deliver another frame",
            ));
        }
        self.send_unchecked(frame)
    }

    /// [`NetPeer::send_raw`] without the check for an empty frame: for the tests of what
    /// happens when the NIC's link dies.
    pub fn send_unchecked(&self, frame: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(frame.len())
            .map_err(|_| std::io::Error::other(format!("a frame of {} bytes is too long", frame.len())))?;
        let mut msg = Vec::with_capacity(4 + frame.len());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(frame);
        let (lock, cv) = &*self.link;
        let g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = cv
            .wait_timeout_while(g, CONNECT_WAIT, |k| k.writer.is_none() && k.closed.is_none())
            .unwrap_or_else(|e| e.into_inner());
        // Written under the lock: frames from several threads never interleave in the stream.
        let link = &mut *g;
        let w = match (link.writer.as_mut(), &link.closed) {
            (Some(w), _) => w,
            (None, Some(why)) => return Err(std::io::Error::other(why.clone())),
            (None, None) => {
                return Err(std::io::Error::other(format!(
                    "QEMU did not connect to the NIC's stream at {} within {} s",
                    self.addr,
                    CONNECT_WAIT.as_secs()
                )))
            }
        };
        match w.write_all(&msg) {
            Ok(()) => Ok(()),
            // QEMU went away (the guest ended): the frame is lost, like on a wire.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Does what a `@@ net-ready` line asked: the data frames, then the end marker.
    pub fn serve(&self, req: &NetRequest) -> std::io::Result<()> {
        self.send(req.first..req.first + req.count, req.echo, req.rate)?;
        // Also for an empty run (send set nothing then).
        self.run_first.store(req.first, Ordering::Relaxed);
        self.send_end(req.count)
    }

    /// Echoes received back from the guest so far, verified (a background thread reads them).
    pub fn echoes(&self) -> EchoStats {
        EchoStats { received: self.received.load(Ordering::Relaxed), bad: self.bad.load(Ordering::Relaxed) }
    }
}

impl Drop for NetPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A raw disk image file for virtio-blk; removes its file on drop.
pub struct DiskImage {
    path: PathBuf,
    /// Listed for removal if the tool is interrupted (`crate::cleanup`).
    _listed: crate::cleanup::Registered,
}

impl DiskImage {
    /// Creates a zero-filled raw image of `size_mib` MiB in the temporary directory with
    /// `qemu-img create -f raw`. If `qemu-img` is not installed (Debian's `qemu-utils`), it
    /// says so on stderr and makes the same file itself: a raw image is the bytes of the disk,
    /// so a sparse file of that length is exactly what `qemu-img` would write.
    pub fn create(size_mib: u32) -> std::io::Result<DiskImage> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "ithreads-disk-{}-{}.raw",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let img = DiskImage { _listed: crate::cleanup::register_file(path.clone()), path };
        let size = u64::from(size_mib) << 20;
        match std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(&img.path)
            .arg(size.to_string())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(std::io::Error::other(format!(
                    "qemu-img create failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "note: qemu-img is missing (apt-get install -y qemu-utils); writing the raw image {} directly",
                    img.path.display()
                );
                std::fs::File::create(&img.path)?.set_len(size)?;
            }
            Err(e) => return Err(e),
        }
        Ok(img)
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// QEMU arguments: the drive and a virtio-blk-pci device with one request queue.
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-drive".into(),
            format!("file={},format=raw,if=none,id=itdisk0,cache=writeback", self.path.display()),
            "-device".into(),
            "virtio-blk-pci,drive=itdisk0,num-queues=1,romfile=".into(),
        ]
    }
}

impl Drop for DiskImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's frames are what the kernel's classifier (`parse::frame`) verifies.
    #[test]
    fn kernel_classifier_accepts_host_frames() {
        use parse::frame::{classify, Frame};
        for seq in [0u64, 1, 96, 97, 1 << 40, u64::MAX] {
            for flags in [0, FLAG_ECHO] {
                let f = build_frame(seq, flags);
                assert_eq!(classify(&f, GUEST_MAC), Frame::Data { seq, flags, ok: true, len: f.len() });
            }
        }
        assert_eq!(classify(&build_end(8000, 5), GUEST_MAC), Frame::End { total: 8000, first: Some(5) });
        assert_eq!(parse::frame::HOST_MAC, HOST_MAC);
    }

    #[test]
    fn frames_round_trip_as_echoes() {
        for seq in [0u64, 1, 96, 97, 1 << 40, u64::MAX] {
            let mut f = build_frame(seq, FLAG_ECHO);
            assert_eq!(f.len(), HEADER_LEN + payload_len(seq));
            // What the guest sends back.
            let (dst, src) = (f[0..6].to_vec(), f[6..12].to_vec());
            f[0..6].copy_from_slice(&src);
            f[6..12].copy_from_slice(&dst);
            f[26..28].copy_from_slice(&FLAG_REPLY.to_be_bytes());
            assert_eq!(verify_echo(&f), Some(seq));
            let last = f.len() - 1;
            f[last] ^= 1;
            assert_eq!(verify_echo(&f), None, "a flipped payload byte must not verify");
        }
    }

    #[test]
    fn net_ready_lines_parse() {
        assert_eq!(
            NetRequest::parse("@@ net-ready first=5 count=100 echo=1 rate=2000"),
            Some(NetRequest { first: 5, count: 100, echo: true, rate: 2000 })
        );
        assert_eq!(NetRequest::parse("@@ net-ready first=5 count=100 echo=1"), None);
        assert_eq!(NetRequest::parse("@@ net-ready first=5 count=x echo=1 rate=0"), None);
        assert_eq!(NetRequest::parse("@@ boot cpus=1"), None);
    }

    #[test]
    fn payload_covers_many_byte_values() {
        let mut seen = [false; 256];
        for i in 0..1280 {
            seen[payload_byte(7, i) as usize] = true;
        }
        assert!(seen.iter().filter(|&&s| s).count() > 200);
    }
}
