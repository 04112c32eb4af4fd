//! Atomics used by the shared-memory protocol: std's normally, loom's under
//! `--cfg loom` so the model checker can explore the same code.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
