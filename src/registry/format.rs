//! The registry file's format (version 1, little-endian), shared by the
//! writer (this crate, in every process with connections) and the reader
//! (`tsss stat`, for which every byte is untrusted input).
//!
//! A [`HEADER_SIZE`]-byte header ([`FileHeader`]), then [`SLOTS`] slots of
//! [`ENTRY_SIZE`] bytes, slot `i` describing descriptor `i` (a zeroed slot
//! is free; the file is sparse). Both end in an FNV-1a checksum of the
//! bytes before it, so a reader can tell a torn or forged record. See
//! [`encode_header`] and [`encode_record`] for the offsets.

use super::SegmentInfo;
use crate::conn::Role;
use core::fmt::{self, Write};
use std::ffi::CStr;

pub const MAGIC: [u8; 8] = *b"tsss-reg";
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 256;
pub const ENTRY_SIZE: usize = 256;
/// Descriptors `0..SLOTS` are listed; a connection on a higher one is only
/// counted ([`FileHeader::unlisted`]).
pub const SLOTS: usize = 4096;
/// Largest valid file: a reader never reads past this.
pub const MAX_FILE_SIZE: u64 = (HEADER_SIZE + SLOTS * ENTRY_SIZE) as u64;
pub const ADDR_MAX: usize = 108;
pub const REASON_MAX: usize = 84;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Negotiating = 1,
    Accelerated = 2,
    Plain = 3,
}

/// How the connection's address is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Unknown = 0,
    /// A filesystem path.
    Path = 1,
    /// Linux abstract namespace (`@name`).
    Abstract = 2,
    Unnamed = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    pub pid: i32,
    pub uid: u32,
    /// CLOCK_REALTIME, ns, when this image registered.
    pub created_ns: u64,
    /// Connections on descriptors >= [`SLOTS`], not listed.
    pub unlisted: u32,
    /// The process's name (`comm`), NUL padded.
    pub comm: [u8; 16],
}

/// One connection, as its process last described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub fd: i32,
    pub state: State,
    pub role: Role,
    pub transport: Transport,
    addr: [u8; ADDR_MAX],
    addr_len: u8,
    /// -1: none.
    pub shmid: i32,
    /// 0: unknown.
    pub peer_pid: i32,
    /// u32::MAX: unknown.
    pub peer_uid: u32,
    /// Ring sizes, client-to-server and server-to-client.
    pub caps: [u32; 2],
    /// The segment's nonce: tells a reused segment id from ours.
    pub nonce: u64,
    /// CLOCK_REALTIME, ns: connect/accept, and the last change.
    pub since_ns: u64,
    pub changed_ns: u64,
    reason: [u8; REASON_MAX],
    reason_len: u8,
}

impl Record {
    pub(super) fn new(fd: i32, role: Role, now: u64) -> Record {
        Record {
            fd,
            state: State::Negotiating,
            role,
            transport: Transport::Unknown,
            addr: [0; ADDR_MAX],
            addr_len: 0,
            shmid: -1,
            peer_pid: 0,
            peer_uid: u32::MAX,
            caps: [0; 2],
            nonce: 0,
            since_ns: now,
            changed_ns: now,
            reason: [0; REASON_MAX],
            reason_len: 0,
        }
    }

    /// The server's address: a path, an abstract name (without its NUL).
    pub fn addr(&self) -> &[u8] {
        &self.addr[..usize::from(self.addr_len)]
    }

    /// Why the connection is plain (empty unless [`State::Plain`]).
    pub fn reason(&self) -> &[u8] {
        &self.reason[..usize::from(self.reason_len)]
    }

    pub(super) fn set_addr(&mut self, t: Transport, a: &[u8]) {
        let n = a.len().min(ADDR_MAX);
        self.transport = t;
        self.addr = [0; ADDR_MAX];
        self.addr[..n].copy_from_slice(&a[..n]);
        self.addr_len = n as u8;
    }

    pub(super) fn set_segment(&mut self, s: SegmentInfo) {
        self.shmid = s.shmid;
        self.nonce = s.nonce;
        self.caps = [s.cap_c2s, s.cap_s2c];
    }

    pub(super) fn set_reason(&mut self, why: fmt::Arguments<'_>) {
        let mut b = FixedBuf::<REASON_MAX>::new();
        let _ = b.write_fmt(why);
        self.reason = b.buf;
        self.reason_len = b.len as u8;
    }
}

/// Why a header or record was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    Short,
    Magic,
    Version(u32),
    Geometry,
    Checksum,
    Field(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Short => f.write_str("truncated"),
            FormatError::Magic => f.write_str("not a tsss registry file"),
            FormatError::Version(v) => write!(f, "format version {v}, expected {VERSION}"),
            FormatError::Geometry => f.write_str("unexpected header or slot size"),
            FormatError::Checksum => f.write_str("checksum mismatch (torn or corrupt)"),
            FormatError::Field(w) => write!(f, "invalid {w}"),
        }
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// Header: 0 magic, 8 version, 12 header size, 16 entry size, 20 slots,
/// 24 pid, 28 uid, 32 created_ns, 40 unlisted, 44 comm[16], 248 checksum.
pub fn encode_header(h: &FileHeader) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    put(&mut b, 0, &MAGIC);
    put(&mut b, 8, &VERSION.to_le_bytes());
    put(&mut b, 12, &(HEADER_SIZE as u32).to_le_bytes());
    put(&mut b, 16, &(ENTRY_SIZE as u32).to_le_bytes());
    put(&mut b, 20, &(SLOTS as u32).to_le_bytes());
    put(&mut b, 24, &h.pid.to_le_bytes());
    put(&mut b, 28, &h.uid.to_le_bytes());
    put(&mut b, 32, &h.created_ns.to_le_bytes());
    put(&mut b, 40, &h.unlisted.to_le_bytes());
    put(&mut b, 44, &h.comm);
    let sum = fnv1a(&b[..HEADER_SIZE - 8]);
    put(&mut b, HEADER_SIZE - 8, &sum.to_le_bytes());
    b
}

pub fn decode_header(b: &[u8]) -> Result<FileHeader, FormatError> {
    if b.len() < HEADER_SIZE {
        return Err(FormatError::Short);
    }
    if b[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    match u32_at(b, 8) {
        VERSION => {}
        v => return Err(FormatError::Version(v)),
    }
    if (u32_at(b, 12), u32_at(b, 16), u32_at(b, 20))
        != (HEADER_SIZE as u32, ENTRY_SIZE as u32, SLOTS as u32)
    {
        return Err(FormatError::Geometry);
    }
    if u64_at(b, HEADER_SIZE - 8) != fnv1a(&b[..HEADER_SIZE - 8]) {
        return Err(FormatError::Checksum);
    }
    let pid = u32_at(b, 24) as i32;
    if pid <= 0 {
        return Err(FormatError::Field("pid"));
    }
    let mut comm = [0u8; 16];
    comm.copy_from_slice(&b[44..60]);
    comm[15] = 0;
    Ok(FileHeader {
        pid,
        uid: u32_at(b, 28),
        created_ns: u64_at(b, 32),
        unlisted: u32_at(b, 40),
        comm,
    })
}

/// Record: 0 state, 1 role, 2 transport, 3 addr_len, 4 fd, 8 shmid,
/// 12 peer_pid, 16 peer_uid, 20 cap c2s, 24 cap s2c, 28 reason_len,
/// 32 nonce, 40 since_ns, 48 changed_ns, 56 addr[108], 164 reason[84],
/// 248 checksum.
pub fn encode_record(r: &Record) -> [u8; ENTRY_SIZE] {
    let mut b = [0u8; ENTRY_SIZE];
    b[0] = r.state as u8;
    b[1] = match r.role {
        Role::Client => 1,
        Role::Server => 2,
    };
    b[2] = r.transport as u8;
    b[3] = r.addr_len;
    put(&mut b, 4, &r.fd.to_le_bytes());
    put(&mut b, 8, &r.shmid.to_le_bytes());
    put(&mut b, 12, &r.peer_pid.to_le_bytes());
    put(&mut b, 16, &r.peer_uid.to_le_bytes());
    put(&mut b, 20, &r.caps[0].to_le_bytes());
    put(&mut b, 24, &r.caps[1].to_le_bytes());
    b[28] = r.reason_len;
    put(&mut b, 32, &r.nonce.to_le_bytes());
    put(&mut b, 40, &r.since_ns.to_le_bytes());
    put(&mut b, 48, &r.changed_ns.to_le_bytes());
    put(&mut b, 56, &r.addr);
    put(&mut b, 164, &r.reason);
    let sum = fnv1a(&b[..ENTRY_SIZE - 8]);
    put(&mut b, ENTRY_SIZE - 8, &sum.to_le_bytes());
    b
}

/// The record in slot `slot`, `None` for a free slot. Every field is
/// checked: the bytes may come from another user's file.
pub fn decode_record(slot: usize, b: &[u8]) -> Result<Option<Record>, FormatError> {
    if b.len() < ENTRY_SIZE {
        return Err(FormatError::Short);
    }
    if b[0] == 0 {
        return Ok(None);
    }
    if u64_at(b, ENTRY_SIZE - 8) != fnv1a(&b[..ENTRY_SIZE - 8]) {
        return Err(FormatError::Checksum);
    }
    let state = match b[0] {
        1 => State::Negotiating,
        2 => State::Accelerated,
        3 => State::Plain,
        _ => return Err(FormatError::Field("state")),
    };
    let role = match b[1] {
        1 => Role::Client,
        2 => Role::Server,
        _ => return Err(FormatError::Field("role")),
    };
    let transport = match b[2] {
        0 => Transport::Unknown,
        1 => Transport::Path,
        2 => Transport::Abstract,
        3 => Transport::Unnamed,
        _ => return Err(FormatError::Field("transport")),
    };
    let fd = u32_at(b, 4) as i32;
    if usize::try_from(fd) != Ok(slot) {
        return Err(FormatError::Field("descriptor"));
    }
    if usize::from(b[3]) > ADDR_MAX {
        return Err(FormatError::Field("address length"));
    }
    if usize::from(b[28]) > REASON_MAX {
        return Err(FormatError::Field("reason length"));
    }
    let caps = [u32_at(b, 20), u32_at(b, 24)];
    if caps.iter().any(|&c| c != 0 && !c.is_power_of_two()) {
        return Err(FormatError::Field("ring size"));
    }
    let mut addr = [0u8; ADDR_MAX];
    addr.copy_from_slice(&b[56..56 + ADDR_MAX]);
    let mut reason = [0u8; REASON_MAX];
    reason.copy_from_slice(&b[164..164 + REASON_MAX]);
    Ok(Some(Record {
        fd,
        state,
        role,
        transport,
        addr,
        addr_len: b[3],
        shmid: u32_at(b, 8) as i32,
        peer_pid: u32_at(b, 12) as i32,
        peer_uid: u32_at(b, 16),
        caps,
        nonce: u64_at(b, 32),
        since_ns: u64_at(b, 40),
        changed_ns: u64_at(b, 48),
        reason,
        reason_len: b[28],
    }))
}

/// Whether `name` is a registry file's name: `<pid>` or `<pid>.<n>`.
pub fn is_file_name(name: &[u8]) -> bool {
    let mut parts = name.splitn(2, |&c| c == b'.');
    let digits = |p: &[u8]| !p.is_empty() && p.len() <= 10 && p.iter().all(u8::is_ascii_digit);
    parts.next().is_some_and(digits) && parts.next().is_none_or(digits)
}

/// A NUL-terminated path or name built on the stack.
pub(super) struct FixedBuf<const N: usize> {
    pub(super) buf: [u8; N],
    pub(super) len: usize,
}

impl<const N: usize> FixedBuf<N> {
    pub(super) fn new() -> Self {
        FixedBuf {
            buf: [0; N],
            len: 0,
        }
    }

    /// The text so far as a C string (empty if it holds a NUL).
    pub(super) fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).unwrap_or(c"")
    }

    /// Appends raw bytes (a path need not be UTF-8), truncating as
    /// `write_str` does.
    pub(super) fn push_bytes(&mut self, b: &[u8]) {
        let n = b.len().min(N - 1 - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
}

impl<const N: usize> Write for FixedBuf<N> {
    /// Truncates (keeping room for the NUL) rather than failing.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record::new(7, Role::Server, 123);
        r.set_addr(Transport::Path, b"/run/redis.sock");
        r.state = State::Accelerated;
        r.shmid = 42;
        r.nonce = 0xfeed;
        r.caps = [1 << 18, 1 << 18];
        r.peer_pid = 99;
        r.peer_uid = 1000;
        r
    }

    #[test]
    fn record_round_trip() {
        let r = sample();
        let b = encode_record(&r);
        assert_eq!(decode_record(7, &b), Ok(Some(r)));
        assert_eq!(decode_record(7, &[0u8; ENTRY_SIZE]), Ok(None));
        let mut p = Record::new(3, Role::Client, 5);
        p.state = State::Plain;
        p.set_reason(format_args!(
            "server does not run tsss ({})",
            "x".repeat(200)
        ));
        let d = decode_record(3, &encode_record(&p)).unwrap().unwrap();
        assert_eq!(d.reason().len(), REASON_MAX - 1);
        assert!(d.reason().starts_with(b"server does not run tsss"));
    }

    #[test]
    fn record_rejects_forgery_and_tears() {
        let b = encode_record(&sample());
        // The slot must match the descriptor it claims.
        assert_eq!(decode_record(8, &b), Err(FormatError::Field("descriptor")));
        for i in 0..ENTRY_SIZE {
            let mut t = b;
            t[i] ^= 0x40;
            if t[0] == 0 {
                continue;
            }
            assert!(decode_record(7, &t).is_err(), "flip at byte {i} accepted");
        }
        // A well-formed checksum over nonsense fields is still rejected.
        let mut t = b;
        t[3] = 200;
        let sum = fnv1a(&t[..ENTRY_SIZE - 8]);
        t[ENTRY_SIZE - 8..].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(
            decode_record(7, &t),
            Err(FormatError::Field("address length"))
        );
        assert_eq!(decode_record(7, &b[..100]), Err(FormatError::Short));
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = FileHeader {
            pid: 4211,
            uid: 1000,
            created_ns: 77,
            unlisted: 2,
            comm: *b"redis-server\0\0\0\0",
        };
        let b = encode_header(&h);
        assert_eq!(decode_header(&b), Ok(h));
        let mut t = b;
        t[24] ^= 1;
        assert_eq!(decode_header(&t), Err(FormatError::Checksum));
        let mut t = b;
        t[0] = b'x';
        assert_eq!(decode_header(&t), Err(FormatError::Magic));
        assert_eq!(decode_header(&b[..10]), Err(FormatError::Short));
    }

    #[test]
    fn file_names() {
        assert!(is_file_name(b"4211"));
        assert!(is_file_name(b"4211.3"));
        for bad in [
            &b""[..],
            b".",
            b"12.",
            b"a12",
            b"..",
            b"1.2.3",
            b"12345678901",
        ] {
            assert!(!is_file_name(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
