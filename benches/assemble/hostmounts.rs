//! The host-mounts dimension: the same measurements on a busy node, with
//! 1,000 and 10,000 extra mounts in the bench's mount namespace (bind
//! mounts of one directory, on the scratch tmpfs), beside the ~20 of a
//! fresh machine. Each ratio is against the yardstick measured at the same
//! mount count: the floor (library), the minimal mount(2)/umount2(2)
//! processes and util-linux (CLI), the probe at 20 mounts.

#[allow(unused_imports)]
use super::*;

/// Extra bind mounts, grown on demand, all on a tmpfs of their own on the
/// scratch dir, detached (with every bind on it) when dropped.
pub(crate) struct HostMounts {
    dir: PathBuf,
    made: usize,
}

impl HostMounts {
    pub(crate) fn new(scratch: &Scratch) -> HostMounts {
        let dir = scratch.root.join("host-mounts");
        std::fs::create_dir(&dir).expect("create host-mounts dir");
        rustix::mount::mount(
            "idoverlay-bench-hm",
            &dir,
            "tmpfs",
            MountFlags::empty(),
            None,
        )
        .expect("mount the host-mounts tmpfs");
        std::fs::create_dir(dir.join("src")).expect("create host-mounts src");
        HostMounts { dir, made: 0 }
    }

    /// Bind mounts until `extra` of ours are in the table.
    pub(crate) fn grow_to(&mut self, extra: usize) {
        let src = self.dir.join("src");
        while self.made < extra {
            let at = self.dir.join(self.made.to_string());
            std::fs::create_dir(&at).expect("create a host-mount point");
            rustix::mount::mount_bind(&src, &at).expect("bind mount");
            self.made += 1;
        }
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        let _ = unmount(&self.dir, UnmountFlags::DETACH);
    }
}

/// The mounts this thread's namespace shows.
pub(crate) fn table_size() -> usize {
    std::fs::read_to_string("/proc/thread-self/mountinfo")
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// One measurement at one mount count, and its ratio to the yardstick.
#[derive(Serialize, Clone)]
pub(crate) struct HostMountsResult {
    /// Mounts in the table (the fresh machine's plus the bench's extra).
    pub(crate) mounts: usize,
    pub(crate) extra: usize,
    pub(crate) what: String,
    pub(crate) layers: usize,
    pub(crate) median_ms: f64,
    pub(crate) yardstick: String,
    pub(crate) ratio: Option<f64>,
    pub(crate) error: Option<String>,
}

/// The extra mount counts measured (`IDOVERLAY_BENCH_HOST_MOUNTS=0,1000`).
fn extra_counts(cfg: &Config) -> Vec<usize> {
    match std::env::var("IDOVERLAY_BENCH_HOST_MOUNTS") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) if cfg.quick => vec![0, 1000],
        Err(_) => vec![0, 1000, 10_000],
    }
}

pub(crate) fn run_host_mounts(
    cfg: &Config,
    scratch: &Scratch,
    env: &Env<'_>,
) -> Vec<HostMountsResult> {
    let mut grown = HostMounts::new(scratch);
    let mut out = Vec::new();
    let mut probe_at_fresh: Option<f64> = None;
    let library = [
        Variant::Floor,
        Variant::Auto,
        Variant::PrivateNs,
        Variant::HostStaged,
    ];
    for extra in extra_counts(cfg) {
        grown.grow_to(extra);
        let mounts = table_size();
        eprintln!("bench: host mounts: {mounts} in the table ({extra} extra)");
        let row = |what: String, layers, median_ms, yardstick: &str, base: Option<f64>| {
            HostMountsResult {
                mounts,
                extra,
                what,
                layers,
                median_ms,
                yardstick: yardstick.into(),
                ratio: base.map(|b| median_ms / b),
                error: None,
            }
        };
        for n in [8, MAX_LAYERS] {
            let rows = run_serial(cfg, env, n, &library);
            let floor = rows
                .iter()
                .find(|r| r.variant == "floor" && r.error.is_none())
                .map(|r| r.mount.median_ms);
            for r in rows {
                let mut result = row(r.variant.to_string(), n, r.mount.median_ms, "floor", floor);
                result.error = r.error;
                out.push(result);
            }
        }
        let probe = run_probe(cfg);
        let base = *probe_at_fresh.get_or_insert(probe.stats.median_ms);
        let mut result = row(
            "probe".into(),
            0,
            probe.stats.median_ms,
            "probe at the fewest mounts",
            Some(base),
        );
        result.error = probe.error;
        out.push(result);
        let cli = run_cli_tools(
            cfg,
            env.set,
            8,
            &["minimal", "util-linux", "idoverlay", "idoverlay-static"],
        );
        let of = |tool: &str| {
            cli.iter()
                .find(|r| r.tool == tool && r.error.is_none())
                .map(|r| r.total.median_ms)
        };
        let (minimal, util_linux) = (of("minimal"), of("util-linux"));
        for r in &cli {
            for (yardstick, base) in [("minimal", minimal), ("util-linux", util_linux)] {
                if r.tool == yardstick {
                    continue;
                }
                let mut result = row(
                    format!("CLI {}", r.tool),
                    8,
                    r.total.median_ms,
                    yardstick,
                    base,
                );
                result.error = r.error.clone();
                out.push(result);
            }
        }
        // private-ns from the CLI (the fleet's 6.1-6.12 path).
        for tool in ["idoverlay", "idoverlay-static"] {
            if let Some(r) = run_cli_private_ns(cfg, env.set, tool) {
                out.push(row(
                    format!("CLI {tool} --strategy private-ns"),
                    8,
                    r,
                    "minimal",
                    minimal,
                ));
            }
        }
    }
    out
}

/// `idoverlay mount --strategy private-ns` + `umount`, 8 layers: the
/// median of mount + umount in ms.
fn run_cli_private_ns(cfg: &Config, set: &LayerSet, tool: &str) -> Option<f64> {
    let slot = set.slot(0);
    let (mut mount, umount) = cli_commands(set, &slot, 8, tool);
    mount
        .1
        .splice(1..1, ["--strategy".to_string(), "private-ns".to_string()]);
    let commands = (mount, umount);
    let mut total = Vec::new();
    for i in 0..cfg.single_iterations(50) + cfg.warmup() {
        match cli_cycle(&commands, &slot.target) {
            Ok((m, u)) if i >= cfg.warmup() => total.push(m + u),
            Ok(_) => {}
            Err(e) => {
                eprintln!("bench: CLI private-ns: {e}");
                return None;
            }
        }
    }
    Some(Stats::of(&total).median_ms)
}

pub(crate) fn host_mounts_table(rows: &[HostMountsResult]) -> String {
    let mut s = String::from(
        "\nOn a busy node: extra mounts in the namespace; ms (library: assemble+attach; CLI: \
         mount + umount processes; probe: one live probe); ratio of medians to the yardstick \
         at the same mount count\n\n\
         | mounts | what | layers | median | yardstick | ratio |\n\
         |---:|---|---:|---:|---|---:|\n",
    );
    for r in rows {
        match &r.error {
            Some(e) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | error: {e} | | |",
                    r.mounts, r.what, r.layers
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.3} | {} | {} |",
                    r.mounts,
                    r.what,
                    r.layers,
                    r.median_ms,
                    r.yardstick,
                    ratio(r.ratio)
                );
            }
        }
    }
    s
}
