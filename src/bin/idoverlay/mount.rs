//! `idoverlay mount`: the flag form and the mount(8) form, one code path.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use idoverlay::{IdMap, MountOptions, Overlay, Strategy, UserNamespace};

use crate::output::{stderr_trace, Output};
use crate::relative::{absolute, absolute_opt};

#[derive(Args, Debug, Default)]
#[command(after_help = "Examples:
  idoverlay mount --lower /l/3 --lower /l/2 --lower /l/1 --upper /c/upper --work /c/work \\
      --uidmap 0:100000:65536 --gidmap 0:100000:65536 /c/rootfs
  idoverlay mount -t overlay overlay -o lowerdir=/l/3:/l/2:/l/1,upperdir=/c/upper,workdir=/c/work,\\
uidmap=0:100000:65536,gidmap=0:100000:65536 /c/rootfs
  idoverlay mount --lower /l/2 --lower /l/1 --userns /proc/4242/ns/user --read-only /c/rootfs
  idoverlay mount --lower /l/2 --lower /l/1 --upper /c/upper --work /c/work \\
      --oci-config /run/c1/config.json -o index=off,nosuid --json /c/rootfs")]
pub struct MountArgs {
    /// A lower layer; repeat it, top-most first (like overlay's lowerdir=).
    #[arg(long = "lower", value_name = "DIR")]
    pub lowers: Vec<PathBuf>,
    /// A data-only lower layer (datadir+, kernel 6.7+); repeat as needed.
    #[arg(long = "data-lower", value_name = "DIR")]
    pub data_lowers: Vec<PathBuf>,
    /// The upper layer, where writes land (needs --work).
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// The work directory: empty, on the same mount as --upper.
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Idmap the upper and work dirs too, so writes land in container ids on disk.
    #[arg(long)]
    pub idmap_upper: bool,
    /// Give an empty upper's root to container root first (its host ids,
    /// or 0:0 with --idmap-upper), as containerd does; else a root-owned
    /// upper shows as nobody in the container.
    #[arg(long)]
    pub chown_upper: bool,
    /// uid map: CONTAINER:HOST:SIZE ranges separated by commas (on-disk id
    /// CONTAINER shows as HOST), e.g. 0:100000:65536.
    #[arg(long, value_name = "MAP")]
    pub uidmap: Vec<String>,
    /// gid map, same syntax as --uidmap.
    #[arg(long, value_name = "MAP")]
    pub gidmap: Vec<String>,
    /// Take the maps from a user namespace: a file such as /proc/PID/ns/user, or a PID.
    #[arg(long, value_name = "FILE|PID")]
    pub userns: Option<String>,
    /// Take the maps from an OCI runtime config (linux.uidMappings/gidMappings).
    #[arg(long, value_name = "FILE")]
    pub oci_config: Option<PathBuf>,
    /// Mount options, comma separated: overlay parameters (index=off,
    /// redirect_dir=on, metacopy=on, userxattr, xino=auto, volatile, …), mount
    /// flags (ro, nosuid, nodev, noexec, noatime, …), and in the mount(8) form
    /// lowerdir=, upperdir=, workdir=, uidmap=, gidmap=, X-mount.idmap=.
    #[arg(short = 'o', long = "options", value_name = "OPTS")]
    pub options: Vec<String>,
    /// Filesystem type, for the mount(8) form: overlay (or idoverlay).
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub fs_type: Option<String>,
    /// Mount read-only.
    #[arg(long)]
    pub read_only: bool,
    /// How to assemble: auto, detached, private-ns or host-staged.
    #[arg(long, value_name = "STRATEGY", default_value = "auto")]
    pub strategy: String,
    /// idoverlay's own directory: host-staged's staging and the probe report
    /// of this boot (root-owned 0700; default /run/idoverlay).
    #[arg(long, value_name = "DIR", env = "IDOVERLAY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Use a report saved by `idoverlay probe --json` (same kernel) instead
    /// of the one kept in the state dir for this boot.
    #[arg(long, value_name = "FILE")]
    pub probe_report: Option<PathBuf>,
    /// Attach the overlay inside this mount namespace (/proc/PID/ns/mnt).
    #[arg(short = 'N', long = "namespace", value_name = "NS")]
    pub namespace: Option<PathBuf>,
    /// Treat a kernel feature as missing, to force an older kernel's code
    /// path (for testing fallbacks); see `idoverlay probe` for the names.
    #[arg(long, value_name = "FEATURE", hide = true)]
    pub pretend_missing: Vec<idoverlay::Feature>,
    /// Print the result (or the error) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// TARGET, or SOURCE TARGET as mount(8) takes them (SOURCE is ignored;
    /// overlay has no device).
    #[arg(value_name = "[SOURCE] TARGET", num_args = 1..=2, required = true)]
    pub paths: Vec<PathBuf>,
}

/// Builds the overlay from the flags and the -o string, refusing any
/// setting given twice in different ways.
pub fn build(args: &MountArgs, verbose: bool) -> Result<(Overlay, serde_json::Value)> {
    if let Some(t) = &args.fs_type {
        if t != "overlay" && t != "idoverlay" {
            bail!(idoverlay::Error::invalid_input(
                "-t",
                t,
                "idoverlay mounts overlays only; give -t overlay (or leave -t out)"
            ));
        }
    }
    let spec: MountOptions = if args.options.is_empty() {
        MountOptions::default()
    } else {
        MountOptions::parse(&args.options.join(","))?
    };
    let twice = |what: &str| -> anyhow::Error {
        idoverlay::Error::invalid_input(
            what,
            "(flags and -o)",
            "is given both as a flag and in -o; give it once",
        )
        .into()
    };
    // Each kind of layer from one place, flags or -o (lower layers from -o
    // with data layers from --data-lower is fine).
    let lowers = match (args.lowers.is_empty(), spec.lowers.is_empty()) {
        (false, false) => return Err(twice("lower layers")),
        (true, _) => spec.lowers.clone(),
        (false, true) => args.lowers.clone(),
    };
    let data_lowers = match (args.data_lowers.is_empty(), spec.data_lowers.is_empty()) {
        (false, false) => return Err(twice("data layers")),
        (true, _) => spec.data_lowers.clone(),
        (false, true) => args.data_lowers.clone(),
    };
    let upper = match (&args.upper, &spec.upper) {
        (Some(_), Some(_)) => return Err(twice("upper dir")),
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    let work = match (&args.work, &spec.work) {
        (Some(_), Some(_)) => return Err(twice("work dir")),
        (a, b) => a.clone().or_else(|| b.clone()),
    };
    // Relative paths, in either form, from the working directory (as
    // mount(8) and overlay itself take them), made absolute once here.
    let lowers = lowers
        .iter()
        .map(|p| absolute("layer", p))
        .collect::<Result<Vec<_>>>()?;
    let data_lowers = data_lowers
        .iter()
        .map(|p| absolute("data layer", p))
        .collect::<Result<Vec<_>>>()?;
    let upper = absolute_opt("upper dir", upper.as_ref())?;
    let work = absolute_opt("work dir", work.as_ref())?;
    if upper.is_some() != work.is_some() {
        bail!(idoverlay::Error::invalid_input(
            if upper.is_some() { "upper dir" } else { "work dir" },
            upper.as_ref().or(work.as_ref()).map(|p| p.display().to_string()).unwrap_or_default(),
            "needs the other one too: overlay writes through an upper dir and an empty work dir on one mount"
        ));
    }
    let strategy: Strategy = args.strategy.parse()?;
    let mut overlay = Overlay::new()
        .lowers(lowers)
        .strategy(strategy)
        .idmap_upper(args.idmap_upper)
        .chown_upper(args.chown_upper);
    for d in data_lowers {
        overlay = overlay.data_lower(d);
    }
    if let (Some(upper), Some(work)) = (upper, work) {
        overlay = overlay.upper(upper).work(work);
    }
    for p in &spec.params {
        overlay = overlay.param(&p.key, p.value.as_deref());
    }
    overlay = overlay.mount_attrs(spec.attrs);
    if args.read_only {
        overlay = overlay.read_only(true);
    }
    // The state dir stays absolute-only: one directory per node, which the
    // working directory must not change from call to call (gc finds it).
    if let Some(dir) = &args.state_dir {
        overlay = overlay.state_dir(dir);
    }
    // The record `idoverlay show` and `list` read: kept in a state dir
    // given, or in the default one unless tests keep out of it.
    if args.state_dir.is_some() || crate::probe::keep_for_boot_enabled() {
        overlay = overlay.keep_record(true);
    }
    for f in &args.pretend_missing {
        overlay = overlay.pretend_missing(*f);
    }
    if let Some(path) = absolute_opt("probe report", args.probe_report.as_ref())? {
        overlay = overlay.probe_report(std::sync::Arc::new(idoverlay::probe::ProbeReport::load(
            &path,
        )?));
    }
    // With a report given it is used instead of the kept one, and
    // private-ns' staging namespace is still kept for the boot.
    if crate::probe::keep_for_boot_enabled() {
        overlay = overlay.keep_probe_for_boot(true);
    }

    // The maps: exactly one source.
    let mut sources = Vec::new();
    if !args.uidmap.is_empty() || !args.gidmap.is_empty() {
        sources.push("--uidmap/--gidmap");
    }
    if args.userns.is_some() {
        sources.push("--userns");
    }
    if args.oci_config.is_some() {
        sources.push("--oci-config");
    }
    if spec.uid_map.is_some() || spec.userns.is_some() {
        sources.push("-o uidmap=/gidmap=/X-mount.idmap=");
    }
    if sources.len() > 1 {
        bail!(idoverlay::Error::invalid_input(
            "id maps",
            sources.join(" and "),
            "come from more than one place; give them once"
        ));
    }
    let described;
    if let Some(ns) = &args.userns {
        let userns = match ns.parse::<u32>() {
            Ok(pid) => UserNamespace::from_pid(pid)?,
            Err(_) => UserNamespace::open(ns)?,
        };
        described = json!({ "userns": ns });
        overlay = overlay.userns(userns);
    } else if let Some(path) = &spec.userns {
        overlay = overlay.userns(UserNamespace::open(path)?);
        described = json!({ "userns": path.to_string_lossy() });
    } else {
        let (uid, gid) = if let Some(config) = &args.oci_config {
            let config = absolute("OCI config", config)?;
            idoverlay::idmap::maps_from_oci_config_file(config).map(|(u, g)| (Some(u), Some(g)))?
        } else if !args.uidmap.is_empty() || !args.gidmap.is_empty() {
            (
                Some(parse_map(&args.uidmap, "--uidmap")?),
                Some(parse_map(&args.gidmap, "--gidmap")?),
            )
        } else {
            (spec.uid_map.clone(), spec.gid_map.clone())
        };
        match (uid, gid) {
            (Some(uid), Some(gid)) => {
                described = json!({ "uidmap": uid.to_string(), "gidmap": gid.to_string() });
                overlay = overlay.idmap(uid, gid);
            }
            _ => described = json!(null),
        }
    }
    if verbose {
        overlay = overlay.trace(stderr_trace());
    }
    Ok((overlay, described))
}

pub fn run(args: MountArgs, verbose: bool) -> Result<()> {
    let (overlay, maps) = build(&args, verbose)?;
    let given = args.paths.last().expect("clap requires a target");
    // In another mount namespace (-N) the target is that namespace's path:
    // no working directory of ours says where a relative one is there.
    let target = match &args.namespace {
        None => absolute("target", given)?,
        Some(_) if given.is_relative() && !given.as_os_str().is_empty() => {
            bail!(idoverlay::Error::invalid_input(
                "target",
                given.to_string_lossy(),
                "is a relative path; with -N it is a path in that mount namespace: give it \
                 absolute"
            ))
        }
        Some(_) => given.clone(),
    };
    let layers = overlay.layers().count();
    idoverlay::raise_fd_limit();
    let mounted = match &args.namespace {
        None => overlay.mount(&target)?,
        Some(ns) => overlay.assemble()?.attach_in_namespace(ns, &target)?,
    };
    let warnings: Vec<String> = mounted
        .warnings
        .iter()
        .map(|w| crate::output::warning(w))
        .collect();
    for warning in &warnings {
        eprintln!("idoverlay: warning: {warning}");
    }
    Output { json: args.json }.result(json!({
        "target": target.to_string_lossy(),
        "strategy": mounted.strategy.name(),
        "layers": layers,
        "idmap": maps,
        "warnings": warnings,
        "mount": crate::show::description_json(&mounted.description),
    }));
    Ok(())
}

/// A map given as one or more `--uidmap` values, each holding ranges.
fn parse_map(values: &[String], what: &str) -> Result<IdMap> {
    if values.is_empty() {
        bail!(idoverlay::Error::invalid_input(
            what,
            "(missing)",
            "give --uidmap and --gidmap together (e.g. 0:100000:65536 for both)"
        ));
    }
    Ok(values
        .join(",")
        .parse::<IdMap>()
        .map_err(|e| e.into_error(what))?)
}
