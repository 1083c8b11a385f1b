//! The command line, as clap definitions (also the source of the man pages
//! and shell completions).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{gc, helper, mount, probe, show, umount};

/// Assemble overlayfs mounts from idmapped layers, with no temporary mount
/// ever visible and no layer ever at risk.
#[derive(Parser, Debug)]
#[command(name = "idoverlay", version, about, long_about = None)]
#[command(after_help = "Examples:
  idoverlay demo
  idoverlay probe
  idoverlay mount --lower /layers/3 --lower /layers/2 --lower /layers/1 \\
      --upper /c1/upper --work /c1/work \\
      --uidmap 0:100000:65536 --gidmap 0:100000:65536 /c1/rootfs
  idoverlay mount -t overlay overlay -o lowerdir=/layers/3:/layers/2,uidmap=0:100000:65536,\\
gidmap=0:100000:65536 /c1/rootfs
  idoverlay umount /c1/rootfs

As a mount helper (/sbin/mount.idoverlay: shipped by the Debian package; from a source
install, `idoverlay install-helper` links it):
  mount -t idoverlay overlay /c1/rootfs -o lowerdir=/layers/2:/layers/1,uidmap=0:100000:65536,\\
gidmap=0:100000:65536")]
pub struct Cli {
    /// Log each step (strategy, layer groups, syscalls) to stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
// Each subcommand's arguments are built only when that subcommand runs (or
// help, man pages and completions are made): building all of them cost
// every process ~10 page faults and 0.1-0.2 ms of CPU (docs/performance.md).
#[command(defer = true)]
pub enum Command {
    /// Assemble an idmapped overlay and attach it at TARGET.
    Mount(Box<mount::MountArgs>),
    /// Unmount an overlay mounted at TARGET.
    Umount(umount::UmountArgs),
    /// What the idoverlay mount at TARGET is made of: layers, upper, work, maps.
    Show(show::ShowArgs),
    /// Every idoverlay mount of this mount namespace.
    List(show::ListArgs),
    /// Finish the cleanup of interrupted host-staged runs.
    Gc(gc::GcArgs),
    /// Tell what this kernel can do for idmapped overlays, by asking it.
    Probe(probe::ProbeArgs),
    /// Build sample layers in a fresh private directory, mount them
    /// idmapped, show the owners on disk and through the mount, clean up.
    Demo(DemoArgs),
    /// Link this installed binary as the mount helper /sbin/mount.idoverlay,
    /// so that `mount -t idoverlay`, fstab lines and systemd .mount units
    /// work.
    InstallHelper(InstallHelperArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write the man pages (idoverlay.1, idoverlay-mount.1, …) into DIR.
    #[command(hide = true)]
    Manpages(ManpagesArgs),
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  idoverlay demo
  idoverlay demo --json")]
pub struct DemoArgs {
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where to create the demo's private directory (default: $TMPDIR or /tmp).
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(
    after_help = "The binary must be installed, not a build: one inside a cargo \
target dir (.fingerprint, .rustc_info.json or CACHEDIR.TAG above it) is refused, since \
`cargo clean` would break the helper and every fstab line and .mount unit using it. The \
Debian package needs none of this: it ships /usr/sbin/mount.idoverlay.

Examples:
  cargo install --path . --root /usr/local
  /usr/local/bin/idoverlay install-helper
  /usr/local/bin/idoverlay install-helper --dir /sbin/fs.d"
)]
pub struct InstallHelperArgs {
    /// Where to put mount.idoverlay: one of the directories util-linux's
    /// mount(8) searches, /sbin, /sbin/fs.d or /sbin/fs (it must exist;
    /// /usr/sbin where /sbin links to it). Anything else is refused: mount(8)
    /// would report an unknown filesystem type.
    #[arg(long, value_name = "DIR", default_value = "/sbin", value_parser = HelperDirParser)]
    pub dir: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `install-helper --dir`: help and completions offer mount(8)'s search
/// path; any path parses, and `helper::install` checks it after resolving
/// symlinks (so /usr/sbin passes where /sbin links to it, and nothing else).
#[derive(Clone)]
struct HelperDirParser;

impl clap::builder::TypedValueParser for HelperDirParser {
    type Value = PathBuf;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<PathBuf, clap::Error> {
        clap::builder::PathBufValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            helper::SEARCH_PATH
                .iter()
                .copied()
                .map(clap::builder::PossibleValue::new),
        ))
    }
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  idoverlay completions bash > /etc/bash_completion.d/idoverlay")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Directory to write the pages into.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

// `--state-dir DIR` of the commands that read idoverlay's own directory
// (`show`, `list`, `umount`, `gc`). A plain comment, not a doc comment:
// clap would make that the about text of every subcommand it is
// flattened into, replacing theirs now that their arguments are deferred.
#[derive(clap::Args, Debug)]
pub struct StateDir {
    /// idoverlay's own directory: the records of its mounts, host-staged's
    /// staging and the probe report of this boot.
    #[arg(
        long = "state-dir",
        value_name = "DIR",
        default_value = idoverlay::gc::DEFAULT_STATE_DIR,
        env = "IDOVERLAY_STATE_DIR"
    )]
    pub dir: std::path::PathBuf,
}
