//! What travels over the real socket: the client's marker address and the
//! server's HELLO frame.
//!
//! Negotiation never puts a byte into the application's stream unless both
//! sides are known to run tsss:
//! - the client marks itself by binding its (unbound) socket to an abstract
//!   address `\0tsss/<version>/<pid>/<random>` before `connect`; the server
//!   sees it in `accept`, a program without tsss sees an odd client address;
//! - only a server that saw the marker sends HELLO, as the first bytes it
//!   ever sends, in one `send` on an empty socket, so it arrives whole in one
//!   kernel buffer. A client that peeks fewer than [`HELLO_LEN`] bytes is
//!   therefore looking at application data, never at half a HELLO.

/// Version of the protocol spoken by this build; carried in the marker and
/// in HELLO.
pub const PROTO_VERSION: u16 = 4;

/// Abstract-namespace prefix (leading NUL included) of the client marker.
pub const MARKER_PREFIX: &[u8] = b"\0tsss/";

/// Size of the HELLO frame on the wire.
pub const HELLO_LEN: usize = 40;

/// First bytes of HELLO. 0xF5 never occurs in UTF-8 text, so a plain
/// server's first byte practically never matches.
pub const HELLO_MAGIC: [u8; 8] = [0xF5, b'T', b'S', b'S', b'S', 0x00, b'H', b'I'];

/// Builds the marker socket name (the bytes of `sun_path`, leading NUL
/// included). Returns the buffer and the used length.
pub fn marker_name(pid: u32, random: u64) -> ([u8; 64], usize) {
    let mut buf = [0u8; 64];
    let mut w = Cursor {
        buf: &mut buf,
        len: 0,
    };
    w.put(MARKER_PREFIX);
    w.put_dec(u64::from(PROTO_VERSION));
    w.put(b"/");
    w.put_dec(u64::from(pid));
    w.put(b"/");
    w.put_hex(random);
    let len = w.len;
    (buf, len)
}

/// If `path` (the bytes of `sun_path`, as long as the kernel reported) is a
/// tsss marker, returns the protocol version it announces.
pub fn parse_marker(path: &[u8]) -> Option<u16> {
    let rest = path.strip_prefix(MARKER_PREFIX)?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (ver, tail) = rest.split_at(slash);
    if ver.is_empty() || ver.len() > 5 || !ver.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // pid/random must follow; their content is not trusted for anything.
    if tail.len() < 4 {
        return None;
    }
    ver.iter()
        .try_fold(0u32, |acc, &d| Some(acc * 10 + u32::from(d - b'0')))
        .and_then(|v| u16::try_from(v).ok())
}

/// The server's offer: which segment to attach and how it is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// Bytes of segment header before the first ring.
    pub hdr_size: u32,
    pub shmid: i32,
    /// Ring capacities, client-to-server and server-to-client.
    pub cap_c2s: u32,
    pub cap_s2c: u32,
    /// Random value also stored in the segment header: proves the segment
    /// attached is the one the server made (ids are reused).
    pub nonce: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    BadMagic,
    Truncated,
    BadVersion(u16),
    BadGeometry,
}

impl core::fmt::Display for HelloError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HelloError::BadMagic => f.write_str("bad magic"),
            HelloError::Truncated => f.write_str("truncated frame"),
            HelloError::BadVersion(v) => write!(f, "unsupported protocol version {v}"),
            HelloError::BadGeometry => f.write_str("invalid segment geometry"),
        }
    }
}

/// Smallest and largest ring a peer may ask us to map.
pub const MIN_CAP: u32 = 4096;
pub const MAX_CAP: u32 = 64 << 20;

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..8].copy_from_slice(&HELLO_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&(HELLO_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.hdr_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.shmid.to_le_bytes());
        b[20..24].copy_from_slice(&self.cap_c2s.to_le_bytes());
        b[24..28].copy_from_slice(&self.cap_s2c.to_le_bytes());
        b[28..36].copy_from_slice(&self.nonce.to_le_bytes());
        b
    }

    /// Parses and validates a frame. Everything here came from the peer.
    pub fn decode(b: &[u8]) -> Result<Hello, HelloError> {
        if b.len() < HELLO_MAGIC.len() || b[..8] != HELLO_MAGIC {
            return Err(HelloError::BadMagic);
        }
        if b.len() < HELLO_LEN {
            return Err(HelloError::Truncated);
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let version = u16_at(8);
        if version != PROTO_VERSION {
            return Err(HelloError::BadVersion(version));
        }
        if usize::from(u16_at(10)) != HELLO_LEN {
            return Err(HelloError::Truncated);
        }
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&b[28..36]);
        let h = Hello {
            version,
            hdr_size: u32_at(12),
            shmid: u32_at(16) as i32,
            cap_c2s: u32_at(20),
            cap_s2c: u32_at(24),
            nonce: u64::from_le_bytes(nonce),
        };
        let cap_ok = |c: u32| c.is_power_of_two() && (MIN_CAP..=MAX_CAP).contains(&c);
        if h.shmid < 0
            || !cap_ok(h.cap_c2s)
            || !cap_ok(h.cap_s2c)
            || h.hdr_size as usize != crate::shm::layout::HDR_SIZE
        {
            return Err(HelloError::BadGeometry);
        }
        Ok(h)
    }

    /// Total segment size this HELLO describes.
    pub fn seg_size(&self) -> usize {
        self.hdr_size as usize + self.cap_c2s as usize + self.cap_s2c as usize
    }
}

/// What the first bytes a client receives say.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// Application data from a server without tsss: stay plain.
    Plain,
    /// A HELLO frame (possibly invalid): consume [`HELLO_LEN`] bytes.
    Hello(Result<Hello, HelloError>),
}

/// Classifies peeked bytes (non-empty). HELLO arrives whole, so a short
/// peek that merely starts like HELLO is application data.
pub fn classify_first_bytes(peeked: &[u8]) -> FirstBytes {
    if peeked.len() < HELLO_LEN || peeked[..8] != HELLO_MAGIC {
        return FirstBytes::Plain;
    }
    FirstBytes::Hello(Hello::decode(&peeked[..HELLO_LEN]))
}

struct Cursor<'a> {
    buf: &'a mut [u8; 64],
    len: usize,
}

impl Cursor<'_> {
    fn put(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }
    fn put_dec(&mut self, mut v: u64) {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.put(&tmp[i..]);
    }
    fn put_hex(&mut self, v: u64) {
        let mut tmp = [0u8; 16];
        for (i, t) in tmp.iter_mut().enumerate() {
            *t = b"0123456789abcdef"[((v >> (60 - 4 * i)) & 0xf) as usize];
        }
        self.put(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: PROTO_VERSION,
            hdr_size: crate::shm::layout::HDR_SIZE as u32,
            shmid: 42,
            cap_c2s: 1 << 16,
            cap_s2c: 1 << 20,
            nonce: 0xdead_beef_0123_4567,
        }
    }

    #[test]
    fn marker_round_trip() {
        let (buf, len) = marker_name(1234, 0xabcdef);
        assert_eq!(&buf[..len], b"\0tsss/4/1234/0000000000abcdef");
        assert_eq!(parse_marker(&buf[..len]), Some(PROTO_VERSION));
    }

    #[test]
    fn marker_rejects_lookalikes() {
        for bad in [
            &b"/tmp/sock"[..],
            b"\0tsss/",
            b"\0tsss//1/2",
            b"\0tsss/x/1/2",
            b"\0tsss/1",
            b"\0tsss/2/",
            b"\0tsss/999999/1/2",
            b"",
        ] {
            assert_eq!(parse_marker(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hello_round_trip() {
        let h = hello();
        assert_eq!(Hello::decode(&h.encode()), Ok(h));
        assert_eq!(classify_first_bytes(&h.encode()), FirstBytes::Hello(Ok(h)));
    }

    #[test]
    fn hello_rejects_corruption() {
        let h = hello();
        let good = h.encode();
        let mut b = good;
        b[0] ^= 1;
        assert_eq!(Hello::decode(&b), Err(HelloError::BadMagic));
        let mut b = good;
        b[8] = 9;
        assert_eq!(Hello::decode(&b), Err(HelloError::BadVersion(9)));
        assert_eq!(Hello::decode(&good[..20]), Err(HelloError::Truncated));
        for (off, val) in [
            (20, 3u32),
            (24, 1 << 30),
            (20, 4095),
            (12, 17),
            (16, u32::MAX),
        ] {
            let mut b = good;
            b[off..off + 4].copy_from_slice(&val.to_le_bytes());
            assert_eq!(Hello::decode(&b), Err(HelloError::BadGeometry), "{off}");
        }
    }

    #[test]
    fn short_or_foreign_first_bytes_are_plain() {
        let h = hello().encode();
        assert_eq!(classify_first_bytes(&h[..39]), FirstBytes::Plain);
        assert_eq!(classify_first_bytes(b"+OK\r\n"), FirstBytes::Plain);
        let mut long = [b'x'; 100];
        long[..40].copy_from_slice(&h);
        assert!(matches!(
            classify_first_bytes(&long),
            FirstBytes::Hello(Ok(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = Hello::decode(&bytes);
            let _ = classify_first_bytes(&bytes);
            let _ = parse_marker(&bytes);
        }

        #[test]
        fn decoded_geometry_is_sane(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 32)) {
            let mut b = HELLO_MAGIC.to_vec();
            b.extend_from_slice(&tail);
            if let Ok(h) = Hello::decode(&b) {
                proptest::prop_assert!(h.cap_c2s.is_power_of_two() && h.cap_s2c.is_power_of_two());
                proptest::prop_assert!(h.seg_size() <= crate::shm::layout::HDR_SIZE + 2 * MAX_CAP as usize);
            }
        }
    }
}
