//! Sockets the program added to an epoll before they connected: found
//! again at connect, and moved into the emulation.

use super::EpollSet;
use crate::conn::Conn;
use crate::os::poll::epoll_ctl;
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::ops::Deref;
use std::sync::atomic::{AtomicI32, Ordering::Relaxed};

impl<R: Deref<Target = Conn> + Clone> EpollSet<R> {
    /// Moves `fd`, registered in the application's kernel epoll `epfd`
    /// before it was accelerated, into this emulation (at the program's
    /// next EPOLL_CTL_MOD, or at connect).
    pub fn migrate(&self, fd: RawFd, conn: R, events: u32, data: u64) -> Result<(), Errno> {
        epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, fd, 0, 0)?;
        self.ctl(libc::EPOLL_CTL_ADD, fd, conn, events, data)
    }
}

/// The epoll (+1) each fd was last added to, whatever it was then: a socket
/// added before it connected is registered on the bare socket, where ring
/// data never shows; connect moves it into the emulation (nginx does this
/// for its upstreams). Only a hint: the kernel's fdinfo is read to confirm.
static EPOLL_HINT: [AtomicI32; 65536] = [const { AtomicI32::new(0) }; 65536];

/// EPOLL_CTL_ADD of `fd` to `epfd` (whatever `fd` is now).
pub fn note_epoll_add(epfd: RawFd, fd: RawFd) {
    if let Some(h) = usize::try_from(fd).ok().and_then(|i| EPOLL_HINT.get(i)) {
        h.store(epfd + 1, Relaxed);
    }
}

/// After `fd` became a connection: the epoll it was added to before, and
/// its events and data there, as that epoll's fdinfo says.
pub fn registration_before_connect(fd: RawFd) -> Option<(RawFd, u32, u64)> {
    let h = usize::try_from(fd).ok().and_then(|i| EPOLL_HINT.get(i))?;
    let epfd = h.swap(0, Relaxed) - 1;
    if epfd < 0 {
        return None;
    }
    let path = std::ffi::CString::new(format!("/proc/self/fdinfo/{epfd}")).ok()?;
    let text = crate::os::proc::read_small_file(&path).ok()?;
    let (events, data) = epoll_registration(&String::from_utf8_lossy(&text), fd)?;
    Some((epfd, events, data))
}

/// The events and data `fd` is registered with in a kernel epoll, from that
/// epoll's `/proc/self/fdinfo` text (`tfd: FD events: HEX data: HEX ...`).
/// For a socket the program added to an epoll before it connected.
pub fn epoll_registration(fdinfo: &str, fd: i32) -> Option<(u32, u64)> {
    for l in fdinfo.lines() {
        let mut w = l.split_whitespace();
        if w.next() != Some("tfd:") || w.next().and_then(|v| v.parse::<i32>().ok()) != Some(fd) {
            continue;
        }
        let (mut events, mut data) = (None, None);
        while let Some(k) = w.next() {
            match k {
                "events:" => events = w.next().and_then(|v| u32::from_str_radix(v, 16).ok()),
                "data:" => data = w.next().and_then(|v| u64::from_str_radix(v, 16).ok()),
                _ => {}
            }
        }
        return Some((events?, data?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_registration_from_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
                    tfd:        4 events: 80000019 data:                4  pos:0 ino:1eb119 sdev:9\n\
                    tfd:       12 events:       1d data:     7f00deadbeef  pos:0 ino:1 sdev:9\n";
        assert_eq!(epoll_registration(text, 4), Some((0x8000_0019, 4)));
        assert_eq!(epoll_registration(text, 12), Some((0x1d, 0x7f00_dead_beef)));
        assert_eq!(epoll_registration(text, 1), None);
        assert_eq!(epoll_registration("tfd: 3 events: zz data: 1", 3), None);
    }
}
