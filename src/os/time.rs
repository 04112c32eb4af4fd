//! Clocks and timeouts. [`Deadline`] is the one place a timeout in any C
//! form (milliseconds, `timespec`, `timeval`, `SO_SNDTIMEO`) becomes a
//! point in time, and back into milliseconds for a sleep.

use rustix::io::Errno;
use std::time::Duration;

/// Monotonic clock in nanoseconds (vDSO, no syscall).
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Wall clock (CLOCK_REALTIME) in nanoseconds since the epoch (vDSO, no
/// syscall): when a connection began, as another process can read it.
pub fn realtime_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// When a wait ends: a CLOCK_MONOTONIC instant, or never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline(Option<u64>);

impl Deadline {
    pub const NEVER: Deadline = Deadline(None);

    /// `ns` from now.
    pub fn after_ns(ns: u64) -> Deadline {
        Deadline(Some(now_ns().saturating_add(ns)))
    }

    pub fn after(d: Duration) -> Deadline {
        Self::after_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// poll(2)'s timeout: negative is none, 0 is now.
    pub fn after_ms(ms: i32) -> Deadline {
        match u64::try_from(ms) {
            Ok(ms) => Self::after_ns(ms * 1_000_000),
            Err(_) => Self::NEVER,
        }
    }

    /// A `timespec` timeout (ppoll, epoll_pwait2, recvmmsg): null is none;
    /// EINVAL if malformed, as the kernel says.
    pub fn from_timespec(t: Option<&libc::timespec>) -> Result<Deadline, Errno> {
        match t {
            None => Ok(Self::NEVER),
            Some(t) if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) => {
                Err(Errno::INVAL)
            }
            Some(t) => Ok(Self::after_ns(
                (t.tv_sec as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(t.tv_nsec as u64),
            )),
        }
    }

    /// A `timeval` timeout (select): null is none; EINVAL if malformed.
    pub fn from_timeval(t: Option<&libc::timeval>) -> Result<Deadline, Errno> {
        match t {
            None => Ok(Self::NEVER),
            Some(t) if t.tv_sec < 0 || !(0..1_000_000).contains(&t.tv_usec) => Err(Errno::INVAL),
            Some(t) => Ok(Self::after_ns(
                (t.tv_sec as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(t.tv_usec as u64 * 1000),
            )),
        }
    }

    pub fn is_never(&self) -> bool {
        self.0.is_none()
    }

    pub fn expired(&self) -> bool {
        self.0.is_some_and(|d| now_ns() >= d)
    }

    /// Nanoseconds left (0 once past), `None` for never.
    pub fn remaining_ns(&self) -> Option<u64> {
        self.0.map(|d| d.saturating_sub(now_ns()))
    }

    /// Milliseconds left for poll(2), rounded up so a sleep never ends
    /// early; -1 for none, 0 once past.
    pub fn remaining_ms(&self) -> i32 {
        match self.remaining_ns() {
            None => -1,
            Some(ns) => ns.div_ceil(1_000_000).min(i32::MAX as u64) as i32,
        }
    }

    /// The earlier of the two.
    pub fn min(self, other: Deadline) -> Deadline {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Deadline(Some(a.min(b))),
            (a, b) => Deadline(a.or(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert!(Deadline::after_ms(-1).is_never());
        assert_eq!(Deadline::after_ms(0).remaining_ms(), 0);
        let d = Deadline::after_ms(1500);
        assert!((1499..=1500).contains(&d.remaining_ms()));
        let bad = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000_000,
        };
        assert_eq!(Deadline::from_timespec(Some(&bad)), Err(Errno::INVAL));
        let ms = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_500_000,
        };
        // Rounded up: a sleep never ends early.
        assert_eq!(
            Deadline::from_timespec(Some(&ms)).unwrap().remaining_ms(),
            2
        );
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        assert!(Deadline::from_timeval(Some(&tv)).unwrap().remaining_ms() > 1990);
        assert_eq!(Deadline::NEVER.min(d), d);
    }
}
