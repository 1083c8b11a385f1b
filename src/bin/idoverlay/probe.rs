//! `idoverlay probe`: what this kernel can do, asked live.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use idoverlay::probe::{probe, FeatureResult};
use idoverlay::Feature;

use crate::output::Output;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  idoverlay probe
  idoverlay probe --path /var/lib/containerd --json")]
pub struct ProbeArgs {
    /// Also check whether this directory's filesystem takes idmapped mounts
    /// (it is only cloned, never written); repeat as needed.
    #[arg(long = "path", value_name = "DIR")]
    pub paths: Vec<PathBuf>,
    /// Print one JSON object (schema in docs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// Where the report is kept for this boot, for the filesystems of the
    /// --path directories (default /run/idoverlay).
    #[arg(long, value_name = "DIR", env = "IDOVERLAY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Whether mounts keep (and use) the probe report of this boot in the state
/// dir; `IDOVERLAY_PROBE_CACHE=off` turns it off (tests do, so as not to
/// create /run/idoverlay).
pub fn keep_for_boot_enabled() -> bool {
    !matches!(
        std::env::var("IDOVERLAY_PROBE_CACHE").as_deref(),
        Ok("off" | "0" | "no")
    )
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn observed(r: &FeatureResult) -> String {
    match (r.observed, r.errno.as_deref()) {
        (Some(true), _) => "yes".into(),
        (Some(false), Some(errno)) => format!("no ({errno})"),
        (Some(false), None) => "no".into(),
        (None, _) => "-".into(),
    }
}

pub fn run(args: ProbeArgs) -> Result<()> {
    // Always live; what it finds replaces the report kept for this boot.
    let report = probe(&args.paths, None);
    if keep_for_boot_enabled() && !report.paths.is_empty() {
        let state_dir = args
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(idoverlay::gc::DEFAULT_STATE_DIR));
        if let Err(e) = idoverlay::probe::keep_for_boot(&state_dir, &report) {
            eprintln!("idoverlay: warning: {}", crate::output::message(&e));
        }
    }
    let disagreements: Vec<&str> = report.disagreements().iter().map(|f| f.name()).collect();
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["disagreements"] = json!(disagreements);
        Output { json: true }.result(value);
        return Ok(());
    }
    outln!("kernel {}", report.kernel);
    outln!();
    outln!(
        "  {:<25} {:<9} {:<12} note",
        "feature",
        "expected",
        "observed"
    );
    for feature in Feature::ALL {
        let r = report.feature(feature);
        let mut note = r.note.clone().unwrap_or_default();
        if r.disagrees() {
            note = format!(
                "DISAGREES with the version table (needs {}.{}) {note}",
                feature.since().0,
                feature.since().1
            );
        }
        outln!(
            "  {:<25} {:<9} {:<12} {}",
            feature.name(),
            yes_no(r.expected),
            observed(r),
            note.trim()
        );
    }
    if !report.paths.is_empty() {
        outln!();
        outln!("  {:<30} {:<10} {:<12} expected", "path", "fs", "idmap");
        for p in &report.paths {
            let idmap = match (p.idmap, p.errno.as_deref()) {
                (Some(true), _) => "yes".to_string(),
                (Some(false), Some(e)) => format!("no ({e})"),
                (Some(false), None) => "no".to_string(),
                (None, _) => p.note.clone().unwrap_or_else(|| "-".into()),
            };
            outln!(
                "  {:<30} {:<10} {:<12} {}",
                crate::output::printable(&p.path),
                p.fs_type,
                idmap,
                yes_no(p.idmap_expected)
            );
        }
    }
    outln!();
    match report.strategy {
        Some(s) => outln!(
            "auto would use: {s}{}",
            if report.guess { " (a guess)" } else { "" }
        ),
        None => outln!("auto would use: nothing works here"),
    }
    outln!("  {}", report.reason);
    if !disagreements.is_empty() {
        outln!();
        outln!(
            "disagreements with the version table: {}",
            disagreements.join(", ")
        );
    }
    Ok(())
}
