//! `idoverlay`: assemble, remove and inspect idmapped overlay mounts.
//! Called as `mount.idoverlay` it is util-linux's mount helper instead.

#[macro_use]
mod output;
mod cli;
mod demo;
mod gc;
mod generate;
mod helper;
mod mount;
mod probe;
mod relative;
mod show;
mod umount;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use output::Output;

fn main() -> ExitCode {
    if let Some(refusal) = elevated() {
        let name = if helper::invoked_as_helper() {
            helper::HELPER_NAME
        } else {
            "idoverlay"
        };
        eprintln!("{name}: {refusal}");
        return ExitCode::from(if helper::invoked_as_helper() {
            helper::EXIT_USAGE
        } else {
            output::EXIT_PERMISSION
        });
    }
    if helper::invoked_as_helper() {
        return helper::main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let verbose = cli.verbose;
    let (json, result) = match cli.command {
        Command::Mount(args) => (args.json, mount::run(*args, verbose)),
        Command::Umount(args) => (args.json, umount::run(args)),
        Command::Show(args) => (args.json, show::show(args)),
        Command::List(args) => (args.json, show::list(args)),
        Command::Probe(args) => (args.json, probe::run(args)),
        Command::Gc(args) => (args.json, gc::run(args)),
        Command::Demo(args) => (args.json, demo::run(args.base, args.json, verbose)),
        Command::InstallHelper(args) => (args.json, helper::install(args)),
        Command::Completions(args) => (false, generate::completions(args.shell)),
        Command::Manpages(args) => (false, generate::manpages(&args.dir)),
    };
    let out = Output { json };
    match result {
        Ok(()) if output::write_failed() => ExitCode::from(output::EXIT_FAILURE),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => out.fail(&e),
    }
}

/// Why this process must not go on when it runs with privileges its caller
/// does not have: set-uid, set-gid or with file capabilities (the kernel
/// sets `AT_SECURE` for all three). idoverlay mounts what it is told, with
/// maps it is told: run that way, any user could show themselves root's
/// files through a map of their choice.
fn elevated() -> Option<String> {
    let (uid, euid) = (rustix::process::getuid(), rustix::process::geteuid());
    let (gid, egid) = (rustix::process::getgid(), rustix::process::getegid());
    let secure = secure_execution();
    if uid != euid || gid != egid || secure {
        return Some(format!(
            "refusing to run with privileges the caller does not have (real uid {}, effective \
             uid {}, real gid {}, effective gid {}{}); idoverlay must not be set-uid, set-gid \
             or given file capabilities: run it as root",
            uid.as_raw(),
            euid.as_raw(),
            gid.as_raw(),
            egid.as_raw(),
            if secure {
                ", secure-execution mode or /proc/self/auxv unreadable"
            } else {
                ""
            }
        ));
    }
    None
}

/// Whether the kernel started this program in secure-execution mode
/// (`AT_SECURE`: set-uid, set-gid or file capabilities gained at exec).
/// When that cannot be read, it counts as yes: a refusal to run beats
/// running elevated unseen.
fn secure_execution() -> bool {
    // /proc/self/auxv holds (key, value) pairs of native words; a few
    // hundred bytes, read with a bound all the same.
    use std::io::Read;
    // Room for all of it up front: one read and the one that ends it,
    // where growing from empty took six.
    let mut auxv = Vec::with_capacity(4096);
    let read = std::fs::File::open("/proc/self/auxv")
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut auxv));
    if read.is_err() || auxv.is_empty() {
        return true;
    }
    const AT_SECURE: u64 = 23;
    auxv.chunks_exact(16).any(|pair| {
        let key = u64::from_ne_bytes(pair[..8].try_into().expect("8 bytes"));
        let value = u64::from_ne_bytes(pair[8..].try_into().expect("8 bytes"));
        key == AT_SECURE && value != 0
    })
}

/// A usage error from clap as one line (what is wrong, and where the help
/// is), with exit status 2; `--help` and `--version` print as usual.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() {
            output::EXIT_INVALID_INPUT
        } else {
            0
        });
    }
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if !line.is_empty() {
            parts.push(line.strip_prefix("error: ").unwrap_or(line));
        }
    }
    let mut message = String::new();
    for part in parts {
        if !message.is_empty() {
            message.push_str(if message.ends_with(':') { " " } else { "; " });
        }
        message.push_str(part);
    }
    let help = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-') && Cli::command().find_subcommand(a).is_some())
        .map(|sub| format!("idoverlay {sub} --help"))
        .unwrap_or_else(|| "idoverlay --help".to_string());
    let message = format!("{message}; see `{help}`");
    eprintln!("idoverlay: {message}");
    if std::env::args().any(|a| a == "--json") {
        outln!(
            "{}",
            serde_json::json!({ "error": {
                "kind": "invalid_input",
                "message": message,
                "errno": null,
                "path": null,
                "kernel_messages": [],
            }})
        );
    }
    ExitCode::from(output::EXIT_INVALID_INPUT)
}
