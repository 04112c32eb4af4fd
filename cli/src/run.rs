//! `tsss run`: LD_PRELOAD the library and exec the program, so that its
//! exit status and signals are its own.

use crate::{LogLevel, RunArgs, elf, libpath};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn main(a: RunArgs) -> ExitCode {
    let lib = match libpath::find() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tsss: {e}");
            return ExitCode::from(127);
        }
    };
    let prog = &a.command[0];
    let mut cmd = std::process::Command::new(prog);
    cmd.args(&a.command[1..]);
    let old = std::env::var_os("LD_PRELOAD");
    cmd.env("LD_PRELOAD", with_preload(old.as_deref(), &lib));
    if let Some(l) = a.log {
        let v = match l {
            LogLevel::Off => "off",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        };
        cmd.env("TSSS_LOG", v);
    }
    if let Some(s) = &a.ring_size {
        cmd.env("TSSS_RING_SIZE", s);
    }
    if let Some(s) = a.spin_us {
        cmd.env("TSSS_SPIN_US", s.to_string());
    }
    if let Some(path) = resolve(prog) {
        for w in preload_obstacles(&path) {
            eprintln!("tsss: {}: {w}; running it without tsss", path.display());
        }
    }
    let e = cmd.exec();
    eprintln!("tsss: cannot run {}: {e}", prog.to_string_lossy());
    ExitCode::from(match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    })
}

/// `old` with `lib` appended, unless a libtsss.so is already in it: the
/// loader would run two copies of every override.
pub fn with_preload(old: Option<&OsStr>, lib: &Path) -> OsString {
    let old = old.map(OsStr::as_bytes).unwrap_or_default();
    let has = old
        .split(|&c| c == b':' || c == b' ')
        .filter(|e| !e.is_empty())
        .any(|e| {
            let p = Path::new(OsStr::from_bytes(e));
            p == lib || p.file_name() == Some(OsStr::new(libpath::LIB_NAME))
        });
    if has {
        return OsString::from_vec(old.to_vec());
    }
    let mut v = old.to_vec();
    if !v.is_empty() {
        v.push(b':');
    }
    v.extend_from_slice(lib.as_os_str().as_bytes());
    OsString::from_vec(v)
}

/// The file `execvp` would run for `prog`.
pub fn resolve(prog: &OsStr) -> Option<PathBuf> {
    let p = Path::new(prog);
    if prog.as_bytes().contains(&b'/') {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| is_executable(c))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why the loader would ignore LD_PRELOAD for this program (empty: it
/// will preload). Scripts are judged by their interpreter.
pub fn preload_obstacles(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(w) = secure_exec(path) {
        out.push(w);
    }
    let target = elf::script_interpreter(path).unwrap_or_else(|| path.to_path_buf());
    match elf::Elf::read(&target) {
        Ok(e) if e.is_static() => out.push(format!(
            "{}is statically linked: the loader ignores LD_PRELOAD",
            interp_note(path, &target)
        )),
        Ok(e) if e.is_musl() => out.push(format!(
            "{}is linked with musl: libtsss.so is built for glibc and cannot be preloaded",
            interp_note(path, &target)
        )),
        _ => {}
    }
    out
}

fn interp_note(path: &Path, target: &Path) -> String {
    if path == target {
        String::new()
    } else {
        format!("its interpreter {} ", target.display())
    }
}

/// setuid/setgid to someone else, or file capabilities: the kernel marks
/// the exec secure (AT_SECURE) and the loader drops LD_PRELOAD.
pub fn secure_exec(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    if m.mode() & 0o4000 != 0 && m.uid() != uid {
        return Some(format!(
            "is setuid (owner {}): the loader ignores LD_PRELOAD",
            m.uid()
        ));
    }
    if m.mode() & 0o2000 != 0 && m.gid() != gid {
        return Some(format!(
            "is setgid (group {}): the loader ignores LD_PRELOAD",
            m.gid()
        ));
    }
    let mut buf = [0u8; 64];
    if rustix::fs::getxattr(path, "security.capability", &mut buf).is_ok_and(|n| n > 0) {
        return Some("has file capabilities: the loader ignores LD_PRELOAD".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_is_appended_once() {
        let lib = Path::new("/opt/tsss/libtsss.so");
        assert_eq!(with_preload(None, lib), "/opt/tsss/libtsss.so");
        assert_eq!(
            with_preload(Some(OsStr::new("/a.so")), lib),
            "/a.so:/opt/tsss/libtsss.so"
        );
        for already in ["/opt/tsss/libtsss.so", "/a.so /elsewhere/libtsss.so"] {
            assert_eq!(with_preload(Some(OsStr::new(already)), lib), already);
        }
    }
}
