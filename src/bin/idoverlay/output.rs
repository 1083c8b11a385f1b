//! How results and errors reach the user: one line on stderr for people,
//! a JSON object on stdout for programs (`--json`).

use std::io::Write;
use std::process::ExitCode;

use idoverlay::{Advice, ErrorKind};
use serde_json::{json, Value};

/// `println!` for what a command prints on stdout. A reader that went away
/// (`idoverlay list | head -1`) is no error and no panic: the rest of the
/// output is dropped and the command finishes its work (a demo still
/// removes what it made) with its own status. Any other write error is
/// said once on stderr and makes a successful command fail
/// ([`write_failed`]).
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

/// Set when stdout could not be written (the reader gone, or an error).
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set when a write to stdout failed for another reason than a gone reader.
static WRITE_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The body of [`outln!`].
pub fn write_line(line: std::fmt::Arguments<'_>) {
    write_out(|out| out.write_fmt(line).and_then(|()| out.write_all(b"\n")));
}

/// `bytes` on stdout, as [`outln!`] writes a line.
pub fn write_bytes(bytes: &[u8]) {
    write_out(|out| out.write_all(bytes).and_then(|()| out.flush()));
}

/// Runs `write` on stdout unless it is gone, and notes how it failed.
fn write_out(write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
    if STDOUT_GONE.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Err(e) = write(&mut std::io::stdout().lock()) else {
        return;
    };
    STDOUT_GONE.store(true, std::sync::atomic::Ordering::Relaxed);
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        WRITE_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!("idoverlay: cannot write to standard output: {e}");
    }
}

/// Whether writing to stdout failed (not counting a reader that went away):
/// a command that otherwise succeeded then exits with [`EXIT_FAILURE`].
pub fn write_failed() -> bool {
    WRITE_FAILED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where and how to report.
pub struct Output {
    pub json: bool,
}

/// Exit status for an operation that failed (the kernel refused, a
/// syscall failed) and for anything not listed below.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for input the user must fix, and bad usage (as clap).
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Exit status when this kernel cannot do what was asked.
pub const EXIT_UNSUPPORTED: u8 = 3;
/// Exit status when a privilege is missing.
pub const EXIT_PERMISSION: u8 = 4;
/// Exit status when a cleanup could not finish (`gc` reported leftovers).
pub const EXIT_CLEANUP: u8 = 5;

/// The exit status for a library error of kind `kind`.
pub fn exit_status(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidInput => EXIT_INVALID_INPUT,
        ErrorKind::Unsupported => EXIT_UNSUPPORTED,
        ErrorKind::Permission => EXIT_PERMISSION,
        ErrorKind::Cleanup => EXIT_CLEANUP,
        _ => EXIT_FAILURE,
    }
}

/// The library's advice in this command's words: its flags and commands
/// (appended to the message as they are, separator included).
fn cli_phrase(advice: Advice) -> Option<&'static str> {
    Some(match advice {
        Advice::AddLowerLayer => "; give --lower DIR (top-most first)",
        Advice::OneLayerEach => {
            ": give each layer its own --lower (or --data-lower), top-most first"
        }
        Advice::AddUpperAndWork => " (--upper/--work)",
        Advice::AddWorkDir => " (--work DIR, empty, on the same mount)",
        Advice::AddUpperDir => " (--upper DIR)",
        Advice::GiveIdMaps => {
            "give --uidmap and --gidmap (e.g. 0:100000:65536) or --userns FILE|PID"
        }
        Advice::GiveContainerUserns => " give a container's user namespace, or --uidmap/--gidmap",
        Advice::GiveIdMapsInstead => ", or give --uidmap/--gidmap",
        Advice::LayersNotAsOptions => {
            "; give layers with --lower/--data-lower/--upper/--work, or use the mount(8) form \
             `-t overlay overlay -o lowerdir=…`"
        }
        Advice::MapsNotAsOptions => "; give maps with --uidmap/--gidmap or --userns",
        Advice::UnmountLazily => {
            " use --lazy to detach it now and let the kernel free it when the last user goes"
        }
        Advice::UseHostStaged => "; --strategy host-staged works without it",
        Advice::ProbeTheLayers => "; probe again with --path DIR on the layers' filesystem",
        Advice::ProbeAgain => "; save one with `idoverlay probe --json`",
        Advice::RunGc => ", run `idoverlay gc` to finish",
        Advice::IdmapUpperNeedsUpperAndWork => " (--idmap-upper: give --upper and --work too)",
        Advice::GiveMapsOfRoot => " (--idmap-upper: give --uidmap/--gidmap mapping 0)",
        Advice::ChownUpper => "or give --chown-upper (for an empty upper)",
        _ => return None,
    })
}

/// A library warning as this command says it: the remedies it names in
/// the library's words, in this command's.
pub fn warning(text: &str) -> String {
    let mut text = text.to_string();
    for advice in [Advice::ChownUpper] {
        if let Some(phrase) = cli_phrase(advice) {
            text = text.replace(advice.phrase(), phrase);
        }
    }
    text
}

/// A library error as this command says it.
pub fn message(err: &idoverlay::Error) -> String {
    match err.advice().and_then(cli_phrase) {
        Some(phrase) => err.message_with(phrase),
        None => err.to_string(),
    }
}

impl Output {
    /// Prints a success object on stdout when `--json` was given.
    pub fn result(&self, value: Value) {
        if self.json {
            outln!("{value}");
        }
    }

    /// Reports an error and picks the exit status.
    pub fn fail(&self, e: &anyhow::Error) -> ExitCode {
        if let Some(done) = e.downcast_ref::<AlreadyReported>() {
            eprintln!("idoverlay: {}", done.0);
            return ExitCode::from(done.1);
        }
        let lib = e.chain().find_map(|c| c.downcast_ref::<idoverlay::Error>());
        let bad_input = e.downcast_ref::<BadInput>().is_some();
        let message = one_line(e);
        eprintln!("idoverlay: {message}");
        if self.json {
            let error = match lib {
                Some(err) => json!({
                    "kind": err.kind().as_str(),
                    "message": message,
                    "errno": err.errno_name(),
                    "path": err.path().map(|p| p.to_string_lossy().into_owned()),
                    "kernel_messages": err.kernel_messages(),
                }),
                None => json!({
                    "kind": if bad_input { "invalid_input" } else { "other" },
                    "message": message,
                    "errno": Value::Null,
                    "path": Value::Null,
                    "kernel_messages": [],
                }),
            };
            outln!("{}", json!({ "error": error }));
        }
        if bad_input {
            return ExitCode::from(EXIT_INVALID_INPUT);
        }
        ExitCode::from(lib.map_or(EXIT_FAILURE, |err| exit_status(err.kind())))
    }
}

/// Input the user must fix that the command line itself found (not the
/// library): reported as the library's invalid input is, exit status 2.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// A failure whose details are already on stdout (a `--json` report that
/// says what went wrong): only the one line goes to stderr, and the exit
/// status given.
#[derive(Debug)]
pub struct AlreadyReported(pub String, pub u8);

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AlreadyReported {}

/// The error as one line: context added by the binary, joined with ": ",
/// down to the first library error, whose message already holds its cause.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        if let Some(lib) = cause.downcast_ref::<idoverlay::Error>() {
            parts.push(message(lib));
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ").replace('\n', "\\n")
}

/// A trace sink printing each step to stderr, for `-v`.
pub fn stderr_trace() -> idoverlay::Trace {
    std::sync::Arc::new(|line: &str| eprintln!("idoverlay: {line}"))
}

/// A path as text for a terminal or a log, one run of printable
/// characters: control characters, invisible ones that reorder or hide
/// text (bidi controls, zero-width ones), bytes that are not UTF-8, and
/// `\` itself written `\xNN`. Paths come from whoever named the
/// directories; raw, a name holding a newline or an escape sequence
/// would draw rows or lines of its own in `show` and `list`.
pub fn printable(path: &std::path::Path) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    let hidden = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if hidden(c) {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    #[test]
    fn a_path_prints_as_one_run_of_printable_characters() {
        assert_eq!(
            printable(Path::new("/var/lib/c 1/rootfs")),
            "/var/lib/c 1/rootfs"
        );
        assert_eq!(printable(Path::new("/é/ü")), "/é/ü");
        assert_eq!(
            printable(Path::new("/a\nlayers    /etc\x1b[2J")),
            "/a\\x0alayers    /etc\\x1b[2J"
        );
        assert_eq!(printable(Path::new("/a\\x0a")), "/a\\x5cx0a");
        assert_eq!(
            printable(Path::new("/\u{202e}txt.exe")),
            "/\\xe2\\x80\\xaetxt.exe"
        );
        assert_eq!(
            printable(Path::new(OsStr::from_bytes(b"/\xff\xfe/x"))),
            "/\\xff\\xfe/x"
        );
    }
}
