//! tsss core: the shared-memory transport behind libtsss.so.
//!
//! Safe API, no symbol overrides (those live in the `shim` crate), and no
//! unsafe code outside three modules: [`os`] (system calls), [`shm`] (the
//! mappings) and [`signals`] (handler deferral); the compiler enforces it.
//! Modules:
//! - [`wire`]: marker address and HELLO frame;
//! - [`shm`]: the segment, its rings and flag-word protocol, the side block;
//! - [`conn`]: negotiation and kernel stream semantics on top of the rings;
//! - [`readiness`]: poll/select/epoll emulation for accelerated sockets;
//! - [`registry`]: the per-process file of live connections `tsss stat` reads;
//! - [`signals`]: handlers deferred while a thread holds a connection lock;
//! - [`os`]: every system call, errno kept, timeouts as [`os::time::Deadline`].
//!
//! The design: `docs/DESIGN.md`.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
#[macro_use]
pub mod log;
#[cfg(not(loom))]
pub mod conn;
pub mod os;
#[cfg(not(loom))]
pub mod readiness;
#[cfg(not(loom))]
pub mod registry;
pub mod shm;
#[cfg(not(loom))]
pub mod signals;
pub mod sync;
pub mod wire;
