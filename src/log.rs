//! Logging to stderr with one raw write(2) per line: never through our own
//! `write` override, never allocating, safe in a signal handler.

use core::fmt::{self, Write};
use std::sync::atomic::Ordering::Relaxed;

pub const INFO: u8 = 1;
pub const DEBUG: u8 = 2;

pub fn enabled(level: u8) -> bool {
    crate::config::LOG_LEVEL.load(Relaxed) >= level
}

struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - 1 - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Writes `tsss[pid]: <message>\n` to fd 2.
pub fn emit(args: fmt::Arguments<'_>) {
    let mut l = Line {
        buf: [0; 512],
        len: 0,
    };
    let _ = write!(l, "tsss[{}]: ", rustix::process::getpid().as_raw_nonzero());
    let _ = l.write_fmt(args);
    l.buf[l.len] = b'\n';
    crate::os::proc::write_stderr(&l.buf[..=l.len]);
}

#[macro_export]
macro_rules! log {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            $crate::log::emit(format_args!($($arg)*));
        }
    };
}
