//! How results and errors reach the user: one line on stderr for people,
//! a JSON object on stdout for programs (`--json`).

use std::process::ExitCode;

use serde_json::{json, Value};

/// Where and how to report.
pub struct Output {
    pub json: bool,
}

/// Exit status for input the user must fix (as clap uses for bad usage).
pub const EXIT_INVALID_INPUT: u8 = 2;
/// Exit status for everything else that failed.
pub const EXIT_FAILURE: u8 = 1;

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
            return ExitCode::from(EXIT_FAILURE);
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
        match lib {
            Some(err) if err.kind() == "invalid_input" => ExitCode::from(EXIT_INVALID_INPUT),
            _ => ExitCode::from(EXIT_FAILURE),
        }
    }
}

/// A failure whose details are already on stdout (a `--json` report that
/// says what went wrong): only the one line goes to stderr.
#[derive(Debug)]
pub struct AlreadyReported(pub String);

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
