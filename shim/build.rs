//! Links the unwinder statically (libgcc_eh) instead of libgcc_s.so.
//!
//! Rust's std asks for `-lgcc_s`; a preloaded library that needs it makes
//! every process map one more object and run its constructor, which
//! executes CPUID a dozen times (a VM exit each under a hypervisor): about
//! a tenth of the start-up cost tsss added. With `panic = "abort"` the
//! unwinder only walks our own frames for a backtrace, and the version
//! script Rust gives the linker keeps its symbols local, so a C++ program's
//! own libgcc_s is not interposed. A `libgcc_s.a` that stands for
//! `libgcc_eh.a` in a directory searched first does it; if the toolchain
//! has no libgcc_eh.a, nothing changes.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg("-print-file-name=libgcc_eh.a")
        .output();
    let Ok(out) = out else { return };
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.is_absolute() || !path.exists() {
        return;
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let script = dir.join("libgcc_s.a");
    // A linker script, not an archive: the linker reads it in place of
    // the archive and takes the real one from the path given.
    std::fs::write(&script, format!("INPUT({})\n", path.display())).expect("write libgcc_s.a");
    println!("cargo:rustc-link-search=native={}", dir.display());
}
