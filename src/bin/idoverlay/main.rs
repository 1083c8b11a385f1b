//! `idoverlay`: assemble, remove and inspect idmapped overlay mounts.
//! Called as `mount.idoverlay` it is util-linux's mount helper instead.

mod cli;
mod demo;
mod gc;
mod generate;
mod helper;
mod mount;
mod output;
mod probe;
mod umount;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use output::Output;

fn main() -> ExitCode {
    if helper::invoked_as_helper() {
        return helper::main();
    }
    let cli = Cli::parse();
    let verbose = cli.verbose;
    let (json, result) = match cli.command {
        Command::Mount(args) => (args.json, mount::run(*args, verbose)),
        Command::Umount(args) => (args.json, umount::run(args)),
        Command::Probe(args) => (args.json, probe::run(args)),
        Command::Gc(args) => (args.json, gc::run(args)),
        Command::Demo(args) => (args.json, demo::run(args.base, args.json, verbose)),
        Command::InstallHelper(args) => (args.json, helper::install(args)),
        Command::Completions(args) => (false, generate::completions(args.shell)),
        Command::Manpages(args) => (false, generate::manpages(&args.dir)),
    };
    let out = Output { json };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => out.fail(&e),
    }
}
