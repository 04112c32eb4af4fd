//! Just enough ELF to answer `tsss doctor`: the interpreter (is it
//! dynamically linked, and with which libc), the needed libraries, and the
//! dynamic symbols a program imports or a library exports. Every offset
//! and size is checked against the file: the input is any file a user
//! names.

use std::path::{Path, PathBuf};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const SHT_DYNAMIC: u32 = 6;
const SHT_DYNSYM: u32 = 11;
const DT_NEEDED: u64 = 1;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;
const STT_NOTYPE: u8 = 0;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
/// Programs larger than this are not read whole.
const MAX_SIZE: u64 = 1 << 30;

#[derive(Debug, Default)]
pub struct Elf {
    pub interp: Option<String>,
    pub has_dynamic: bool,
    pub needed: Vec<String>,
    /// Undefined function symbols: what the program takes from libraries.
    pub imports: Vec<String>,
    /// Defined global function symbols: what a library offers.
    pub exports: Vec<String>,
    /// Whether section headers were there to read symbols from.
    pub has_symbols: bool,
}

impl Elf {
    pub fn read(path: &Path) -> Result<Elf, String> {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len();
        if len > MAX_SIZE {
            return Err(format!("{} is larger than 1 GiB", path.display()));
        }
        let data =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Elf::parse(&data).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// No interpreter: the kernel runs it directly (static, or static-pie),
    /// and no loader ever looks at LD_PRELOAD.
    pub fn is_static(&self) -> bool {
        self.interp.is_none()
    }

    pub fn is_musl(&self) -> bool {
        self.interp.as_deref().is_some_and(|i| i.contains("musl"))
    }

    pub fn parse(d: &[u8]) -> Result<Elf, String> {
        let r = Reader::open(d)?;
        let t = r.tables()?;
        let mut elf = Elf::default();
        elf.read_segments(&r, &t)?;
        let secs = r.sections(&t)?;
        elf.read_sections(&r, &secs)?;
        for v in [&mut elf.imports, &mut elf.exports] {
            v.sort();
            v.dedup();
        }
        Ok(elf)
    }

    /// The interpreter and whether there is a dynamic segment.
    fn read_segments(&mut self, r: &Reader, t: &Tables) -> Result<(), String> {
        for i in 0..u64::from(t.phnum) {
            let at = off(t.phoff, i, t.phentsize)?;
            let ty = r.u32(at)?;
            let (offset, filesz) = if r.wide {
                (r.u64(at + 8)?, r.u64(at + 32)?)
            } else {
                (u64::from(r.u32(at + 4)?), u64::from(r.u32(at + 16)?))
            };
            match ty {
                PT_INTERP => {
                    let b = r.slice(offset, filesz)?;
                    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                    self.interp = Some(String::from_utf8_lossy(&b[..end]).into_owned());
                }
                PT_DYNAMIC => self.has_dynamic = true,
                _ => {}
            }
        }
        Ok(())
    }

    /// Symbols from the dynamic symbol tables, needed libraries from the
    /// dynamic sections.
    fn read_sections(&mut self, r: &Reader, secs: &[Section]) -> Result<(), String> {
        for &(ty, o, size, link, ent) in secs {
            match ty {
                SHT_DYNSYM => {
                    self.has_symbols = true;
                    let strs = strtab(r, secs, link)?;
                    self.read_dynsym(r, strs, o, size, ent)?;
                }
                SHT_DYNAMIC => {
                    let strs = strtab(r, secs, link)?;
                    self.read_dynamic(r, strs, o, size)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn read_dynsym(
        &mut self,
        r: &Reader,
        strs: &[u8],
        o: u64,
        size: u64,
        ent: u64,
    ) -> Result<(), String> {
        let ent = if ent == 0 {
            if r.wide { 24 } else { 16 }
        } else {
            ent
        };
        for i in 1..size / ent {
            let at = off(o, i, ent as u16)?;
            let name = r.u32(at)?;
            let (info, shndx) = if r.wide {
                (r.u8(at + 4)?, r.u16(at + 6)?)
            } else {
                (r.u8(at + 12)?, r.u16(at + 14)?)
            };
            let (bind, kind) = (info >> 4, info & 0xf);
            if !matches!(bind, STB_GLOBAL | STB_WEAK) {
                continue;
            }
            let Some(name) = cstr_at(strs, name as usize) else {
                continue;
            };
            if shndx == 0 && matches!(kind, STT_FUNC | STT_NOTYPE) {
                self.imports.push(name);
            } else if shndx != 0 && matches!(kind, STT_FUNC | STT_GNU_IFUNC) {
                self.exports.push(name);
            }
        }
        Ok(())
    }

    fn read_dynamic(&mut self, r: &Reader, strs: &[u8], o: u64, size: u64) -> Result<(), String> {
        let ent = if r.wide { 16 } else { 8 };
        for i in 0..size / ent {
            let at = off(o, i, ent as u16)?;
            let (tag, val) = if r.wide {
                (r.u64(at)?, r.u64(at + 8)?)
            } else {
                (u64::from(r.u32(at)?), u64::from(r.u32(at + 4)?))
            };
            if tag == 0 {
                break;
            }
            if tag == DT_NEEDED
                && let Some(n) = cstr_at(strs, val as usize)
            {
                self.needed.push(n);
            }
        }
        Ok(())
    }
}

/// Where the program and section header tables are, from the ELF header.
struct Tables {
    phoff: u64,
    shoff: u64,
    phentsize: u16,
    phnum: u16,
    shentsize: u16,
    shnum: u16,
}

/// A section header: (type, offset, size, link, entsize).
type Section = (u32, u64, u64, u32, u64);

/// The string table a section links to.
fn strtab<'a>(r: &Reader<'a>, secs: &[Section], link: u32) -> Result<&'a [u8], String> {
    let &(_, o, s, _, _) = secs
        .get(link as usize)
        .ok_or("string table index out of range")?;
    r.slice(o, s)
}

/// `base + i * size`, without overflow.
fn off(base: u64, i: u64, size: u16) -> Result<u64, String> {
    i.checked_mul(u64::from(size))
        .and_then(|o| o.checked_add(base))
        .ok_or_else(|| "offset overflow".to_string())
}

fn cstr_at(strs: &[u8], at: usize) -> Option<String> {
    let b = strs.get(at..)?;
    let end = b.iter().position(|&c| c == 0)?;
    (end > 0).then(|| String::from_utf8_lossy(&b[..end]).into_owned())
}

struct Reader<'a> {
    d: &'a [u8],
    wide: bool,
}

impl<'a> Reader<'a> {
    /// Checks the identification bytes: an ELF file, of a known class,
    /// little-endian.
    fn open(d: &'a [u8]) -> Result<Reader<'a>, String> {
        if d.len() < 52 || d[..4] != *b"\x7fELF" {
            return Err("not an ELF file".into());
        }
        let r = Reader {
            d,
            wide: match d[4] {
                1 => false,
                2 => true,
                _ => return Err("unknown ELF class".into()),
            },
        };
        if d[5] != 1 {
            return Err("big-endian ELF is not supported".into());
        }
        Ok(r)
    }

    fn tables(&self) -> Result<Tables, String> {
        let (phoff, shoff, phentsize, phnum, shentsize, shnum) = if self.wide {
            (
                self.u64(32)?,
                self.u64(40)?,
                self.u16(54)?,
                self.u16(56)?,
                self.u16(58)?,
                self.u16(60)?,
            )
        } else {
            (
                u64::from(self.u32(28)?),
                u64::from(self.u32(32)?),
                self.u16(42)?,
                self.u16(44)?,
                self.u16(46)?,
                self.u16(48)?,
            )
        };
        Ok(Tables {
            phoff,
            shoff,
            phentsize,
            phnum,
            shentsize,
            shnum,
        })
    }

    fn sections(&self, t: &Tables) -> Result<Vec<Section>, String> {
        let mut secs = Vec::new();
        for i in 0..u64::from(t.shnum) {
            let at = off(t.shoff, i, t.shentsize)?;
            secs.push(if self.wide {
                (
                    self.u32(at + 4)?,
                    self.u64(at + 24)?,
                    self.u64(at + 32)?,
                    self.u32(at + 40)?,
                    self.u64(at + 56)?,
                )
            } else {
                (
                    self.u32(at + 4)?,
                    u64::from(self.u32(at + 16)?),
                    u64::from(self.u32(at + 20)?),
                    self.u32(at + 24)?,
                    u64::from(self.u32(at + 36)?),
                )
            });
        }
        Ok(secs)
    }

    fn slice(&self, at: u64, len: u64) -> Result<&'a [u8], String> {
        let start = usize::try_from(at).map_err(|_| "offset out of range")?;
        let len = usize::try_from(len).map_err(|_| "size out of range")?;
        start
            .checked_add(len)
            .and_then(|end| self.d.get(start..end))
            .ok_or_else(|| "truncated ELF file".to_string())
    }

    fn bytes<const N: usize>(&self, at: u64) -> Result<[u8; N], String> {
        let s = self.slice(at, N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&self, at: u64) -> Result<u8, String> {
        Ok(self.bytes::<1>(at)?[0])
    }

    fn u16(&self, at: u64) -> Result<u16, String> {
        self.bytes(at).map(u16::from_le_bytes)
    }

    fn u32(&self, at: u64) -> Result<u32, String> {
        self.bytes(at).map(u32::from_le_bytes)
    }

    fn u64(&self, at: u64) -> Result<u64, String> {
        self.bytes(at).map(u64::from_le_bytes)
    }
}

/// For a `#!` script: the interpreter the kernel runs (what LD_PRELOAD
/// applies to). `/usr/bin/env prog` is looked up on PATH.
pub fn script_interpreter(path: &Path) -> Option<PathBuf> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&c| c == b'\n').unwrap_or(line.len())];
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    let interp = PathBuf::from(words.next()?);
    if interp.file_name().is_some_and(|f| f == "env") {
        let prog = words.find(|w| !w.starts_with('-'))?;
        return crate::run::resolve(std::ffi::OsStr::new(prog));
    }
    Some(interp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_dynamic_program() {
        let e = Elf::read(Path::new("/bin/sh")).unwrap();
        assert!(!e.is_static());
        assert!(e.has_symbols);
        assert!(e.needed.iter().any(|n| n.starts_with("libc.so")));
        assert!(e.imports.iter().any(|n| n == "read" || n == "__read_chk"));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Elf::parse(b"not an elf").is_err());
        let sh = std::fs::read("/bin/sh").unwrap();
        // Every truncation and a run of corruptions: an error or a result,
        // never a panic.
        for cut in (0..sh.len().min(8192)).step_by(7) {
            let _ = Elf::parse(&sh[..cut]);
        }
        let mut x = sh.clone();
        for i in (16..x.len().min(4096)).step_by(3) {
            x[i] = x[i].wrapping_mul(31).wrapping_add(7);
            let _ = Elf::parse(&x);
        }
    }
}
