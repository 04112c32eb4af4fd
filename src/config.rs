//! `TSSS_*` environment variables, read once at load time.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Log verbosity: 0 off (default), 1 info, 2 debug.
pub static LOG_LEVEL: AtomicU8 = AtomicU8::new(0);
/// `TSSS_DISABLE`: every call passes straight through.
pub static DISABLED: AtomicBool = AtomicBool::new(false);
/// Ring capacity per direction in bytes (power of two).
pub static RING_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_RING_SIZE);
/// How long a blocked call spins on the ring before sleeping.
pub static SPIN_NS: AtomicU64 = AtomicU64::new(DEFAULT_SPIN_US * 1000);
/// `TSSS_OFFER=always`: a server offers every connection (`conn::offers`).
pub static OFFER_ALWAYS: AtomicBool = AtomicBool::new(false);

pub const DEFAULT_RING_SIZE: usize = 256 << 10;
pub const DEFAULT_SPIN_US: u64 = 50;

#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub disabled: bool,
    pub log_level: u8,
    pub ring_size: usize,
    pub spin_us: u64,
    /// `TSSS_REGISTRY`: list connections for `tsss stat` (default on).
    /// Where the registry goes (`XDG_RUNTIME_DIR`) is read by the shim's
    /// constructor without allocating (see `registry::configure`).
    pub registry: bool,
    /// `TSSS_OFFER`: `always`, or (default) not to listeners whose
    /// connections keep closing within milliseconds (`conn::offers`).
    pub offer_always: bool,
    /// Messages about values that were ignored.
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses the variables through `get` (testable without touching the
    /// process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Config {
        let mut warnings = Vec::new();
        let disabled =
            get("TSSS_DISABLE").is_some_and(|v| !matches!(v.as_str(), "" | "0" | "no" | "false"));
        let log_level = match get("TSSS_LOG").as_deref() {
            None | Some("" | "0" | "off" | "none") => 0,
            Some("info" | "1") => 1,
            Some("debug" | "2") => 2,
            Some(v) => {
                warnings.push(format!(
                    "TSSS_LOG={v} not understood (off, info, debug); using info"
                ));
                1
            }
        };
        let ring_size = match get("TSSS_RING_SIZE") {
            None => DEFAULT_RING_SIZE,
            Some(v) => match parse_size(&v) {
                Some(n) if n.is_power_of_two() && (4096..=(64 << 20)).contains(&n) => n,
                _ => {
                    warnings.push(format!(
                        "TSSS_RING_SIZE={v} must be a power of two from 4K to 64M; using {}K",
                        DEFAULT_RING_SIZE >> 10
                    ));
                    DEFAULT_RING_SIZE
                }
            },
        };
        let spin_us = match get("TSSS_SPIN_US") {
            None => DEFAULT_SPIN_US,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n <= 10_000 => n,
                _ => {
                    warnings.push(format!(
                        "TSSS_SPIN_US={v} must be 0..10000; using {DEFAULT_SPIN_US}"
                    ));
                    DEFAULT_SPIN_US
                }
            },
        };
        let registry = match get("TSSS_REGISTRY").as_deref() {
            None | Some("" | "1" | "on" | "yes" | "true") => true,
            Some("0" | "off" | "no" | "false") => false,
            Some(v) => {
                warnings.push(format!(
                    "TSSS_REGISTRY={v} not understood (on, off); using on"
                ));
                true
            }
        };
        let offer_always = match get("TSSS_OFFER").as_deref() {
            None | Some("" | "adaptive") => false,
            Some("always") => true,
            Some(v) => {
                warnings.push(format!(
                    "TSSS_OFFER={v} not understood (adaptive, always); using adaptive"
                ));
                false
            }
        };
        Config {
            disabled,
            log_level,
            ring_size,
            spin_us,
            registry,
            offer_always,
            warnings,
        }
    }

    /// Publishes the values to the globals the hot paths read.
    pub fn install(&self) {
        DISABLED.store(self.disabled, Relaxed);
        LOG_LEVEL.store(self.log_level, Relaxed);
        RING_SIZE.store(self.ring_size, Relaxed);
        SPIN_NS.store(self.spin_us * 1000, Relaxed);
        OFFER_ALWAYS.store(self.offer_always, Relaxed);
    }
}

fn parse_size(v: &str) -> Option<usize> {
    let v = v.trim();
    let (num, mul) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1 << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        _ => (v, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mul)
}

pub fn disabled() -> bool {
    DISABLED.load(Relaxed)
}

pub fn ring_size() -> usize {
    RING_SIZE.load(Relaxed)
}

pub fn spin_ns() -> u64 {
    SPIN_NS.load(Relaxed)
}

pub fn offer_always() -> bool {
    OFFER_ALWAYS.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]);
        assert!(!c.disabled);
        assert_eq!(
            (c.log_level, c.ring_size, c.spin_us),
            (0, DEFAULT_RING_SIZE, DEFAULT_SPIN_US)
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn parses_values() {
        let c = cfg(&[
            ("TSSS_DISABLE", "1"),
            ("TSSS_LOG", "debug"),
            ("TSSS_RING_SIZE", "1M"),
            ("TSSS_SPIN_US", "0"),
        ]);
        assert!(c.disabled);
        assert_eq!((c.log_level, c.ring_size, c.spin_us), (2, 1 << 20, 0));
        assert!(!cfg(&[("TSSS_DISABLE", "0")]).disabled);
        assert!(c.registry);
        assert!(!cfg(&[("TSSS_REGISTRY", "off")]).registry);
        assert!(!c.offer_always);
        assert!(cfg(&[("TSSS_OFFER", "always")]).offer_always);
    }

    #[test]
    fn bad_values_warn_and_default() {
        let c = cfg(&[
            ("TSSS_RING_SIZE", "1000"),
            ("TSSS_LOG", "loud"),
            ("TSSS_SPIN_US", "x"),
            ("TSSS_OFFER", "never"),
        ]);
        assert_eq!(c.ring_size, DEFAULT_RING_SIZE);
        assert_eq!(c.log_level, 1);
        assert!(!c.offer_always);
        assert_eq!(c.warnings.len(), 4);
    }
}
