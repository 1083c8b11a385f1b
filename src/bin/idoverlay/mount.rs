//! `idoverlay mount`: the flag form.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use idoverlay::{IdMap, Overlay, Strategy, UserNamespace};

use crate::output::{stderr_trace, Output};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  idoverlay mount --lower /l/3 --lower /l/2 --lower /l/1 --upper /c/upper --work /c/work \\
      --uidmap 0:100000:65536 --gidmap 0:100000:65536 /c/rootfs
  idoverlay mount --lower /l/1 --userns /proc/4242/ns/user --read-only /c/rootfs
  idoverlay mount --lower /l/1 --uidmap 0:100000:1000,1000:1000:1 --gidmap 0:100000:65536 \\
      -o index=off,nosuid,nodev --json /c/rootfs")]
pub struct MountArgs {
    /// A lower layer; repeat it, top-most first (like overlay's lowerdir=).
    #[arg(long = "lower", value_name = "DIR", required = true)]
    pub lowers: Vec<PathBuf>,
    /// A data-only lower layer (datadir+, kernel 6.7+); repeat as needed.
    #[arg(long = "data-lower", value_name = "DIR")]
    pub data_lowers: Vec<PathBuf>,
    /// The upper layer, where writes land (needs --work).
    #[arg(long, value_name = "DIR", requires = "work")]
    pub upper: Option<PathBuf>,
    /// The work directory: empty, on the same mount as --upper.
    #[arg(long, value_name = "DIR", requires = "upper")]
    pub work: Option<PathBuf>,
    /// Idmap the upper and work dirs too, so writes land in container ids on disk.
    #[arg(long)]
    pub idmap_upper: bool,
    /// uid map: CONTAINER:HOST:SIZE ranges separated by commas (on-disk id
    /// CONTAINER shows as HOST), e.g. 0:100000:65536.
    #[arg(
        long,
        value_name = "MAP",
        requires = "gidmap",
        conflicts_with = "userns"
    )]
    pub uidmap: Vec<String>,
    /// gid map, same syntax as --uidmap.
    #[arg(
        long,
        value_name = "MAP",
        requires = "uidmap",
        conflicts_with = "userns"
    )]
    pub gidmap: Vec<String>,
    /// Take the maps from a user namespace: a file such as /proc/PID/ns/user, or a PID.
    #[arg(long, value_name = "FILE|PID")]
    pub userns: Option<String>,
    /// Overlay parameters and mount flags, comma separated
    /// (index=off, redirect_dir=on, metacopy=on, userxattr, xino=auto, volatile,
    /// ro, nosuid, nodev, noexec, noatime, …).
    #[arg(short = 'o', long = "options", value_name = "OPTS")]
    pub options: Vec<String>,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// How to assemble: auto, detached, private-ns or host-staged.
    #[arg(long, value_name = "STRATEGY", default_value = "auto")]
    pub strategy: String,
    /// Where host-staged keeps its staging (root-owned 0700; default /run/idoverlay).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Treat a kernel feature as missing, to force an older kernel's code
    /// path (for testing fallbacks); see `idoverlay probe` for the names.
    #[arg(long, value_name = "FEATURE", hide = true)]
    pub pretend_missing: Vec<idoverlay::Feature>,
    /// Print the result (or the error) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where to mount the overlay: an existing directory.
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,
}

pub fn run(args: MountArgs, verbose: bool) -> Result<()> {
    let strategy: Strategy = args.strategy.parse()?;
    let mut overlay = Overlay::new()
        .lowers(args.lowers.iter().cloned())
        .strategy(strategy)
        .idmap_upper(args.idmap_upper);
    for d in &args.data_lowers {
        overlay = overlay.data_lower(d);
    }
    if let (Some(upper), Some(work)) = (&args.upper, &args.work) {
        overlay = overlay.upper(upper).work(work);
    }
    for opts in &args.options {
        overlay = overlay.options(opts)?;
    }
    if args.read_only {
        overlay = overlay.read_only(true);
    }
    if let Some(dir) = &args.state_dir {
        overlay = overlay.state_dir(dir);
    }
    for f in &args.pretend_missing {
        overlay = overlay.pretend_missing(*f);
    }
    let described_maps;
    if let Some(ns) = &args.userns {
        let userns = match ns.parse::<u32>() {
            Ok(pid) => UserNamespace::from_pid(pid)?,
            Err(_) => UserNamespace::open(ns)?,
        };
        described_maps = json!({ "userns": ns });
        overlay = overlay.userns(userns);
    } else if !args.uidmap.is_empty() {
        let uid = parse_map(&args.uidmap, "--uidmap")?;
        let gid = parse_map(&args.gidmap, "--gidmap")?;
        described_maps = json!({ "uidmap": uid.to_string(), "gidmap": gid.to_string() });
        overlay = overlay.idmap(uid, gid);
    } else {
        described_maps = json!(null);
    }
    if verbose {
        overlay = overlay.trace(stderr_trace());
    }
    idoverlay::raise_fd_limit();
    let mount = overlay.mount(&args.target)?;
    for warning in &mount.warnings {
        eprintln!("idoverlay: warning: {warning}");
    }
    Output { json: args.json }.result(json!({
        "target": args.target.to_string_lossy(),
        "strategy": mount.strategy.name(),
        "layers": args.lowers.len() + args.data_lowers.len(),
        "upper": args.upper.as_ref().map(|p| p.to_string_lossy()),
        "work": args.work.as_ref().map(|p| p.to_string_lossy()),
        "idmap": described_maps,
        "warnings": mount.warnings,
    }));
    Ok(())
}

/// A map given as one or more `--uidmap` values, each holding ranges.
fn parse_map(values: &[String], what: &str) -> Result<IdMap> {
    let joined = values.join(",");
    Ok(joined.parse::<IdMap>().map_err(|e| e.into_error(what))?)
}
