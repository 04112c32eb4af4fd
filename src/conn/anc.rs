//! Ancillary data (SCM_RIGHTS, SCM_CREDENTIALS) over an accelerated
//! connection (docs/DESIGN.md, "Ancillary data").
//!
//! While a direction is a plain socket, a message with control data goes
//! to the kernel whole, capped so that a read never crosses the switch
//! point. Once it runs over the ring, the control messages travel on the
//! socket with a one-byte *carrier* (the kernel validates them and moves
//! the descriptors), and a record in the segment ties them to the first
//! byte of their message. The read that reaches that byte takes the
//! carrier with a real recvmsg into the caller's control buffer (so
//! MSG_CTRUNC, MSG_CMSG_CLOEXEC and discarding on read() are the kernel's
//! own) and stops at the end of that message, as the kernel's read does.

use super::rx::Step;
use super::{Conn, Outcome, RecvOpts, RxGuard, SendOpts};
use crate::os::net::{self, MsgOut};
use crate::shm::layout::{ANC_CREDS_ONLY, ANC_SLOTS, AncQueue, CARRIER};
use crate::shm::protocol;
use crate::shm::ring::{Corrupt, DstCursor};
use crate::shm::segment::Segment;
use crate::sync::Ordering::{Acquire, Relaxed, Release};
use rustix::fd::BorrowedFd;
use rustix::io::Errno;
use rustix::net::RecvFlags;
use std::io::{IoSlice, IoSliceMut};

/// Receives one byte that should be the carrier of ancillary data (`true`:
/// MSG_PEEK) into the caller's control buffer (without one, descriptors
/// are discarded, as the kernel does for read()). Returns whether it was
/// the carrier (else it was a doorbell, consumed harmlessly).
pub type CarrierRecv<'a> = dyn FnMut(bool) -> Result<bool, Errno> + 'a;
/// Sends the one-byte carrier with the caller's control messages.
pub type CarrierSend<'a> = dyn FnMut() -> Result<(), Errno> + 'a;

/// Who sent the bytes a recvmsg returns, for its `msg_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameFrom {
    /// The kernel filled the caller's name buffer: this many bytes.
    Kernel(usize),
    /// The connected peer (its bound address, or none).
    Peer,
    /// Nobody: no bytes at the end of the stream.
    Nobody,
}

/// What a recvmsg reports besides the byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlRecv {
    /// Bytes of control data in the caller's buffer.
    pub control_len: usize,
    /// `msg_flags`: MSG_CTRUNC, and MSG_CMSG_CLOEXEC echoed as the kernel does.
    pub flags: i32,
    pub name: NameFrom,
}

/// A [`CarrierRecv`] that takes the next control byte and drops whatever
/// ancillary data came with it (the kernel's read() drops it too).
pub(super) fn discard_carrier(fd: BorrowedFd<'_>, peek: bool) -> Result<bool, Errno> {
    let f = if peek {
        RecvFlags::DONTWAIT | RecvFlags::PEEK
    } else {
        RecvFlags::DONTWAIT
    };
    let mut b = [0u8; 1];
    match rustix::net::recv(fd, &mut b, f)? {
        (_, 1) if b[0] == CARRIER => Ok(true),
        (_, 1) if b[0] == 0 => Ok(false),
        _ => Err(Errno::IO),
    }
}

/// A [`CarrierRecv`] that takes the carrier with the caller's control
/// buffer; what the kernel reported goes to `got`.
fn carrier_into<'a>(
    fd: BorrowedFd<'a>,
    control: &'a mut [u8],
    flags: i32,
    got: &'a mut MsgOut,
) -> impl FnMut(bool) -> Result<bool, Errno> + 'a {
    move |peek| {
        let mut byte = [0u8];
        let fl = libc::MSG_DONTWAIT
            | (flags & libc::MSG_CMSG_CLOEXEC)
            | if peek { libc::MSG_PEEK } else { 0 };
        let (n, out) = net::recvmsg(fd, &mut [IoSliceMut::new(&mut byte)], &mut [], control, fl)?;
        match (n, byte[0]) {
            (1, CARRIER) => {
                *got = out;
                Ok(true)
            }
            (1, 0) => Ok(false),
            _ => Err(Errno::IO),
        }
    }
}

/// Whether every control message in `control` is SCM_CREDENTIALS (a
/// socket without SO_PASSCRED reads through those).
fn only_credentials(control: &[u8]) -> bool {
    const HDR: usize = size_of::<libc::cmsghdr>();
    let align = |n: usize| n.div_ceil(size_of::<usize>()) * size_of::<usize>();
    let word = |b: &[u8], at: usize, n: usize| b.get(at..at + n).map(|s| s.to_vec());
    let mut at = 0;
    let mut any = false;
    while at + HDR <= control.len() {
        let (Some(len), Some(level), Some(ty)) = (
            word(control, at, size_of::<usize>()),
            word(control, at + size_of::<usize>(), 4),
            word(control, at + size_of::<usize>() + 4, 4),
        ) else {
            break;
        };
        let len = usize::from_ne_bytes(len.try_into().unwrap_or_default());
        let level = i32::from_ne_bytes(level.try_into().unwrap_or_default());
        let ty = i32::from_ne_bytes(ty.try_into().unwrap_or_default());
        if len < HDR {
            break;
        }
        if level != libc::SOL_SOCKET || ty != libc::SCM_CREDENTIALS {
            return false;
        }
        any = true;
        at += align(len);
    }
    any
}

/// The caller's buffers from byte `skip` on.
fn window<'b>(bufs: &'b mut [IoSliceMut<'_>], mut skip: usize) -> Vec<IoSliceMut<'b>> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs.iter_mut() {
        let s = skip.min(b.len());
        skip -= s;
        if b.len() > s {
            out.push(IoSliceMut::new(&mut b[s..]));
        }
    }
    out
}

/// The caller's buffers cut to their first `max` bytes.
fn capped<'b>(bufs: &'b mut [IoSliceMut<'_>], mut max: usize) -> Vec<IoSliceMut<'b>> {
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs.iter_mut() {
        let l = b.len().min(max);
        if l > 0 {
            out.push(IoSliceMut::new(&mut b[..l]));
            max -= l;
        }
    }
    out
}

impl Conn {
    /// recvmsg(2): `name` and `control` are the caller's buffers (either
    /// may be empty), `flags` its MSG_* flags.
    pub fn recvmsg(
        &self,
        fd: BorrowedFd<'_>,
        bufs: &mut [IoSliceMut<'_>],
        name: &mut [u8],
        control: &mut [u8],
        flags: i32,
    ) -> Outcome<(usize, ControlRecv)> {
        if let Some(g) = self.gate() {
            return g;
        }
        if !control.is_empty() {
            match self.recvmsg_plain(fd, bufs, name, control, flags) {
                Outcome::Kernel => {}
                done => return done,
            }
        }
        self.recvmsg_ring(fd, bufs, control, flags)
    }

    /// recvmsg with a control buffer while our incoming direction is still
    /// a plain socket (`Kernel`: it runs over the ring; read it there).
    fn recvmsg_plain(
        &self,
        fd: BorrowedFd<'_>,
        bufs: &mut [IoSliceMut<'_>],
        name: &mut [u8],
        control: &mut [u8],
        flags: i32,
    ) -> Outcome<(usize, ControlRecv)> {
        let o = RecvOpts::from_flags(flags);
        let mut out = MsgOut::default();
        let want = crate::shm::ring::total_len(bufs);
        let plain = self.recv_plain_with(fd, o.dontwait, o.peek, want, |max, dontwait| {
            let fl = flags | if dontwait { libc::MSG_DONTWAIT } else { 0 };
            let (n, got) = net::recvmsg(fd, &mut capped(bufs, max), name, control, fl)?;
            out = got;
            Ok(n)
        });
        let info = |out: &MsgOut| ControlRecv {
            control_len: out.control_len,
            flags: out.flags,
            name: NameFrom::Kernel(out.name_len),
        };
        match plain {
            // The last plain bytes, no control data: the kernel's call
            // would go on into what now travels over the ring, without
            // waiting.
            Some((Ok(n), true)) if n > 0 && out.control_len == 0 => {
                let mut rest = window(bufs, n);
                if rest.is_empty() {
                    return Outcome::Done(Ok((n, info(&out))));
                }
                if o.peek {
                    let more = self.peek_past_switch(n, &mut rest);
                    return Outcome::Done(Ok((n + more, info(&out))));
                }
                let more = self.recvmsg_ring(fd, &mut rest, control, flags | libc::MSG_DONTWAIT);
                let mut total = info(&out);
                let n = match more {
                    Outcome::Done(Ok((k, i))) if k > 0 => {
                        total.control_len = i.control_len;
                        total.flags = i.flags;
                        n + k
                    }
                    _ => n,
                };
                Outcome::Done(Ok((n, total)))
            }
            Some((r, _)) => Outcome::Done(r.map(|n| (n, info(&out)))),
            None => Outcome::Kernel,
        }
    }

    /// recvmsg once the incoming direction runs over the ring: a carrier
    /// reached on the way brings the control data.
    fn recvmsg_ring(
        &self,
        fd: BorrowedFd<'_>,
        bufs: &mut [IoSliceMut<'_>],
        control: &mut [u8],
        flags: i32,
    ) -> Outcome<(usize, ControlRecv)> {
        let asked = bufs.iter().any(|b| !b.is_empty());
        let mut got = MsgOut::default();
        let mut carrier = carrier_into(fd, control, flags, &mut got);
        let r = self.recv_with(fd, &mut carrier, bufs, RecvOpts::from_flags(flags));
        drop(carrier);
        let Outcome::Done(r) = r else {
            return Outcome::Kernel;
        };
        Outcome::Done(r.map(|n| {
            // A zero-length read names the sender only if there are bytes
            // (a 0 at EOF names nobody).
            let asked = asked || self.bytes_readable(fd) == Some(0);
            let info = ControlRecv {
                control_len: got.control_len,
                // The kernel echoes MSG_CMSG_CLOEXEC in msg_flags.
                flags: (got.flags & libc::MSG_CTRUNC) | (flags & libc::MSG_CMSG_CLOEXEC),
                name: if n > 0 || !asked {
                    NameFrom::Peer
                } else {
                    NameFrom::Nobody
                },
            };
            (n, info)
        }))
    }

    /// sendmsg(2) with the caller's control messages: the whole message to
    /// the kernel while our direction is a plain socket; after the switch
    /// the data takes the ring and the control messages a carrier.
    pub fn sendmsg(
        &self,
        fd: BorrowedFd<'_>,
        bufs: &[IoSlice<'_>],
        control: &[u8],
        flags: i32,
    ) -> Outcome<usize> {
        let o = SendOpts::from_flags(flags);
        if control.is_empty() {
            return self.send(fd, bufs, o);
        }
        if let Some(g) = self.gate() {
            return g;
        }
        if let Some(r) = self.send_plain_with(|| net::sendmsg(fd, bufs, control, flags)) {
            return Outcome::Done(r);
        }
        let mut carrier = || {
            let fl = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            match net::sendmsg(fd, &[IoSlice::new(&[CARRIER])], control, fl)? {
                1 => Ok(()),
                _ => Err(Errno::IO),
            }
        };
        let o = SendOpts {
            creds_only: only_credentials(control),
            ..o
        };
        self.send_with(fd, Some(&mut carrier), bufs, o)
    }

    /// A receive that carries ancillary data (recvmsg with a control
    /// buffer) while our incoming direction is still a plain socket: runs
    /// `f(max, dontwait)`, the real recvmsg with its data capped at `max`
    /// bytes (and MSG_DONTWAIT added if `dontwait`), so
    /// the kernel hands over descriptors and credentials itself and the
    /// switch point is never crossed. `None`: the direction runs over the
    /// ring. With the result: whether the call stopped exactly at the
    /// switch point (the caller may go on reading from the ring, as the
    /// kernel's call would have).
    fn recv_plain_with(
        &self,
        fd: BorrowedFd<'_>,
        nonblock_call: bool,
        peek: bool,
        want: usize,
        mut f: impl FnMut(usize, bool) -> Result<usize, Errno>,
    ) -> Option<(Result<usize, Errno>, bool)> {
        use super::state::Phase;
        loop {
            {
                let mut rx = self.lock_rx();
                self.progress_rx(fd, &mut rx);
                let st = self.phase();
                if st == Phase::Pending {
                    // HELLO not here yet: wait for the first bytes rather than
                    // let a control-less read take the first message.
                    drop(rx);
                    if nonblock_call || self.nonblocking() {
                        return Some((Err(Errno::AGAIN), false));
                    }
                    if let Err(e) = self.wait_rx(fd) {
                        return Some((Err(e), false));
                    }
                    continue;
                }
                if st != Phase::Offered && st != Phase::Attached || self.sb().rx_ring.load(Acquire)
                {
                    return None;
                }
                // Bytes seen before the limit is published are data; those
                // a previous call saw still are. A program that sends every
                // message with ancillary data never switches: it asks the
                // kernel again only when they cannot fill the call.
                let cached = rx.plain_known > 0 && rx.plain_known >= want as u64;
                let queued = match cached {
                    true => rx.plain_known,
                    false => rustix::io::ioctl_fionread(fd).unwrap_or(0) as u64,
                };
                let limit = rx.limit.or_else(|| {
                    let l = self
                        .seg()
                        .and_then(|s| protocol::switch_point(self.rx_ring(s).flags()));
                    rx.limit = l;
                    l
                });
                let allowed = match limit {
                    Some(l) => rx.left_before(l).unwrap_or(0) as usize,
                    None => {
                        rx.plain_known = queued;
                        queued as usize
                    }
                };
                let at_eof = allowed == 0
                    && limit.is_none()
                    && matches!(
                        rustix::net::recv(fd, &mut [0u8; 1], RecvFlags::PEEK | RecvFlags::DONTWAIT),
                        Ok((_, 0))
                    );
                if allowed > 0 || at_eof {
                    // At EOF the real call just returns 0. An earlier call's
                    // count must not block: if those bytes went behind our
                    // back (another image reading the socket), ask anew.
                    let trusted = cached && limit.is_none();
                    let r = f(allowed.max(1), trusted);
                    if trusted && r == Err(Errno::AGAIN) {
                        rx.plain_known = 0;
                        continue;
                    }
                    let n = *r.as_ref().unwrap_or(&0) as u64;
                    let at_switch = limit.is_some_and(|l| rx.plain_read + n == l);
                    if !peek {
                        self.read_plain(&mut rx, n);
                    }
                    return Some((r, at_switch));
                }
                if limit.is_some() {
                    // Every plain byte was read: the ring takes over.
                    return None;
                }
            }
            if nonblock_call || self.nonblocking() {
                return Some((Err(Errno::AGAIN), false));
            }
            if let Err(e) = self.wait_rx(fd) {
                return Some((Err(e), false));
            }
        }
    }

    /// After a peek that returned the last `got` plain bytes before the
    /// switch point: peeks on into the ring, as the kernel's peek would go
    /// on into the next bytes. Stops before a message with ancillary data
    /// (its carrier sits behind the unread plain bytes on the socket).
    fn peek_past_switch(&self, got: usize, bufs: &mut [IoSliceMut<'_>]) -> usize {
        let rx = self.lock_rx();
        let (Some(l), Some(seg)) = (rx.limit, self.seg()) else {
            return 0;
        };
        if rx.plain_read + got as u64 != l {
            return 0;
        }
        self.peek_ring_start(&rx, seg, &mut DstCursor::new(bufs))
            .unwrap_or(0)
    }

    /// Peeks the ring's first bytes, up to the next message with ancillary
    /// data (its carrier sits behind any unread plain bytes).
    pub(super) fn peek_ring_start(
        &self,
        rx: &RxGuard<'_>,
        seg: &Segment,
        dst: &mut DstCursor<'_, '_>,
    ) -> Result<usize, Corrupt> {
        let ring = self.rx_ring(seg);
        let anc = self.rx_records(seg);
        let (at, head) = (ring.tail(), ring.head());
        let (qh, qt) = (anc.head.load(Acquire), anc.tail.load(Relaxed));
        let max = if qh == qt {
            usize::MAX
        } else {
            let off = anc.recs[(qt % ANC_SLOTS as u64) as usize]
                .offset
                .load(Acquire);
            off.saturating_sub(at) as usize
        };
        rx.consumer(&ring).pop_from(dst, at, head, max, true)
    }

    /// The incoming direction's record queue.
    fn rx_records<'s>(&self, seg: &'s Segment) -> &'s AncQueue {
        &seg.header().anc[self.rx_dir() as usize]
    }

    /// Ring phase, rx lock held: reads the ring's bytes up to the end of
    /// the next message with ancillary data, taking its carrier if the read
    /// reaches its first byte (`Stop`: the read ends there, as the
    /// kernel's does). `None`: nothing to read.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rx_records_pass(
        &self,
        fd: BorrowedFd<'_>,
        seg: &Segment,
        rx: &RxGuard<'_>,
        carrier: &mut CarrierRecv<'_>,
        dst: &mut DstCursor<'_, '_>,
        peek: bool,
        passcred: &mut Option<bool>,
    ) -> Result<Option<Step>, Errno> {
        let ring = self.rx_ring(seg);
        let anc = self.rx_records(seg);
        // Data first, records second: the writer publishes a record before
        // its data, so every byte below this head has its record visible
        // below; reading past it could skip one.
        let at = ring.tail();
        let head = ring.head();
        let (qt, qi, rec) = self.next_record(fd, seg, at, peek, passcred)?;
        // (Both terms were checked against the capacity: no overflow,
        // whatever the peer wrote.)
        let max = rec.map_or(usize::MAX, |(off, len)| (off - at + len) as usize);
        // From the head loaded above, never a newer one (see there).
        let n = rx
            .consumer(&ring)
            .pop_from(dst, at, head, max, peek)
            .map_err(|_| self.broken())?;
        if n == 0 {
            return Ok(None);
        }
        if !peek && qi != qt {
            // Drop the carriers of the passed-over records this read went
            // past (in socket order, before any later carrier).
            let mut t = qt;
            while t != qi
                && anc.recs[(t % ANC_SLOTS as u64) as usize]
                    .offset
                    .load(Relaxed)
                    .wrapping_sub(at)
                    < n as u64
            {
                self.take_carrier(fd, false, &mut |p| discard_carrier(fd, p))?;
                t = t.wrapping_add(1);
            }
            anc.tail.store(t, Release);
        }
        if let Some((off, _)) = rec
            && off - at < n as u64
        {
            self.take_carrier(fd, peek, carrier)?;
            if !peek {
                anc.tail.store(qi.wrapping_add(1), Release);
                self.space_bell(fd, &ring);
            }
            return Ok(Some(Step::Stop));
        }
        if !peek {
            self.space_bell(fd, &ring);
        }
        Ok(Some(Step::Data))
    }

    /// The first record ahead of ring index `at` that this read must stop
    /// at: `(queue tail, its index, Some((offset, length)))`. Credentials
    /// alone are invisible to a socket without SO_PASSCRED (the kernel
    /// neither reports nor stops at them), so such records are passed over
    /// (a peek keeps stopping: their carriers stay queued ahead of any
    /// later one). Every record is checked: the message must end within
    /// what a full ring could hold.
    #[allow(clippy::type_complexity)]
    fn next_record(
        &self,
        fd: BorrowedFd<'_>,
        seg: &Segment,
        at: u64,
        peek: bool,
        passcred: &mut Option<bool>,
    ) -> Result<(u64, u64, Option<(u64, u64)>), Errno> {
        let cap = self.rx_ring(seg).capacity() as u64;
        let anc = self.rx_records(seg);
        let (qh, qt) = (anc.head.load(Acquire), anc.tail.load(Relaxed));
        if qh.wrapping_sub(qt) > ANC_SLOTS as u64 {
            return Err(self.broken());
        }
        let mut qi = qt;
        while qi != qh {
            let r = &anc.recs[(qi % ANC_SLOTS as u64) as usize];
            let (off, raw) = (r.offset.load(Acquire), r.len.load(Acquire));
            let len = raw & !ANC_CREDS_ONLY;
            if off < at || len == 0 || len > cap || off - at > cap {
                return Err(self.broken());
            }
            if raw & ANC_CREDS_ONLY != 0
                && !peek
                && !*passcred.get_or_insert_with(|| {
                    rustix::net::sockopt::socket_passcred(fd).unwrap_or(false)
                })
            {
                qi = qi.wrapping_add(1);
                continue;
            }
            return Ok((qt, qi, Some((off, len))));
        }
        Ok((qt, qi, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, ty: i32, data: &[u8]) -> Vec<u8> {
        let len = size_of::<libc::cmsghdr>() + data.len();
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while v.len() % size_of::<usize>() != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn credentials_only() {
        let creds = cmsg(libc::SOL_SOCKET, libc::SCM_CREDENTIALS, &[0; 12]);
        let rights = cmsg(libc::SOL_SOCKET, libc::SCM_RIGHTS, &[0; 4]);
        assert!(only_credentials(&creds));
        assert!(!only_credentials(&rights));
        assert!(!only_credentials(&[creds.clone(), rights.clone()].concat()));
        assert!(only_credentials(&[creds.clone(), creds].concat()));
        assert!(!only_credentials(&[]));
        // A truncated or nonsense header ends the walk, never a panic.
        assert!(!only_credentials(&rights[..5]));
        assert!(!only_credentials(&[0xff; 40]));
    }
}
