//! The operating system: every call tsss makes for itself, and, with
//! [`crate::shm`] and [`crate::signals`], the only home of unsafe code (the
//! crate root denies it everywhere else).
//!
//! All of them are raw syscalls (rustix's linux_raw backend, or
//! `libc::syscall`) or libc functions the shim never overrides, so calling
//! them from inside an override cannot recurse. None of them changes errno:
//! overrides call them on the program's behalf and drop many of their
//! errors, and the kernel never changes errno on success.
#![allow(unsafe_code)]

pub mod errno;
pub mod fd;
pub mod lock;
pub mod net;
pub mod page;
pub mod poll;
pub mod proc;
pub mod shm;
pub mod time;
