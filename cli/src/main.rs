//! `tsss`: run programs with libtsss.so, list their live connections,
//! check a machine and a program.
//!
//! The command line is defined once, here, with clap; the man pages and the
//! shell completions are generated from this definition (`tsss man`,
//! `tsss completions`), so they never drift from it.
#![deny(unsafe_code)]

mod doctor;
mod elf;
mod libpath;
mod run;
mod stat;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tsss",
    version,
    about = "Run programs with tsss and inspect their connections",
    long_about = "Run programs with tsss and inspect their connections.\n\n\
        tsss (libtsss.so, loaded with LD_PRELOAD) moves the bytes of local \
        Unix-domain stream connections through shared memory when both ends \
        run it. `tsss run` starts a program with the library preloaded, \
        `tsss stat` lists the live connections of your processes, and \
        `tsss doctor` checks whether acceleration can work on this machine \
        and for a given program."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a program with libtsss.so preloaded
    #[command(long_about = "Run a program with libtsss.so preloaded.\n\n\
        The library is appended to LD_PRELOAD (never twice) and the program \
        replaces tsss (exec): its exit status and signals are its own. The \
        library is found through TSSS_LIB, next to this binary, or under the \
        install prefix (../lib/tsss/). A statically linked, setuid or setgid \
        program ignores LD_PRELOAD: tsss says so on stderr and runs it \
        anyway.")]
    Run(RunArgs),
    /// List live tsss connections (like ss)
    #[command(long_about = "List live tsss connections, in the spirit of ss.\n\n\
        One line per connection: pid and command, descriptor, role, peer pid, \
        address, ring size and fill, bytes written and read, age, and state \
        (accelerated, negotiating, or plain with the reason). Reads the \
        registry each process keeps (see tsss(7)) and each connection's \
        segment, read-only. A user sees their own processes; root sees \
        everyone's. Files of processes that are gone are removed.")]
    Stat(StatArgs),
    /// Check whether acceleration can work here, and for a program
    #[command(
        long_about = "Check whether acceleration can work here, and for a program.\n\n\
        Without a program: the SysV shared-memory limits (kernel.shmmni, \
        shmmax, shmall) against the ring size and how many connections they \
        allow, the IPC namespace, membarrier, and the registry directory. \
        With a program: whether LD_PRELOAD applies to it (statically linked, \
        setuid/setgid, musl) and which of the socket calls it imports tsss \
        overrides. Exits 1 if a check failed."
    )]
    Doctor(DoctorArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages tsss.1, tsss-run.1, tsss-stat.1, tsss-doctor.1, tsss.7
    #[command(hide = true)]
    Man {
        /// Directory to write them into
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogLevel {
    Off,
    Info,
    Debug,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// TSSS_LOG: one line per connection on stderr (info), or the negotiation too (debug)
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log: Option<LogLevel>,
    /// TSSS_RING_SIZE: bytes per direction, a power of two from 4K to 64M
    #[arg(long, value_name = "SIZE", value_parser = parse_ring_size)]
    pub ring_size: Option<String>,
    /// TSSS_SPIN_US: how long a blocked call spins before sleeping (0 to 10000)
    #[arg(long, value_name = "MICROSECONDS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub spin_us: Option<u64>,
    /// The program and its arguments (after `--`)
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<OsString>,
}

#[derive(clap::Args)]
pub struct StatArgs {
    /// Only this process (repeatable)
    #[arg(short, long, value_name = "PID")]
    pub pid: Vec<i32>,
    /// One JSON document (per refresh with --watch)
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECONDS (default 1) and show rates
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "1",
        value_parser = parse_interval
    )]
    pub watch: Option<f64>,
}

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Ring size to check the limits against (default: TSSS_RING_SIZE or 256K)
    #[arg(long, value_name = "SIZE", value_parser = parse_ring_size)]
    pub ring_size: Option<String>,
    /// A program to check: does LD_PRELOAD apply, which calls are overridden
    #[arg(value_name = "PROGRAM")]
    pub program: Option<OsString>,
}

/// A ring size as the library parses it (one parser for both).
fn parse_ring_size(v: &str) -> Result<String, String> {
    let c = tsss_core::config::Config::from_lookup(|k| (k == "TSSS_RING_SIZE").then(|| v.into()));
    match c.warnings.first() {
        Some(w) => Err(w.replace("; using 256K", "")),
        None => Ok(v.to_string()),
    }
}

/// Ring size in bytes from a value [`parse_ring_size`] accepted, or the
/// environment's TSSS_RING_SIZE, or the default.
pub fn ring_bytes(v: Option<&str>) -> usize {
    let env = std::env::var("TSSS_RING_SIZE").ok();
    let v = v.map(str::to_string).or(env);
    tsss_core::config::Config::from_lookup(|k| (k == "TSSS_RING_SIZE").then(|| v.clone()).flatten())
        .ring_size
}

fn parse_interval(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(s) if (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err("an interval in seconds from 0.1 to 3600".into()),
    }
}

/// The man pages, from the command definition: tsss(1), one page per
/// subcommand, and tsss(7) on the library itself.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let render = |c: clap::Command, file: &str| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c).render(&mut out)?;
        std::fs::write(dir.join(file), out)
    };
    render(cmd.clone(), "tsss.1")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "completions" {
            continue;
        }
        // clap names are &'static str; this process writes a few pages and exits.
        let name: &'static str = String::leak(format!("tsss-{}", sub.get_name()));
        render(sub.clone().name(name), &format!("{name}.1"))?;
    }
    std::fs::write(dir.join("tsss.7"), overview_page()?)
}

/// The library's configuration: the ENVIRONMENT section of tsss(7).
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "TSSS_LOG",
        "off (default); info: one line per connection on stderr (accelerated, or plain \
         and why); debug: the negotiation too.",
    ),
    (
        "TSSS_DISABLE",
        "any value but 0/false/no: every call passes straight to libc.",
    ),
    (
        "TSSS_RING_SIZE",
        "bytes per direction, a power of two from 4K to 64M (default 256K); chosen by \
         the accepting side.",
    ),
    (
        "TSSS_SPIN_US",
        "how long a blocked call spins on the ring before sleeping, 0 to 10000 \
         (default 50); 0 on a machine with more runnable processes than CPUs.",
    ),
    (
        "TSSS_REGISTRY",
        "off: keep no registry file, so tsss stat lists nothing for this process \
         (default on).",
    ),
    (
        "TSSS_OFFER",
        "adaptive (default): a server stops offering on a listener whose last 8 \
         connections closed within 2 ms of their accept (one in 32 still is); \
         always: every connection.",
    ),
    (
        "XDG_RUNTIME_DIR",
        "where the registry lives (its tsss subdirectory); /tmp/tsss-<uid> when unset.",
    ),
    (
        "TSSS_LIB",
        "for tsss run and tsss doctor: the libtsss.so to use.",
    ),
];

/// tsss(7): the library, its configuration and its registry. Title, name
/// and description are clap_mangen's; the ENVIRONMENT section is ours
/// (clap has no notion of a library's variables).
fn overview_page() -> std::io::Result<Vec<u8>> {
    let cmd = clap::Command::new("tsss")
        .about("transparent shared-memory socket swapping (libtsss.so)")
        .long_about(
            "libtsss.so is an LD_PRELOAD shim. Preload it on both ends of a \
             Unix-domain stream connection (tsss run does) and the bytes of that \
             connection move through a per-connection SysV shared-memory segment \
             instead of the kernel. The programs are not modified. If only one end \
             runs tsss, the connection is an ordinary socket, byte for byte.\n\n\
             Each process with tsss connections keeps a small registry file, \
             $XDG_RUNTIME_DIR/tsss/<pid> or /tmp/tsss-<uid>/<pid> (in a 0700 \
             directory checked for owner and mode), locked for the process's life \
             and updated at connection events only; tsss stat reads it and removes \
             the files of dead processes.\n\n\
             A statically linked, setuid or setgid program ignores LD_PRELOAD: its \
             connections are plain sockets.",
        );
    let man = clap_mangen::Man::new(cmd).section("7");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_description_section(&mut out)?;
    out.extend_from_slice(b".SH ENVIRONMENT\n");
    for (name, text) in ENVIRONMENT {
        let text = text.replace('\\', "\\\\").replace('-', "\\-");
        out.extend_from_slice(format!(".TP\n\\fB{name}\\fR\n{text}\n").as_bytes());
    }
    out.extend_from_slice(
        b".SH SEE ALSO\ntsss(1), tsss\\-run(1), tsss\\-stat(1), tsss\\-doctor(1), ld.so(8)\n",
    );
    Ok(out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run::main(a),
        Cmd::Stat(a) => stat::main(a),
        Cmd::Doctor(a) => doctor::main(a),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tsss", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man { dir } => match write_man_pages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tsss: cannot write man pages into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ring_size_is_parsed_as_the_library_does() {
        assert!(parse_ring_size("1M").is_ok());
        assert!(parse_ring_size("1000").is_err());
        assert_eq!(ring_bytes(Some("64K")), 64 << 10);
    }

    #[test]
    fn run_takes_the_program_after_double_dash() {
        let c = Cli::try_parse_from(["tsss", "run", "--log", "info", "--", "ls", "-l"]).unwrap();
        let Cmd::Run(a) = c.cmd else { panic!() };
        assert_eq!(a.command, ["ls", "-l"]);
        let c = Cli::try_parse_from(["tsss", "stat", "--watch"]).unwrap();
        let Cmd::Stat(a) = c.cmd else { panic!() };
        assert_eq!(a.watch, Some(1.0));
    }
}
