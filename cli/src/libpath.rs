//! Where libtsss.so is: `TSSS_LIB`, next to this binary (the build tree:
//! target/release/), or under the install prefix (`<prefix>/bin/tsss`
//! finds `<prefix>/lib/tsss/libtsss.so`).

use std::path::PathBuf;

pub const LIB_NAME: &str = "libtsss.so";

/// The library, or the places that were tried.
pub fn find() -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os("TSSS_LIB").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        return if p.is_file() {
            Ok(std::fs::canonicalize(&p).unwrap_or(p))
        } else {
            Err(format!("TSSS_LIB={} is not a file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our own binary: {e}"))?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let dir = exe.parent().unwrap_or(std::path::Path::new("/"));
    let tried = [dir.join(LIB_NAME), dir.join("../lib/tsss").join(LIB_NAME)];
    for p in &tried {
        if p.is_file() {
            return Ok(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
        }
    }
    Err(format!(
        "cannot find {LIB_NAME} (tried {}); set TSSS_LIB to its path",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
