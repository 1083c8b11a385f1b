//! `idoverlay show` and `idoverlay list`: what each idoverlay mount is made
//! of, from the record kept when it was attached (the mount table names
//! the kernel's handles, not the directories).

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

use idoverlay::records::MountDescription;

use crate::output::{printable, Output};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  idoverlay show /c1/rootfs
  idoverlay show --json /c1/rootfs")]
pub struct ShowArgs {
    #[command(flatten)]
    pub state: crate::cli::StateDir,
    /// Print the mount as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The overlay's mount point.
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  idoverlay list
  idoverlay list --json")]
pub struct ListArgs {
    #[command(flatten)]
    pub state: crate::cli::StateDir,
    /// Print `{"mounts": [...]}` on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A description as the JSON `show`, `list` and `mount --json` print.
pub fn description_json(m: &MountDescription) -> Value {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    json!({
        "target": path(&m.target),
        "layers": m.layers.iter().map(|p| path(p)).collect::<Vec<_>>(),
        "data_layers": m.data_layers.iter().map(|p| path(p)).collect::<Vec<_>>(),
        "upper": m.upper.as_deref().map(path),
        "work": m.work.as_deref().map(path),
        "uidmap": m.uidmap.as_ref().map(ToString::to_string),
        "gidmap": m.gidmap.as_ref().map(ToString::to_string),
        "userns": m.userns.as_deref().map(path),
        "idmap_upper": m.idmap_upper,
        "strategy": m.strategy.name(),
        "mount_id": m.mount_id,
        "unique_mount_id": m.unique_mount_id,
    })
}

pub fn show(args: ShowArgs) -> Result<()> {
    let target = crate::relative::absolute("target", &args.target)?;
    let Some(m) = idoverlay::records::find(&args.state.dir, &target)? else {
        anyhow::bail!(idoverlay::Error::invalid_input(
            "target",
            target.display().to_string(),
            format!(
                "has no record in {}: it is not an overlay `idoverlay mount` (or the helper) \
                 attached in this mount namespace; `findmnt {}` shows what is mounted there",
                args.state.dir.display(),
                target.display()
            )
        ));
    };
    let out = Output { json: args.json };
    if args.json {
        out.result(description_json(&m));
        return Ok(());
    }
    let row = |key: &str, value: &str| outln!("{key:<9} {value}");
    row("target", &printable(&m.target));
    for (i, layer) in m.layers.iter().enumerate() {
        row(if i == 0 { "layers" } else { "" }, &printable(layer));
    }
    for (i, layer) in m.data_layers.iter().enumerate() {
        row(if i == 0 { "data" } else { "" }, &printable(layer));
    }
    if let (Some(upper), Some(work)) = (&m.upper, &m.work) {
        row("upper", &printable(upper));
        row("work", &printable(work));
    }
    let map =
        |m: &Option<idoverlay::IdMap>| m.as_ref().map_or("(unknown)".into(), ToString::to_string);
    row("uidmap", &map(&m.uidmap));
    row("gidmap", &map(&m.gidmap));
    if let Some(ns) = &m.userns {
        row("userns", &printable(ns));
    }
    row(
        "strategy",
        &format!(
            "{}{}",
            m.strategy,
            if m.idmap_upper {
                ", upper idmapped"
            } else {
                ""
            }
        ),
    );
    if let Some(id) = m.mount_id {
        row(
            "mount id",
            &format!(
                "{id}{}",
                if m.unique_mount_id {
                    " (unique)"
                } else {
                    " (mountinfo)"
                }
            ),
        );
    }
    Ok(())
}

pub fn list(args: ListArgs) -> Result<()> {
    let mounts = idoverlay::records::list(&args.state.dir)?;
    if args.json {
        Output { json: true }.result(json!({
            "mounts": mounts.iter().map(description_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    for m in &mounts {
        outln!(
            "{}  {}  {} layer{}{}",
            printable(&m.target),
            m.strategy,
            m.layers.len() + m.data_layers.len(),
            if m.layers.len() + m.data_layers.len() == 1 {
                ""
            } else {
                "s"
            },
            m.upper
                .as_ref()
                .map(|u| format!("  upper {}", printable(u)))
                .unwrap_or_default()
        );
    }
    Ok(())
}
