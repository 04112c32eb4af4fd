//! The shared memory: the segment both sides map ([`segment`], laid out
//! as [`layout`] says), its byte rings ([`ring`], copied by [`copy`]), the
//! operations on its flag words ([`protocol`], model-checked with loom),
//! the per-side block shared across fork ([`side`]), and a read-only look
//! at a live segment's counters from outside the connection ([`peek`],
//! for `tsss stat`).
//!
//! Everything here that the peer can write is validated before use: a
//! hostile peer gets its connection reset, never an out-of-bounds access.
//! Unsafe code is allowed here (raw pointers into the mappings).
#![allow(unsafe_code)]

pub mod copy;
pub mod layout;
#[cfg(not(loom))]
pub mod peek;
pub mod protocol;
pub mod ring;
#[cfg(not(loom))]
pub mod segment;
#[cfg(not(loom))]
pub mod side;
