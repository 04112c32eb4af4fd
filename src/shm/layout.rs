//! Layout of the per-connection SysV segment.
//!
//! ```text
//! 0          HDR_SIZE            HDR_SIZE + cap_c2s
//! | SegHeader | ring c2s data      | ring s2c data      |
//! ```
//! Every field is an atomic: the peer writes this memory concurrently and may
//! be hostile, so nothing here is trusted without validation.

use crate::sync::{AtomicU32, AtomicU64};
use crossbeam_utils::CachePadded;

/// Bytes reserved for the header; the first ring starts here.
pub const HDR_SIZE: usize = 4096;

/// Written by the creator into [`SegHeader::magic`].
pub const SEG_MAGIC: u64 = u64::from_le_bytes(*b"tsss-seg");

/// Index of a direction's ring in [`SegHeader::rings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    ClientToServer = 0,
    ServerToClient = 1,
}

/// Set in [`RingFlags::switch_at`] once the writer has published it.
pub const SWITCHED: u64 = 1 << 63;

/// [`SegHeader::client_state`], the one word both sides negotiate on. The
/// client moves it from NONE to ATTACHED once it mapped the segment; the
/// server answers ATTACHED with CONFIRMED, and only then do writes switch
/// to the rings. Either side may end an unfinished negotiation instead
/// (the client: REFUSED; the server: WITHDRAWN), as it does before an exec
/// whose new program may not run tsss. Every move is a compare-and-swap,
/// so when both act at once exactly one of them wins and both sides agree.
pub const CLIENT_NONE: u32 = 0;
/// The client mapped the segment; it still writes to the socket.
pub const CLIENT_ATTACHED: u32 = 1;
/// The client will stay plain.
pub const CLIENT_REFUSED: u32 = 2;
/// The server saw the client attached: both switch their writes.
pub const SERVER_CONFIRMED: u32 = 3;
/// The server withdrew its offer before it was confirmed: both stay plain.
pub const SERVER_WITHDRAWN: u32 = 4;

/// Producer/consumer state of one direction.
///
/// Invariant (checked on every use, never assumed):
/// `tail <= head <= tail + cap`, both counting bytes since the switch, so
/// `head - tail` is the fill level and `index & (cap - 1)` the position.
#[repr(C)]
pub struct RingCtrl {
    /// Bytes ever written. Stored only by the producer (Release).
    pub head: CachePadded<AtomicU64>,
    /// Bytes ever consumed. Stored only by the consumer (Release).
    pub tail: CachePadded<AtomicU64>,
    pub flags: CachePadded<RingFlags>,
}

/// Rarely written words of one direction, apart from the hot indices.
#[repr(C)]
pub struct RingFlags {
    /// The consumer is about to sleep on the socket and wants a doorbell
    /// byte when `head` moves (SeqCst against `head`, Dekker style).
    pub reader_waiting: AtomicU32,
    /// A poll/epoll waiter wants a doorbell once half the ring is free.
    pub writer_waiting: AtomicU32,
    /// A blocked writer sleeps on the `space_seq` futex.
    pub writer_sleeping: AtomicU32,
    /// Bumped (and futex-woken) by the consumer when it frees space for a
    /// sleeping writer, or when the consumer side closes.
    pub space_seq: AtomicU32,
    /// Plain bytes the producer sent over the socket before switching to the
    /// ring, with [`SWITCHED`] set once published. The producer publishes it
    /// before it sends any control byte on the socket.
    pub switch_at: AtomicU64,
    /// Producer side will write no more (shutdown(SHUT_WR) or last close):
    /// the consumer reads EOF once the ring is empty.
    pub wr_closed: AtomicU32,
    /// Consumer side is gone: the producer gets EPIPE. [`RD_SHUT`] after
    /// shutdown(SHUT_RD), [`RD_RELEASED`] once the consumer's socket is (or is
    /// about to be) released, which discards what it left unread.
    pub rd_closed: AtomicU32,
    /// Plain bytes the consumer has read, stored as it reads them (before
    /// the switch only): what is still queued in the kernel for it.
    pub plain_read: AtomicU64,
}

/// [`RingFlags::rd_closed`] after shutdown(SHUT_RD).
pub const RD_SHUT: u32 = 1;
/// [`RingFlags::rd_closed`] after the consumer's last close or exit.
pub const RD_RELEASED: u32 = 2;

/// Records of ancillary data (SCM_RIGHTS, SCM_CREDENTIALS) in one
/// direction: the data bytes a sendmsg put in the ring starting at
/// `offset` came with control messages, which travel separately as a
/// one-byte *carrier* on the socket (the kernel moves descriptors; we
/// cannot). Written by the producer before it publishes the data.
#[repr(C)]
pub struct AncQueue {
    /// Records produced / consumed; `head - tail <= ANC_SLOTS`.
    pub head: AtomicU64,
    pub tail: AtomicU64,
    pub recs: [AncRec; ANC_SLOTS],
}

pub const ANC_SLOTS: usize = 64;

impl AncQueue {
    /// An empty queue (a zeroed segment holds one too).
    pub fn new() -> Self {
        AncQueue {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            recs: std::array::from_fn(|_| AncRec {
                offset: AtomicU64::new(0),
                len: AtomicU64::new(0),
            }),
        }
    }
}

impl Default for AncQueue {
    fn default() -> Self {
        Self::new()
    }
}

#[repr(C)]
pub struct AncRec {
    /// Stream offset (ring index) of the message's first byte.
    pub offset: AtomicU64,
    /// Its length: a read that delivers the control data stops there.
    /// Or'ed with [`ANC_CREDS_ONLY`] when the data is SCM_CREDENTIALS only.
    pub len: AtomicU64,
}

/// Flag in [`AncRec::len`]: a socket without SO_PASSCRED reads through.
pub const ANC_CREDS_ONLY: u64 = 1 << 63;

/// The socket byte that carries ancillary data (doorbells are 0).
pub const CARRIER: u8 = 2;

/// The start of every segment.
#[repr(C)]
pub struct SegHeader {
    pub magic: AtomicU64,
    pub nonce: AtomicU64,
    pub version: AtomicU32,
    /// The negotiation: one of `CLIENT_*` / `SERVER_*`.
    pub client_state: AtomicU32,
    pub rings: [RingCtrl; 2],
    /// Ancillary records, per direction like `rings`.
    pub anc: [AncQueue; 2],
    /// Bumped by every shutdown(2) call of either side: the kernel wakes
    /// both sockets on each, an edge for edge-triggered epoll even when
    /// nothing else changed.
    pub shut_seq: AtomicU32,
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<SegHeader>() <= HDR_SIZE);

impl RingFlags {
    pub fn new() -> Self {
        RingFlags {
            reader_waiting: AtomicU32::new(0),
            writer_waiting: AtomicU32::new(0),
            writer_sleeping: AtomicU32::new(0),
            space_seq: AtomicU32::new(0),
            switch_at: AtomicU64::new(0),
            wr_closed: AtomicU32::new(0),
            rd_closed: AtomicU32::new(0),
            plain_read: AtomicU64::new(0),
        }
    }
}

impl Default for RingFlags {
    fn default() -> Self {
        Self::new()
    }
}

impl RingCtrl {
    pub fn new() -> Self {
        RingCtrl {
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            flags: CachePadded::new(RingFlags::new()),
        }
    }
}

impl Default for RingCtrl {
    fn default() -> Self {
        Self::new()
    }
}
