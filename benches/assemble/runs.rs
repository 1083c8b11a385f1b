//! The measurements: serial, concurrent, single operations, the command line.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------
// Serial measurements
// ---------------------------------------------------------------------------

/// Runs `f` on a fresh thread that owns its cwd, starting in `dir`.
pub(crate) fn on_own_thread<T: Send>(dir: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            own_cwd(dir);
            f()
        })
        .join()
        .expect("measuring thread panicked")
    })
}

/// A tiny xorshift generator: shuffles the order of variants per round so
/// that load from other processes, and deferred kernel work one variant
/// leaves behind (RCU callbacks freeing its mounts), land on every variant
/// alike instead of always on the same successor.
pub(crate) struct Shuffle(pub(crate) u64);

impl Shuffle {
    pub(crate) fn order(&mut self, len: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..len).collect();
        for i in (1..len).rev() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            order.swap(i, (self.0 % (i as u64 + 1)) as usize);
        }
        order
    }
}

/// One variant's samples while its rounds run.
pub(crate) struct Row {
    pub(crate) job: Job,
    pub(crate) mount: Vec<Duration>,
    pub(crate) unmount: Vec<Duration>,
    pub(crate) total: Vec<Duration>,
    pub(crate) error: Option<String>,
}

impl Row {
    pub(crate) fn into_result(self, fs: &'static str, layers: usize) -> SerialResult {
        SerialResult {
            fs,
            layers,
            variant: self.job.variant.name(),
            strategy_used: self.job.used.map(|s| s.name().to_string()),
            iterations: self.mount.len(),
            mount: Stats::of(&self.mount),
            unmount: Stats::of(&self.unmount),
            total: Stats::of(&self.total),
            mount_ratio: None,
            total_ratio: None,
            error: self.error,
        }
    }
}

/// All variants at one size, interleaved: each round runs one mount +
/// unmount of every variant in a shuffled order, so that the ratios to the
/// floor compare samples taken under the same conditions. The first
/// rounds are warm-up (probe cache, dentries) and not kept; the first
/// checks the owners seen through each mount.
pub(crate) fn run_serial(
    cfg: &Config,
    env: &Env<'_>,
    n: usize,
    variants: &[Variant],
) -> Vec<SerialResult> {
    let iterations = cfg.iterations(n);
    let warmup = cfg.warmup();
    on_own_thread(&env.set.root, || {
        let mut rows: Vec<Row> = variants
            .iter()
            .map(|&v| Row {
                job: Job::prepare(v, env, n, 0),
                mount: Vec::with_capacity(iterations),
                unmount: Vec::with_capacity(iterations),
                total: Vec::with_capacity(iterations),
                error: None,
            })
            .collect();
        let mut shuffle = Shuffle(0x9e37_79b9_7f4a_7c15 ^ n as u64);
        for round in 0..warmup + iterations {
            for i in shuffle.order(rows.len()) {
                let row = &mut rows[i];
                if row.error.is_some() {
                    continue;
                }
                match row.job.cycle(round == 0) {
                    Ok((m, u)) if round >= warmup => {
                        row.mount.push(m);
                        row.unmount.push(u);
                        row.total.push(m + u);
                    }
                    Ok(_) => {}
                    Err(e) => row.error = Some(e),
                }
            }
        }
        rows.into_iter()
            .map(|r| r.into_result(env.set.fs, n))
            .collect()
    })
}

/// Ratios of each row's medians to the floor row of the same fs and size.
pub(crate) fn fill_serial_ratios(rows: &mut [SerialResult]) {
    let floors: Vec<(&'static str, usize, Stats, Stats)> = rows
        .iter()
        .filter(|r| r.variant == "floor" && r.error.is_none())
        .map(|r| (r.fs, r.layers, r.mount, r.total))
        .collect();
    for row in rows.iter_mut().filter(|r| r.error.is_none()) {
        if let Some((_, _, mount, total)) = floors
            .iter()
            .find(|(fs, n, _, _)| *fs == row.fs && *n == row.layers)
        {
            row.mount_ratio = Some(row.mount.median_ms / mount.median_ms);
            row.total_ratio = Some(row.total.median_ms / total.median_ms);
        }
    }
}

// ---------------------------------------------------------------------------
// Concurrent measurements
// ---------------------------------------------------------------------------

/// `threads` threads, each with its own slot and cwd, cycle mount+unmount
/// until `duration` has passed; returns all cycles and the wall time until
/// the last thread finished its last cycle.
pub(crate) fn run_concurrent_once(
    env: &Env<'_>,
    n: usize,
    variant: Variant,
    threads: usize,
    duration: Duration,
) -> Result<(u64, f64), String> {
    let barrier = Barrier::new(threads + 1);
    let (outcomes, seconds) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let barrier = &barrier;
                s.spawn(move || {
                    own_cwd(&env.set.root);
                    let mut job = Job::prepare(variant, env, n, k);
                    barrier.wait();
                    cycle_until(&mut job, Instant::now() + duration)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let outcomes: Vec<Result<u64, String>> = handles
            .into_iter()
            .map(|h| h.join().expect("concurrent thread panicked"))
            .collect();
        (outcomes, start.elapsed().as_secs_f64())
    });
    let mut cycles = 0;
    for outcome in outcomes {
        cycles += outcome?;
    }
    Ok((cycles, seconds))
}

pub(crate) fn cycle_until(job: &mut Job, deadline: Instant) -> Result<u64, String> {
    let mut cycles = 0;
    while Instant::now() < deadline {
        job.cycle(false)?;
        cycles += 1;
    }
    Ok(cycles)
}

/// Every variant at one size and thread count, in `rounds` short runs
/// each, the variants shuffled per round (as in `run_serial`); the rate is
/// all cycles over all the runs' wall time.
pub(crate) fn run_concurrent(
    cfg: &Config,
    env: &Env<'_>,
    n: usize,
    threads: usize,
    variants: &[Variant],
) -> Vec<ConcurrentResult> {
    let (rounds, duration) = cfg.concurrent_rounds();
    let mut totals: Vec<Result<(u64, f64), String>> = vec![Ok((0, 0.0)); variants.len()];
    let mut shuffle = Shuffle(0x2545_f491_4f6c_dd1d ^ (n * threads) as u64);
    for _ in 0..rounds {
        for i in shuffle.order(variants.len()) {
            if let Ok((cycles, seconds)) = &totals[i] {
                totals[i] = run_concurrent_once(env, n, variants[i], threads, duration)
                    .map(|(c, s)| (cycles + c, seconds + s));
            }
        }
    }
    variants
        .iter()
        .zip(totals)
        .map(|(v, total)| {
            let (cycles, seconds, error) = match total {
                Ok((c, s)) => (c, s, None),
                Err(e) => (0, 0.0, Some(e)),
            };
            ConcurrentResult {
                fs: env.set.fs,
                layers: n,
                variant: v.name(),
                threads,
                cycles,
                seconds,
                per_second: if error.is_none() {
                    cycles as f64 / seconds
                } else {
                    0.0
                },
                ratio: None,
                error,
            }
        })
        .collect()
}

pub(crate) fn fill_concurrent_ratios(rows: &mut [ConcurrentResult]) {
    let floors: Vec<(&'static str, usize, usize, f64)> = rows
        .iter()
        .filter(|r| r.variant == "floor" && r.error.is_none())
        .map(|r| (r.fs, r.layers, r.threads, r.per_second))
        .collect();
    for row in rows.iter_mut().filter(|r| r.error.is_none()) {
        if let Some((.., rate)) = floors
            .iter()
            .find(|(fs, n, t, _)| *fs == row.fs && *n == row.layers && *t == row.threads)
        {
            row.ratio = Some(row.per_second / rate);
        }
    }
}

// ---------------------------------------------------------------------------
// Single operations: user namespace from maps, the full probe
// ---------------------------------------------------------------------------

pub(crate) fn run_single(
    name: &'static str,
    iterations: usize,
    mut op: impl FnMut() -> Result<(), String>,
) -> SingleResult {
    let mut samples = Vec::with_capacity(iterations);
    let mut error = None;
    for _ in 0..iterations + 1 {
        let t0 = Instant::now();
        if let Err(e) = op() {
            error = Some(e);
            break;
        }
        samples.push(t0.elapsed());
    }
    if !samples.is_empty() {
        samples.remove(0); // the first run is warm-up
    }
    SingleResult {
        name,
        iterations: samples.len(),
        stats: Stats::of(&samples),
        error,
    }
}

pub(crate) fn run_userns(cfg: &Config, map: &IdMap) -> SingleResult {
    run_single("userns from maps", cfg.single_iterations(200), || {
        UserNamespace::from_maps(map, map)
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

pub(crate) fn run_probe(cfg: &Config) -> SingleResult {
    run_single("probe(&[], None)", cfg.single_iterations(50), || {
        let report = idoverlay::probe::probe(&[], None);
        report
            .strategy
            .map(drop)
            .ok_or_else(|| format!("probe chose no strategy: {}", report.reason))
    })
}

// ---------------------------------------------------------------------------
// Command line end to end
// ---------------------------------------------------------------------------

/// The state dir the bench's CLI runs keep their probe report in (set
/// once by `run_all`), as the tool does in production.
pub(crate) static CLI_STATE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The release binary cargo built for this bench.
pub(crate) const IDOVERLAY_BIN: &str = env!("CARGO_BIN_EXE_idoverlay");

/// One tool's samples while the CLI rounds run.
pub(crate) struct CliRow {
    pub(crate) tool: &'static str,
    pub(crate) commands: (Argv, Argv),
    pub(crate) mount: Vec<Duration>,
    pub(crate) unmount: Vec<Duration>,
    pub(crate) total: Vec<Duration>,
    pub(crate) error: Option<String>,
}

/// util-linux and idoverlay alternately (interleaved, as in `run_serial`):
/// spawn + mount, then spawn + umount, each timed to the child's exit.
pub(crate) fn run_cli(cfg: &Config, set: &LayerSet, n: usize) -> Vec<CliResult> {
    run_cli_tools(cfg, set, n, &["util-linux", "idoverlay"])
}

/// [`run_cli`] with these tools: `util-linux`, `idoverlay`, `minimal` (one
/// mount(2) or umount2(2) per process, see minimal.c).
pub(crate) fn run_cli_tools(
    cfg: &Config,
    set: &LayerSet,
    n: usize,
    tools: &[&'static str],
) -> Vec<CliResult> {
    let slot = set.slot(0);
    let iterations = cfg.single_iterations(if n <= 8 { 100 } else { 50 });
    let mut rows: Vec<CliRow> = tools
        .iter()
        .copied()
        .map(|tool| CliRow {
            tool,
            commands: cli_commands(set, &slot, n, tool),
            mount: Vec::new(),
            unmount: Vec::new(),
            total: Vec::new(),
            error: None,
        })
        .collect();
    for i in 0..iterations + cfg.warmup() {
        for row in rows.iter_mut().filter(|r| r.error.is_none()) {
            match cli_cycle(&row.commands, &slot.target) {
                Ok((m, u)) if i >= cfg.warmup() => {
                    row.mount.push(m);
                    row.unmount.push(u);
                    row.total.push(m + u);
                }
                Ok(_) => {}
                Err(e) => row.error = Some(e),
            }
        }
    }
    rows.into_iter()
        .map(|r| CliResult {
            fs: set.fs,
            layers: n,
            tool: r.tool,
            iterations: r.mount.len(),
            mount: Stats::of(&r.mount),
            unmount: Stats::of(&r.unmount),
            total: Stats::of(&r.total),
            ratio: None,
            error: r.error,
        })
        .collect()
}

pub(crate) fn cli_cycle(
    (mount_cmd, umount_cmd): &(Argv, Argv),
    target: &Path,
) -> Result<(Duration, Duration), String> {
    let t0 = Instant::now();
    spawn_ok(mount_cmd)?;
    let t1 = Instant::now();
    if let Err(e) = spawn_ok(umount_cmd) {
        let _ = unmount(target, UnmountFlags::DETACH);
        return Err(e);
    }
    Ok((t1 - t0, t1.elapsed()))
}

/// The argv of the mount and the umount command, as `(program, args, cwd)`.
pub(crate) type Argv = (String, Vec<String>, PathBuf);

pub(crate) fn cli_commands(set: &LayerSet, slot: &Slot, n: usize, tool: &str) -> (Argv, Argv) {
    let target = slot.target.display().to_string();
    let upper = slot.upper.display().to_string();
    let work = slot.work.display().to_string();
    let cwd = set.parent.clone();
    if tool == "minimal" {
        let data = format!(
            "lowerdir={},upperdir={upper},workdir={work}",
            LayerSet::relative_lowerdir(n)
        );
        let bin = minimal_binary().display().to_string();
        return (
            (
                bin.clone(),
                vec!["mount".into(), target.clone(), data],
                cwd.clone(),
            ),
            (bin, vec!["umount".into(), target], cwd),
        );
    }
    if tool == "idoverlay-static" {
        let (mut mount, mut umount) = cli_commands(set, slot, n, "idoverlay");
        let bin = match static_cli() {
            Some(bin) => bin.display().to_string(),
            None => "/nonexistent/idoverlay-static".into(),
        };
        mount.0 = bin.clone();
        umount.0 = bin;
        return (mount, umount);
    }
    if tool == "util-linux" {
        // Relative lowerdir from the layers' parent: util-linux 2.38 uses
        // mount(2), whose options are cut at one page.
        let opts = format!(
            "lowerdir={},upperdir={upper},workdir={work}",
            LayerSet::relative_lowerdir(n)
        );
        let args = ["-t", "overlay", "overlay", "-o", &opts, &target];
        (
            ("mount".into(), args.map(String::from).to_vec(), cwd.clone()),
            ("umount".into(), vec![target.clone()], cwd),
        )
    } else {
        let mut args = vec!["mount".to_string()];
        for p in set.paths(n) {
            args.push("--lower".into());
            args.push(p.display().to_string());
        }
        if let Some(state) = CLI_STATE_DIR.get() {
            args.push("--state-dir".into());
            args.push(state.display().to_string());
        }
        for a in [
            "--upper", &upper, "--work", &work, "--uidmap", MAP, "--gidmap", MAP, &target,
        ] {
            args.push(a.to_string());
        }
        // umount takes the mount's record (see `idoverlay show`) with it.
        let mut umount = vec!["umount".to_string()];
        if let Some(state) = CLI_STATE_DIR.get() {
            umount.push("--state-dir".into());
            umount.push(state.display().to_string());
        }
        umount.push(target);
        (
            (IDOVERLAY_BIN.into(), args, cwd.clone()),
            (IDOVERLAY_BIN.into(), umount, cwd),
        )
    }
}

pub(crate) fn spawn_ok((program, args, cwd): &Argv) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| format!("spawn {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.first().map(String::as_str).unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn fill_cli_ratios(rows: &mut [CliResult]) {
    let base: Vec<(&'static str, usize, f64)> = rows
        .iter()
        .filter(|r| r.tool == "util-linux" && r.error.is_none())
        .map(|r| (r.fs, r.layers, r.total.median_ms))
        .collect();
    for row in rows.iter_mut().filter(|r| r.error.is_none()) {
        if let Some((.., median)) = base
            .iter()
            .find(|(fs, n, _)| *fs == row.fs && *n == row.layers)
        {
            row.ratio = Some(row.total.median_ms / median);
        }
    }
}

/// minimal.c, compiled once per run into the target dir.
pub(crate) fn minimal_binary() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let out = results_path().with_file_name("idoverlay-bench-minimal");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/assemble/minimal.c");
        let built = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&out)
            .arg(&source)
            .status()
            .expect("run cc for benches/assemble/minimal.c");
        assert!(built.success(), "cc benches/assemble/minimal.c failed");
        out
    })
}

/// The command line tool as it is shipped (packages and the VM tests):
/// statically linked (`crt-static`, no dynamic loader at start), built once
/// per run with the same command vm-tests/run uses. `None` if that fails.
pub(crate) fn static_cli() -> Option<&'static Path> {
    static BIN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let built = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(repo)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args([
                "build",
                "--quiet",
                "--profile",
                "dist",
                "--locked",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--bin",
                "idoverlay",
            ])
            .status()
            .ok()?;
        built.success().then(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| repo.join("target"), PathBuf::from)
                .join("x86_64-unknown-linux-gnu/dist/idoverlay")
        })
    })
    .as_deref()
}
