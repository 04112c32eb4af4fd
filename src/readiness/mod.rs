//! poll/select/epoll for accelerated sockets (docs/DESIGN.md, "Readiness").
//!
//! The kernel cannot see ring data, so readiness of an accelerated fd comes
//! from ring state; the kernel is used to sleep. While sleeping, an
//! accelerated fd is watched for doorbells (POLLIN) and hang-ups only; its
//! POLLOUT and edge-triggered / one-shot behaviour are emulated here. Every
//! call waits the same way ([`sleep`]): look, spin briefly on the rings,
//! ask for doorbells, look again, sleep in the kernel.

pub mod epoll;
pub mod poll;
mod sleep;

pub use epoll::EpollSet;
pub use poll::{FdSet, poll, select};

use crate::conn::Conn;
use rustix::fd::{BorrowedFd, RawFd};
use std::ops::Deref;

/// How the shim finds the connection behind an fd.
pub trait Lookup {
    type Ref: Deref<Target = Conn> + Clone;
    fn conn(&self, fd: RawFd) -> Option<Self::Ref>;
    /// Whether `fd` still names `conn` (an epoll watch's check at each
    /// look; the shim answers without taking a reference).
    fn names(&self, fd: RawFd, conn: &Self::Ref) -> bool {
        self.conn(fd).is_some_and(|c| std::ptr::eq(&*c, &**conn))
    }
    /// The connection went plain: stop treating `fd` specially.
    fn forget(&self, fd: RawFd, conn: &Conn);
    /// `fd`, one of the descriptors the application handed to the call
    /// being served, as a borrowed descriptor for that call.
    fn borrow(&self, fd: RawFd) -> BorrowedFd<'_>;
}
