//! `idoverlay`: assemble, remove and inspect idmapped overlay mounts.

mod demo;
mod gc;
mod mount;
mod output;
mod probe;
mod umount;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use output::Output;

/// Assemble overlayfs mounts from idmapped layers, with no temporary mount
/// ever visible and no layer ever at risk.
#[derive(Parser, Debug)]
#[command(name = "idoverlay", version, about, long_about = None)]
#[command(after_help = "Examples:
  idoverlay demo
  idoverlay mount --lower /layers/3 --lower /layers/2 --lower /layers/1 \\
      --upper /c1/upper --work /c1/work \\
      --uidmap 0:100000:65536 --gidmap 0:100000:65536 /c1/rootfs
  idoverlay umount /c1/rootfs")]
struct Cli {
    /// Log each step (strategy, layer groups, syscalls) to stderr.
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Assemble an idmapped overlay and attach it at TARGET.
    Mount(Box<mount::MountArgs>),
    /// Unmount an overlay mounted at TARGET.
    Umount(umount::UmountArgs),
    /// Finish the cleanup of interrupted host-staged runs.
    Gc(gc::GcArgs),
    /// Tell what this kernel can do for idmapped overlays, by asking it.
    Probe(probe::ProbeArgs),
    /// Build sample layers in a fresh private directory, mount them
    /// idmapped, show the owners on disk and through the mount, clean up.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Where to create the demo's private directory (default: $TMPDIR or /tmp).
    #[arg(long, value_name = "DIR")]
    base: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    let (json, result) = match cli.command {
        Command::Mount(args) => (args.json, mount::run(*args, verbose)),
        Command::Umount(args) => (args.json, umount::run(args)),
        Command::Probe(args) => (args.json, probe::run(args)),
        Command::Gc(args) => (args.json, gc::run(args)),
        Command::Demo(args) => (args.json, demo::run(args.base, args.json, verbose)),
    };
    let out = Output { json };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => out.fail(&e),
    }
}
