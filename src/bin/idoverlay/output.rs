//! How results and errors reach the user: one line on stderr for people,
//! a JSON object on stdout for programs (`--json`).

use std::process::ExitCode;

use serde_json::{json, Value};

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
pub fn exit_status(kind: &str) -> u8 {
    match kind {
        "invalid_input" => EXIT_INVALID_INPUT,
        "unsupported" => EXIT_UNSUPPORTED,
        "permission" => EXIT_PERMISSION,
        "cleanup" => EXIT_CLEANUP,
        _ => EXIT_FAILURE,
    }
}

impl Output {
    /// Prints a success object on stdout when `--json` was given.
    pub fn result(&self, value: Value) {
        if self.json {
            println!("{value}");
        }
    }

    /// Reports an error and picks the exit status.
    pub fn fail(&self, e: &anyhow::Error) -> ExitCode {
        if let Some(done) = e.downcast_ref::<AlreadyReported>() {
            eprintln!("idoverlay: {}", done.0);
            return ExitCode::from(done.1);
        }
        let lib = e.chain().find_map(|c| c.downcast_ref::<idoverlay::Error>());
        let message = one_line(e);
        eprintln!("idoverlay: {message}");
        if self.json {
            let error = match lib {
                Some(err) => json!({
                    "kind": err.kind(),
                    "message": message,
                    "errno": err.errno_name(),
                    "path": err.path().map(|p| p.to_string_lossy().into_owned()),
                    "kernel_messages": err.kernel_messages(),
                }),
                None => json!({
                    "kind": "other",
                    "message": message,
                    "errno": Value::Null,
                    "path": Value::Null,
                    "kernel_messages": [],
                }),
            };
            println!("{}", json!({ "error": error }));
        }
        ExitCode::from(lib.map_or(EXIT_FAILURE, |err| exit_status(err.kind())))
    }
}

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
        parts.push(cause.to_string());
        if cause.downcast_ref::<idoverlay::Error>().is_some() {
            break;
        }
    }
    parts.join(": ").replace('\n', "\\n")
}

/// A trace sink printing each step to stderr, for `-v`.
pub fn stderr_trace() -> idoverlay::Trace {
    std::sync::Arc::new(|line: &str| eprintln!("idoverlay: {line}"))
}
