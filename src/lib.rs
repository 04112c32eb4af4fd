//! tsss core: the shared-memory transport behind libtsss.so.
//!
//! Safe API, no symbol overrides (those live in the `shim` crate). Modules:
//! - [`wire`]: marker address and HELLO frame;
//! - [`layout`], [`segment`]: the SysV segment and its header;
//! - [`ring`]: the byte ring, validated against a hostile peer;
//! - [`conn`]: negotiation and kernel stream semantics on top of the rings;
//! - [`readiness`]: poll/select/epoll emulation for accelerated sockets;
//! - [`protocol`]: the doorbell and switch steps, model-checked with loom;
//! - [`signals`]: handlers deferred while a thread holds a connection lock.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
#[macro_use]
pub mod log;
#[cfg(not(loom))]
pub mod conn;
pub mod copy;
pub mod layout;
pub mod protocol;
#[cfg(not(loom))]
pub mod readiness;
pub mod ring;
#[cfg(not(loom))]
pub mod segment;
#[cfg(not(loom))]
pub mod side;
#[cfg(not(loom))]
pub mod signals;
pub mod sync;
pub mod sys;
pub mod wire;
