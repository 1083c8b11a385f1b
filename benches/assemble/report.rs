//! Targets, tables and the machine.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

pub(crate) fn serial_row<'a>(r: &'a Report, variant: &str) -> Option<&'a SerialResult> {
    r.serial
        .iter()
        .find(|x| x.fs == "ext4" && x.layers == MAX_LAYERS && x.variant == variant)
        .filter(|x| x.error.is_none())
}

/// A pass/fail line; `None` when the rows it needs were not measured.
pub(crate) fn target(
    name: &str,
    value: Option<(f64, String)>,
    ok: impl Fn(f64) -> bool,
) -> TargetResult {
    match value {
        Some((v, measured)) => TargetResult {
            name: name.to_string(),
            measured,
            ok: Some(ok(v)),
        },
        None => TargetResult {
            name: name.to_string(),
            measured: "not measured".into(),
            ok: None,
        },
    }
}

/// The targets (ext4, 500 layers unless said). Ratios are of the
/// assemble+attach medians; the ratio with the unmount is shown beside.
pub(crate) fn evaluate_targets(r: &Report) -> Vec<TargetResult> {
    vec![
        target(
            "auto median <= 1.15x floor (ext4, 500 layers, assemble+attach)",
            vs_floor(r, "auto"),
            |x| x <= 1.15,
        ),
        target(
            "auto >= 50x faster than containerd-style reference (ext4, 500)",
            speedup_over_reference(r),
            |x| x >= 50.0,
        ),
        target(
            "16 threads: auto aggregate >= 0.8x floor's (ext4, 500)",
            concurrent_vs_floor(r),
            |x| x >= 0.8,
        ),
        target(
            "private-ns median <= 3x floor (ext4, 500, assemble+attach)",
            vs_floor(r, "private-ns"),
            |x| x <= 3.0,
        ),
        target(
            "CLI mount+umount <= 1.3x util-linux (ext4, 8 layers)",
            cli_vs_util_linux(r),
            |x| x <= 1.3,
        ),
        target("probe median < 20 ms", probe_median(r), |x| x < 20.0),
    ]
}

/// A target's value and a line saying what was measured.
pub(crate) type Measured = Option<(f64, String)>;

pub(crate) fn vs_floor(r: &Report, variant: &str) -> Measured {
    let row = serial_row(r, variant)?;
    let floor = serial_row(r, "floor")?;
    let (x, with_unmount) = (row.mount_ratio?, row.total_ratio?);
    Some((
        x,
        format!(
            "{x:.2}x ({:.3} vs floor {:.3} ms; with unmount {with_unmount:.2}x)",
            row.mount.median_ms, floor.mount.median_ms
        ),
    ))
}

pub(crate) fn speedup_over_reference(r: &Report) -> Measured {
    let auto = serial_row(r, "auto")?;
    let reference = serial_row(r, "reference")?;
    let x = reference.mount.median_ms / auto.mount.median_ms;
    let with_unmount = reference.total.median_ms / auto.total.median_ms;
    Some((
        x,
        format!(
            "reference {:.2} ms / auto {:.3} ms = {x:.1}x (with unmount {with_unmount:.1}x)",
            reference.mount.median_ms, auto.mount.median_ms
        ),
    ))
}

pub(crate) fn concurrent_vs_floor(r: &Report) -> Measured {
    let row = |variant: &str| {
        r.concurrent
            .iter()
            .find(|c| {
                c.fs == "ext4"
                    && c.layers == MAX_LAYERS
                    && c.threads == MAX_THREADS
                    && c.variant == variant
            })
            .filter(|c| c.error.is_none())
    };
    let (auto, floor) = (row("auto")?, row("floor")?);
    let x = auto.ratio?;
    Some((
        x,
        format!(
            "{:.1}/s vs floor {:.1}/s = {x:.2}x",
            auto.per_second, floor.per_second
        ),
    ))
}

pub(crate) fn cli_vs_util_linux(r: &Report) -> Measured {
    let row = r
        .cli
        .iter()
        .find(|c| c.fs == "ext4" && c.layers == 8 && c.tool == "idoverlay")?;
    let x = row.ratio?;
    Some((
        x,
        format!("{:.2} ms = {x:.2}x util-linux", row.total.median_ms),
    ))
}

pub(crate) fn probe_median(r: &Report) -> Measured {
    let row = r
        .single
        .iter()
        .find(|s| s.name.starts_with("probe") && s.error.is_none())?;
    Some((
        row.stats.median_ms,
        format!(
            "median {:.2} ms over {} runs",
            row.stats.median_ms, row.iterations
        ),
    ))
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

pub(crate) fn ratio(r: Option<f64>) -> String {
    r.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into())
}

pub(crate) fn print_report(r: &Report) {
    let m = &r.machine;
    println!(
        "\nidoverlay assemble benchmark{}: {} ({} cpus), kernel {}, {}, source {}",
        if r.quick { " (QUICK)" } else { "" },
        m.cpu,
        m.cpus,
        m.kernel,
        m.util_linux,
        r.source
    );
    println!("{}", serial_table(&r.serial));
    println!("{}", concurrent_table(&r.concurrent));
    println!("{}", single_table(&r.single));
    println!("{}", cli_table(&r.cli));
    if !r.host_mounts.is_empty() {
        println!("{}", host_mounts_table(&r.host_mounts));
    }
    for t in &r.targets {
        let verdict = match t.ok {
            Some(true) => "TARGET ok    ",
            Some(false) => "TARGET MISSED",
            None => "TARGET n/a   ",
        };
        println!("{verdict} {}: {}", t.name, t.measured);
    }
    println!("\ntotal bench time {:.0} s", r.seconds);
}

/// Markdown tables, so that docs/performance.md can take them verbatim.
pub(crate) fn serial_table(rows: &[SerialResult]) -> String {
    let mut s = String::from(
        "\nOne thread; ms; mount = assemble+attach, umount = unmount of the overlay, \
         total = both; ratios of medians to the floor's\n\n\
         | fs | layers | variant | iters | mount median | mount p99 | mount / floor | umount median | umount p99 | total median | total p99 | total / floor |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(
                s,
                "| {} | {} | {} | error: {e} |",
                r.fs, r.layers, r.variant
            );
            continue;
        }
        let name = match (&r.strategy_used, r.variant) {
            (Some(used), "auto") => format!("auto ({used})"),
            _ => r.variant.to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {name} | {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            r.fs,
            r.layers,
            r.iterations,
            r.mount.median_ms,
            r.mount.p99_ms,
            ratio(r.mount_ratio),
            r.unmount.median_ms,
            r.unmount.p99_ms,
            r.total.median_ms,
            r.total.p99_ms,
            ratio(r.total_ratio),
        );
    }
    s
}

pub(crate) fn concurrent_table(rows: &[ConcurrentResult]) -> String {
    let mut s = String::from(
        "\nConcurrent mount+unmount cycles, each thread its own target; aggregate per second\n\n\
         | fs | layers | variant | threads | cycles | cycles/s | / floor |\n\
         |---|---:|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | error: {e} |",
                r.fs, r.layers, r.variant, r.threads
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} | {} |",
            r.fs,
            r.layers,
            r.variant,
            r.threads,
            r.cycles,
            r.per_second,
            ratio(r.ratio)
        );
    }
    s
}

pub(crate) fn single_table(rows: &[SingleResult]) -> String {
    let mut s = String::from(
        "\nOn their own; ms\n\n| operation | iters | median | p99 | mean |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(s, "| {} | error: {e} |", r.name);
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {:.3} |",
            r.name, r.iterations, r.stats.median_ms, r.stats.p99_ms, r.stats.mean_ms
        );
    }
    s
}

pub(crate) fn cli_table(rows: &[CliResult]) -> String {
    let mut s = String::from(
        "\nCommand line end to end (process spawn included); ms; ratio of total medians\n\n\
         | fs | layers | tool | iters | mount median | mount p99 | umount median | total median | total p99 | / util-linux |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(s, "| {} | {} | {} | error: {e} |", r.fs, r.layers, r.tool);
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            r.fs,
            r.layers,
            r.tool,
            r.iterations,
            r.mount.median_ms,
            r.mount.p99_ms,
            r.unmount.median_ms,
            r.total.median_ms,
            r.total.p99_ms,
            ratio(r.ratio)
        );
    }
    s
}

pub(crate) fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let util_linux = Command::new("mount")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(" (")
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        util_linux,
    }
}

pub(crate) fn git_describe() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn results_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-results.json")
}
