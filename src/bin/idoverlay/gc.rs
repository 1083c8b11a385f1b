//! `idoverlay gc`: finish what interrupted host-staged runs left behind.

use anyhow::Result;
use clap::Args;

use crate::output::{AlreadyReported, Output};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  idoverlay gc
  idoverlay gc --state-dir /run/idoverlay --json")]
pub struct GcArgs {
    #[command(flatten)]
    pub state: crate::cli::StateDir,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: GcArgs) -> Result<()> {
    let report = idoverlay::gc::collect(&args.state.dir)?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["clean"] = report.clean().into();
        Output { json: true }.result(value);
    } else {
        if report.staging.is_empty() {
            outln!("{}: nothing to clean up", args.state.dir.display());
        }
        for s in &report.staging {
            for d in &s.detached {
                outln!("detached {}", d.display());
            }
            match (&s.removed, &s.kept_because) {
                (true, _) => outln!("removed  {}", s.path.display()),
                (false, Some(why)) => outln!("kept     {}: {why}", s.path.display()),
                (false, None) => outln!("kept     {}", s.path.display()),
            }
        }
    }
    if !report.clean() {
        return Err(AlreadyReported(
            format!(
                "some staging in {} could not be cleaned up (see the report); nothing in use was \
                 removed",
                args.state.dir.display()
            ),
            crate::output::EXIT_CLEANUP,
        )
        .into());
    }
    Ok(())
}
