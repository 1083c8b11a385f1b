//! `idoverlay umount`: remove an overlay mount, and nothing else.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use crate::output::Output;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  idoverlay umount /c1/rootfs
  idoverlay umount --lazy --json /c1/rootfs")]
pub struct UmountArgs {
    /// Detach now even if busy; the kernel frees it when the last user goes.
    #[arg(long, short = 'l')]
    pub lazy: bool,
    /// Print the result (or the error) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub state: crate::cli::StateDir,
    /// The overlay's mount point.
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,
}

pub fn run(args: UmountArgs) -> Result<()> {
    // A relative TARGET from the working directory, as umount(8) takes it.
    let target = crate::relative::absolute("target", &args.target)?;
    // The record is looked up before (by the mount's id) and removed after,
    // only once its mount is gone; the state dir is opened once for both.
    let records = idoverlay::records::Records::new(&args.state.dir);
    let record = records.find(&target).ok().flatten();
    idoverlay::unmount_overlay(&target, args.lazy)?;
    if let Some(record) = record {
        if let Err(e) = records.forget_if_gone(&record) {
            eprintln!("idoverlay: warning: {}", crate::output::message(&e));
        }
    }
    Output { json: args.json }.result(json!({
        "target": target.to_string_lossy(),
        "unmounted": true,
        "lazy": args.lazy,
    }));
    Ok(())
}
