//! The ring of tsss-core and what it needs, built from ../src for miri
//! (see Cargo.toml). Same module paths as in tsss-core, so the sources and
//! ../tests/fuzz_ring.rs compile unchanged.
#![deny(unsafe_op_in_unsafe_fn)]

#[path = "../src/copy.rs"]
pub mod copy;
#[path = "../src/layout.rs"]
pub mod layout;
#[path = "../src/protocol.rs"]
pub mod protocol;
#[path = "../src/ring.rs"]
pub mod ring;
#[path = "../src/sync.rs"]
pub mod sync;
