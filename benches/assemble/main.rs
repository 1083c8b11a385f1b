//! `cargo bench --bench assemble`: how fast idoverlay assembles idmapped
//! overlays, next to a plain overlay (the floor) and containerd's
//! attach-a-temporary-mount-per-layer algorithm (the reference), on the same
//! layers, on ext4 and tmpfs. See docs/performance.md for how to read it.
//!
//! Safety: the process first moves into a private mount namespace (before
//! any thread exists, so every later thread and child process inherits it)
//! and makes `/` recursively private there. Every mount it makes sits on a
//! fresh tmpfs over a fresh directory under /tmp that it created; at exit
//! that tmpfs is detached lazily and the (then empty) directory removed.
//! Nothing outside it is mounted, unmounted or deleted.
//!
//! Environment (all optional):
//! * `IDOVERLAY_BENCH_QUICK=1` (or `-- --quick`): few iterations, a smoke run.
//! * `IDOVERLAY_BENCH_SECTIONS=serial,concurrent,userns,probe,cli,hostmounts`
//! * `IDOVERLAY_BENCH_HOST_MOUNTS=0,1000,10000`: extra mounts for the
//!   hostmounts section (ext4 only).
//! * `IDOVERLAY_BENCH_FS=ext4,tmpfs`, `IDOVERLAY_BENCH_LAYERS=1,8,...`,
//!   `IDOVERLAY_BENCH_VARIANTS=floor,auto,...`: run a subset (for strace/perf).
//! * `IDOVERLAY_BENCH_ITERATIONS=N`: N timed iterations per serial row
//!   (longer profiles).

use std::ffi::CString;
use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use idoverlay::{unmount_overlay, IdMap, Overlay, Strategy, UserNamespace};
use rustix::mount::{
    move_mount, open_tree, unmount, MountFlags, MountPropagationFlags, MoveMountFlags,
    OpenTreeFlags, UnmountFlags,
};
use serde::Serialize;

/// Every layer set holds this many layers; smaller runs use the first N.
pub(crate) const MAX_LAYERS: usize = 500;
/// Concurrency slots (upper, work, target, staging dir) per filesystem.
pub(crate) const MAX_THREADS: usize = 16;
/// The map every idmapped variant uses: on-disk 0 shows as 100000.
pub(crate) const MAP: &str = "0:100000:65536";
/// Host uid of on-disk 0 through the map; checked once per variant.
pub(crate) const MAPPED_ROOT: u32 = 100_000;

mod config;
mod fixtures;
mod hostmounts;
#[path = "../../tests/common/raw.rs"]
mod raw;
mod reference;
mod report;
mod runs;
mod stats;
mod variants;

pub(crate) use config::*;
pub(crate) use fixtures::*;
pub(crate) use hostmounts::*;
pub(crate) use reference::*;
pub(crate) use report::*;
pub(crate) use runs::*;
pub(crate) use stats::*;
pub(crate) use variants::*;

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

/// A root-owned 0755 directory for host-staged's state dir (which it
/// creates 0700 and covers with its own tmpfs).
pub(crate) fn host_staged_state_dir(scratch: &Scratch) -> PathBuf {
    let parent = scratch.root.join("hs");
    std::fs::create_dir(&parent).expect("create host-staged parent");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755))
        .expect("chmod host-staged parent");
    parent.join("state")
}

pub(crate) fn run_all(cfg: &Config, scratch: &Scratch, report: &mut Report) {
    let map: IdMap = MAP.parse().expect("valid map");
    let userns = Arc::new(UserNamespace::from_maps(&map, &map).expect("create user namespace"));
    let state_dir = host_staged_state_dir(scratch);
    let _ = CLI_STATE_DIR.set(state_dir.clone());
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| cfg.variants.allows(v.name()))
        .collect();
    for fs in ["ext4", "tmpfs"] {
        if !cfg.filesystems.allows(fs) {
            continue;
        }
        eprintln!("bench: building {MAX_LAYERS} layers on {fs}");
        let set = LayerSet::build(fs, scratch.fs_root(fs));
        let env = Env {
            set: &set,
            userns: &userns,
            state_dir: &state_dir,
        };
        if cfg.sections.allows("serial") {
            for n in cfg.sizes() {
                eprintln!("bench: {fs} {n} layers, one thread");
                report.serial.extend(run_serial(cfg, &env, n, &variants));
            }
        }
        if cfg.sections.allows("concurrent") {
            // Each concurrent thread has its own working directory (the
            // floor needs one); the shared-cwd case is a serial row only.
            let variants: Vec<Variant> = variants
                .iter()
                .copied()
                .filter(|v| *v != Variant::AutoSharedCwd)
                .collect();
            for n in cfg.concurrent_sizes() {
                for threads in [1, 4, MAX_THREADS] {
                    eprintln!("bench: {fs} {n} layers, {threads} threads");
                    report
                        .concurrent
                        .extend(run_concurrent(cfg, &env, n, threads, &variants));
                }
            }
        }
        if cfg.sections.allows("cli") {
            for n in [8, 128] {
                eprintln!("bench: {fs} {n} layers, command line");
                report.cli.extend(run_cli(cfg, &set, n));
            }
        }
        // Last on ext4; the extra mounts are taken down after it.
        if fs == "ext4" && cfg.sections.allows("hostmounts") {
            eprintln!("bench: host mounts");
            report.host_mounts = run_host_mounts(cfg, scratch, &env);
        }
    }
    if cfg.sections.allows("userns") {
        eprintln!("bench: userns from maps");
        report.single.push(run_userns(cfg, &map));
    }
    if cfg.sections.allows("probe") {
        eprintln!("bench: probe");
        report.single.push(run_probe(cfg));
    }
}

fn main() {
    // `cargo test --benches` runs this binary without `--bench`: do nothing
    // there, the bench mounts hundreds of overlays and takes minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("assemble bench: run it with `cargo bench --bench assemble`");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("assemble bench: needs root (it mounts overlays in a private mount namespace)");
        std::process::exit(1);
    }
    let started = Instant::now();
    let cfg = Config::from_env_and_args();
    enter_private_mount_ns();
    // 16 threads x 500 layers x (layer fd + clone fd) is ~16000 fds.
    idoverlay::raise_fd_limit();
    let mut report = Report {
        machine: machine(),
        source: git_describe(),
        quick: cfg.quick,
        seconds: 0.0,
        serial: vec![],
        concurrent: vec![],
        single: vec![],
        cli: vec![],
        host_mounts: vec![],
        targets: vec![],
    };
    {
        let scratch = Scratch::create();
        run_all(&cfg, &scratch, &mut report);
    } // scratch detached and removed here
    fill_serial_ratios(&mut report.serial);
    fill_concurrent_ratios(&mut report.concurrent);
    fill_cli_ratios(&mut report.cli);
    report.targets = evaluate_targets(&report);
    report.seconds = started.elapsed().as_secs_f64();
    print_report(&report);
    let path = results_path();
    match serde_json::to_string_pretty(&report) {
        Ok(json) => match std::fs::write(&path, json + "\n") {
            Ok(()) => println!("results written to {}", path.display()),
            Err(e) => eprintln!("bench: could not write {}: {e}", path.display()),
        },
        Err(e) => eprintln!("bench: could not serialize results: {e}"),
    }
}
