//! The test frames of the NIC workload (docs/PROTOCOL.md, `src/traffic.rs`): how the kernel
//! classifies one received Ethernet frame. The receive path (`kernel/src/drivers/virtio/
//! net.rs`) counts and echoes according to [`classify`]; the host fuzzes it.
//!
//! Layout: destination MAC (6), source MAC (6), EtherType [`ETHERTYPE`] (2), [`MAGIC`] (4),
//! sequence number (8, big-endian), flags (2), payload length `n` (2), then `n` payload bytes.

/// The host peer's MAC address.
pub const HOST_MAC: [u8; 6] = [0x02, 0x49, 0x54, 0x48, 0x00, 0x01];
/// EtherType of the test frames.
pub const ETHERTYPE: u16 = 0x88B5;
/// Magic after the Ethernet header.
pub const MAGIC: [u8; 4] = *b"ITHR";
/// Flag: echo it back.
pub const FLAG_ECHO: u16 = 1;
/// Flag: end marker (the sequence field is the number of data frames sent).
pub const FLAG_END: u16 = 2;
/// Flag: sent by the guest.
pub const FLAG_REPLY: u16 = 4;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 30;

/// Payload length of data frame `seq` (32..=1280 bytes).
pub fn payload_len(seq: u64) -> usize {
    32 + (seq % 97) as usize * 13
}

/// Byte `i` of data frame `seq`'s payload.
pub fn payload_byte(seq: u64, i: usize) -> u8 {
    let x =
        (seq as u32).wrapping_mul(0x9E37_79B1) ^ (i as u32).wrapping_mul(0x85EB_CA6B) ^ (seq >> 32) as u32;
    (x >> 24) as u8 ^ i as u8
}

/// What one received frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not ours: too short for an Ethernet header, another destination or source MAC, another
    /// EtherType.
    Other,
    /// Ours by its Ethernet header, but too short for our header or without the magic.
    Bad,
    /// An end marker: `total` data frames were sent; `first`, the first sequence number of
    /// the run it ends (its 8-byte payload), if it has that payload.
    End {
        /// The number of data frames sent.
        total: u64,
        /// The run's first sequence number.
        first: Option<u64>,
    },
    /// A data frame.
    Data {
        /// Its sequence number.
        seq: u64,
        /// Its flags.
        flags: u16,
        /// Whether it verifies: no flag but [`FLAG_ECHO`], the payload length and every byte
        /// as [`payload_len`] / [`payload_byte`] say.
        ok: bool,
        /// Header plus announced payload (what an echo sends back; within the frame when `ok`).
        len: usize,
    },
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn be64(f: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&f[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Classifies frame `f` received by the NIC whose MAC is `mac`.
pub fn classify(f: &[u8], mac: [u8; 6]) -> Frame {
    if f.len() < 14 || f[0..6] != mac || f[6..12] != HOST_MAC || be16(f, 12) != ETHERTYPE {
        return Frame::Other;
    }
    if f.len() < HEADER_LEN || f[14..18] != MAGIC {
        return Frame::Bad;
    }
    let seq = be64(f, 18);
    let flags = be16(f, 26);
    let n = be16(f, 28) as usize;
    if flags & FLAG_END != 0 {
        let first = (n == 8 && f.len() >= HEADER_LEN + 8).then(|| be64(f, HEADER_LEN));
        return Frame::End { total: seq, first };
    }
    let ok = flags & !FLAG_ECHO == 0
        && n == payload_len(seq)
        && f.len() >= HEADER_LEN + n
        && f[HEADER_LEN..HEADER_LEN + n].iter().enumerate().all(|(i, &b)| b == payload_byte(seq, i));
    Frame::Data { seq, flags, ok, len: HEADER_LEN + n }
}
