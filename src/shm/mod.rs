//! The shared memory: the segment both sides map ([`segment`], laid out
//! as [`layout`] says), its byte rings ([`ring`], copied by [`copy`]), the
//! operations on its flag words ([`protocol`], model-checked with loom),
//! and the per-side block shared across fork ([`side`]).
//!
//! Everything here that the peer can write is validated before use: a
//! hostile peer gets its connection reset, never an out-of-bounds access.
//! Unsafe code is allowed here (raw pointers into the mappings).
#![allow(unsafe_code)]

pub mod copy;
pub mod layout;
pub mod protocol;
pub mod ring;
#[cfg(not(loom))]
pub mod segment;
#[cfg(not(loom))]
pub mod side;
