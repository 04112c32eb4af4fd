//! poll(2), ppoll(2) and epoll as raw syscalls: never our own overrides.

use super::errno::ret;
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use rustix::io::Errno;

pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> Result<usize, Errno> {
    // SAFETY: fds is a valid, exclusively borrowed array of fds.len() entries.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_poll,
            fds.as_mut_ptr(),
            fds.len() as libc::c_ulong,
            timeout_ms,
        )
    })
}

/// ppoll(2) with a millisecond timeout (-1: none) and an optional signal
/// mask installed only for the sleep.
pub fn ppoll(
    fds: &mut [libc::pollfd],
    timeout_ms: i32,
    mask: Option<&libc::sigset_t>,
) -> Result<usize, Errno> {
    let Some(mask) = mask else {
        return poll(fds, timeout_ms);
    };
    let ts = libc::timespec {
        tv_sec: (timeout_ms / 1000) as libc::time_t,
        tv_nsec: ((timeout_ms % 1000) * 1_000_000) as libc::c_long,
    };
    let tsp = if timeout_ms < 0 {
        std::ptr::null()
    } else {
        &ts as *const libc::timespec
    };
    // SAFETY: valid array, timespec and sigset for the call's duration; the
    // kernel's sigset size on Linux is 8 bytes.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_ppoll,
            fds.as_mut_ptr(),
            fds.len() as libc::c_ulong,
            tsp,
            mask as *const libc::sigset_t,
            8usize,
        )
    })
}

/// The kernel's readiness of a socket, now (a zero-timeout poll for
/// IN|OUT|RDHUP; HUP and ERR come whatever is asked).
pub fn kernel_view(fd: BorrowedFd<'_>) -> PollFlags {
    let mut p = [PollFd::new(
        &fd,
        PollFlags::IN | PollFlags::OUT | PollFlags::RDHUP,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut p, Some(&zero)) {
        Ok(1) => p[0].revents(),
        _ => PollFlags::empty(),
    }
}

/// poll(2) revents as the bits rustix knows (the libc backend's are i16).
pub fn poll_flags(revents: i16) -> PollFlags {
    PollFlags::from_bits_retain(revents as u16 as _)
}

/// A new epoll instance, close-on-exec.
pub fn epoll_create() -> Result<OwnedFd, Errno> {
    // SAFETY: integer arguments only.
    let fd = ret(|| unsafe { libc::syscall(libc::SYS_epoll_create1, libc::EPOLL_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// epoll_ctl(2) on raw descriptor numbers: the application's epoll and the
/// descriptors it names (the kernel checks them).
pub fn epoll_ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32, data: u64) -> Result<(), Errno> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: ev is a valid epoll_event for the call's duration.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_epoll_ctl,
            epfd,
            op,
            fd,
            &mut ev as *mut libc::epoll_event,
        )
    })
    .map(|_| ())
}

pub fn epoll_wait(
    epfd: BorrowedFd<'_>,
    evs: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> Result<usize, Errno> {
    use rustix::fd::AsRawFd;
    if evs.is_empty() {
        return Ok(0);
    }
    // SAFETY: evs is a valid, exclusively borrowed array of evs.len() entries.
    ret(|| unsafe {
        libc::syscall(
            libc::SYS_epoll_wait,
            epfd.as_raw_fd(),
            evs.as_mut_ptr(),
            evs.len() as libc::c_int,
            timeout_ms,
        )
    })
}
