//! Crashes and attacks: the CLI killed at every mount-related syscall for
//! every strategy; the user-namespace helper dying with a killed caller; a
//! layer path swapped for a symlink while assemblies run; gc facing a
//! planted mount. Serial on purpose: it counts this process's children.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use common::*;
use idoverlay::{IdMap, Overlay, Strategy};

static SERIAL: Mutex<()> = Mutex::new(());

/// The syscalls that change mounts or namespaces, or make the helper.
const MOUNT_SYSCALLS: [&str; 10] = [
    "clone",
    "unshare",
    "open_tree",
    "mount_setattr",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "mount",
    "umount2",
];

/// What idoverlay keeps in a state dir for the boot, not temporary: its
/// tmpfs, and private-ns' staging namespace bound there.
fn kept_for_boot(m: &common::mountinfo::MountEntry) -> bool {
    m.source == "idoverlay-state" || (m.fs_type == "nsfs" && m.mount_point.ends_with("staging-ns"))
}

/// Whether `state` holds private-ns' staging namespace (its nsfs file
/// bound in the state tmpfs: another device).
fn staging_ns_kept(state: &Path) -> bool {
    fs::metadata(state.join("staging-ns"))
        .is_ok_and(|m| m.dev() != fs::metadata(state).unwrap().dev())
}

/// Mounts (and unmounts) with private-ns until `state` keeps a staging
/// namespace: this kernel refuses to bind one (ELOOP, see staging_ns.rs)
/// whose id is not below this test's namespace's, and ids come in per-CPU
/// batches, so the mounts run on each CPU in turn (a busy machine kept
/// running them all on the one whose batch was behind: ten mounts in a row
/// kept none).
fn keep_staging_ns(state: &Path, layers: &[std::path::PathBuf], target: &Path) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for attempt in 0..20 {
        if staging_ns_kept(state) {
            return;
        }
        let mut cmd = std::process::Command::new("taskset");
        cmd.args([
            "-c",
            &(attempt % cpus).to_string(),
            env!("CARGO_BIN_EXE_idoverlay"),
        ]);
        common::cli_mount_args_with(&mut cmd, "private-ns", state, layers, &[], target);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        run(idoverlay().arg("umount").arg(target));
    }
    panic!(
        "{}: no staging namespace kept in twenty mounts",
        state.display()
    );
}

#[test]
fn killed_at_every_mount_syscall_leaves_no_temporary_mount() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    in_private_ns("crash::killed_everywhere", |s| {
        let dir = s.ext4_dir("e");
        let layers = make_rich_layers(&dir).dirs;
        let prints: Vec<_> = layers.iter().map(|l| fingerprint(l)).collect();
        let target = dir.join("rootfs");
        fs::create_dir(&target).unwrap();
        let before: Vec<u64> = mounts().iter().map(|m| m.mount_id).collect();
        let mut kills = 0;
        let mut report = Vec::new();
        for strategy in ["detached", "private-ns", "host-staged"] {
            for syscall in MOUNT_SYSCALLS {
                let mut n = 1;
                loop {
                    // Fresh state each time, so every run makes the same
                    // calls. private-ns: one state dir per syscall, whose
                    // staging namespace (kept for the boot) exists before
                    // the kills, so that they land in assemblies.
                    let state = if strategy == "private-ns" {
                        let state = dir.join(format!("state-{strategy}-{syscall}"));
                        keep_staging_ns(&state, &layers, &target);
                        state
                    } else {
                        dir.join(format!("state-{strategy}-{syscall}-{n}"))
                    };
                    let out = cli_under_strace(
                        &format!("{syscall}:signal=KILL:when={n}"),
                        strategy,
                        &state,
                        &layers,
                        &target,
                    );
                    if out.status.success() {
                        run(idoverlay().arg("umount").arg(&target));
                        break;
                    }
                    kills += 1;
                    let what = format!("{strategy}, SIGKILL at {syscall} #{n}");
                    // Killed after the attach (keeping the record of the
                    // mount makes the state tmpfs then): the finished
                    // overlay, which umount takes down; never a part of one.
                    if mounts().iter().any(|m| m.mount_point == target) {
                        assert_finished_overlay(&target, &what);
                        run(idoverlay().arg("umount").arg(&target));
                    }
                    let left: Vec<_> = mounts()
                        .into_iter()
                        .filter(|m| !before.contains(&m.mount_id) && !kept_for_boot(m))
                        .collect();
                    if strategy == "host-staged" {
                        // Only what gc removes: staged clones in the state dir.
                        assert!(
                            left.iter().all(|m| m.mount_point.starts_with(&state)),
                            "{what}: {left:#?}"
                        );
                        run(idoverlay().args(["gc", "--state-dir"]).arg(&state));
                        let still: Vec<_> = mounts()
                            .into_iter()
                            .filter(|m| !before.contains(&m.mount_id) && !kept_for_boot(m))
                            .collect();
                        assert!(still.is_empty(), "{what}: after gc {still:#?}");
                        // Only idoverlay's marker of its own state tmpfs stays.
                        let rest: Vec<_> = fs::read_dir(&state)
                            .map(|d| d.flatten().map(|e| e.file_name()).collect())
                            .unwrap_or_default();
                        assert!(
                            rest.iter().all(|n| n == ".idoverlay-state"),
                            "{what}: left in the state dir: {rest:?}"
                        );
                    } else {
                        assert!(
                            left.is_empty(),
                            "{what}: temporary mounts visible: {left:#?}"
                        );
                    }
                    // Nor in the staging namespace kept for the boot.
                    let ns = state.join("staging-ns");
                    if strategy == "private-ns" {
                        assert_eq!(
                            in_mount_ns(&ns, &root_names),
                            "2\nproc",
                            "{what}: something left in the staging namespace"
                        );
                    }
                    for (l, p) in layers.iter().zip(&prints) {
                        assert!(
                            fingerprint_diff(p, &fingerprint(l)).is_empty(),
                            "{what}: layer changed"
                        );
                    }
                    n += 1;
                    assert!(n < 200, "{strategy}/{syscall}: never got through");
                }
                report.push(format!("{strategy}/{syscall}: {} kill(s)", n - 1));
            }
        }
        eprintln!("crash test: {kills} kills; {}", report.join(", "));
        assert!(kills > 30, "the kills must hit many syscalls ({kills})");
    });
}

/// The syscalls that write, lock and name the files idoverlay keeps in its
/// state dir (staging records, mount records, the probe report).
const STATE_FILE_SYSCALLS: [&str; 4] = ["write", "flock", "linkat", "rename,renameat,renameat2"];

/// Every file that idoverlay left in `state` (the tmpfs' top, `mounts/`,
/// `probe/`) that a reader would not take whole: a temporary name, or a
/// file that does not parse.
fn state_files_not_whole(state: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for dir in [
        state.to_path_buf(),
        state.join("mounts"),
        state.join("probe"),
    ] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.ends_with(".tmp") {
                bad.push(format!("{}: a temporary file", path.display()));
            } else if name.ends_with(".json")
                && serde_json::from_slice::<serde_json::Value>(&fs::read(&path).unwrap()).is_err()
            {
                bad.push(format!("{}: does not parse", path.display()));
            }
        }
    }
    bad
}

#[test]
fn killed_while_writing_its_state_files_leaves_nothing_gc_cannot_clean() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    in_private_ns("crash::state_files", |s| {
        let dir = s.ext4_dir("e");
        let layers = make_layers(&dir.join("layers")).dirs;
        let target = dir.join("rootfs");
        fs::create_dir(&target).unwrap();
        let (mut kills, mut report) = (0, Vec::new());
        // A mount per strategy (host-staged writes a staging record too),
        // and the probe: kept for the boot, a second run replaces it.
        for what in ["detached", "private-ns", "host-staged", "probe"] {
            for syscall in STATE_FILE_SYSCALLS {
                // One state dir for every run of a syscall: the next run
                // finds what the last one left (a report to replace).
                let state = dir.join(format!("state-{what}-{}", &syscall[..4]));
                let probe = |cmd: &mut std::process::Command| {
                    cmd.arg(env!("CARGO_BIN_EXE_idoverlay"))
                        .args(["probe", "--state-dir"])
                        .arg(&state)
                        .arg("--path")
                        .arg(&layers[0])
                        .output()
                        .unwrap()
                };
                // A first run, not killed, leaves what the next ones
                // replace (the probe report, kept for the boot).
                let first = match what {
                    "probe" => probe(&mut std::process::Command::new("env")),
                    _ => cli_mount(what, &state, &layers, &target),
                };
                assert!(first.status.success(), "{what}: {}", stderr(&first));
                let mut n = 0;
                loop {
                    let out = match n {
                        0 => None,
                        _ if what == "probe" => Some(probe(
                            std::process::Command::new("strace")
                                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                                .arg(format!("inject={syscall}:signal=KILL:when={n}"))
                                .arg("--"),
                        )),
                        _ => Some(cli_under_strace(
                            &format!("{syscall}:signal=KILL:when={n}"),
                            what,
                            &state,
                            &layers,
                            &target,
                        )),
                    };
                    let at = format!("{what}, SIGKILL at {syscall} #{n}");
                    if mounts().iter().any(|m| m.mount_point == target) {
                        run(idoverlay()
                            .args(["umount", "--state-dir"])
                            .arg(&state)
                            .arg(&target));
                    }
                    let gc = idoverlay()
                        .args(["gc", "--state-dir"])
                        .arg(&state)
                        .output()
                        .unwrap();
                    assert!(
                        gc.status.success(),
                        "{at}: gc cannot clean up: {}{}",
                        String::from_utf8_lossy(&gc.stdout),
                        stderr(&gc)
                    );
                    let bad = state_files_not_whole(&state);
                    assert!(bad.is_empty(), "{at}: after gc {bad:#?}");
                    match out {
                        Some(out) if out.status.success() => break,
                        Some(_) => kills += 1,
                        None => {}
                    }
                    n += 1;
                    assert!(n < 200, "{what}/{syscall}: never got through");
                }
                report.push(format!("{what}/{syscall}: {} kill(s)", n - 1));
            }
        }
        eprintln!("state files: {kills} kills; {}", report.join(", "));
        assert!(kills > 30, "the kills must hit many syscalls ({kills})");
    });
}

#[test]
fn userns_helper_dies_with_a_killed_caller() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    in_private_ns("crash::helper_dies", |s| {
        // Orphans come to us: a helper outliving its killed parent would
        // show up as our child, alive.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        let dir = s.tmpfs_dir("t");
        let layers = make_layers(&dir).dirs;
        let target = dir.join("rootfs");
        fs::create_dir(&target).unwrap();
        // The CLI is killed while the helper exists: at the write of the
        // uid map through /proc, between clone and reaping.
        let out = cli_under_strace(
            "write:signal=KILL:when=1",
            "detached",
            &dir.join("state"),
            &layers,
            &target,
        );
        assert!(!out.status.success());
        let mut alive = Vec::new();
        for _ in 0..200 {
            // Reap zombies; anything still running is a leak.
            while let Ok(Some(_)) =
                rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG)
            {}
            alive = child_processes();
            if alive.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        rustix::process::set_child_subreaper(None).unwrap();
        assert!(
            alive.is_empty(),
            "user namespace helper outlived its caller: {alive:?}"
        );
    });
}

#[test]
fn a_layer_swapped_for_a_symlink_never_lends_another_directory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    in_private_ns("crash::symlink_race", |s| {
        let dir = s.tmpfs_dir("t");
        let layers = make_layers(&dir).dirs;
        let secret = dir.join("secret");
        write_file(&secret.join("shadow"), "secret", 0o600, 0, 0);
        // The racing layer: flips between a real directory and a symlink
        // to the secret directory.
        let racing = dir.join("racing");
        let real = dir.join("racing.real");
        write_file(&real.join("racing-file"), "real", 0o644, 0, 0);
        let map: IdMap = "0:100000:65536".parse().unwrap();
        let ns = std::sync::Arc::new(idoverlay::UserNamespace::from_maps(&map, &map).unwrap());
        let stop = AtomicBool::new(false);
        let (mounted, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let link = dir.join("racing.link");
                std::os::unix::fs::symlink(&secret, &link).unwrap();
                let parked = dir.join("racing.parked");
                fs::rename(&real, &racing).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    // Swap the real dir out and the symlink in, and back.
                    let _ = fs::rename(&racing, &parked);
                    let _ = fs::rename(&link, &racing);
                    let _ = fs::rename(&racing, &link);
                    let _ = fs::rename(&parked, &racing);
                }
            });
            for (i, strategy) in [
                Strategy::Detached,
                Strategy::PrivateNs,
                Strategy::HostStaged,
            ]
            .into_iter()
            .cycle()
            .take(300)
            .enumerate()
            {
                let target = dir.join(format!("m{}", i % 3));
                fs::create_dir_all(&target).unwrap();
                let result = Overlay::new()
                    .lower(&racing)
                    .lowers(layers.iter().cloned())
                    .userns(ns.clone())
                    .strategy(strategy)
                    .state_dir(dir.join("state"))
                    .mount(&target);
                match result {
                    Ok(_) => {
                        mounted.fetch_add(1, Ordering::Relaxed);
                        assert!(
                            !target.join("shadow").exists(),
                            "{strategy}: the symlink's target was used"
                        );
                        assert!(
                            target.join("racing-file").exists(),
                            "{strategy}: the real layer is missing"
                        );
                        idoverlay::unmount_overlay(&target, false).unwrap();
                    }
                    Err(e) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        assert!(!e.to_string().contains('\n'));
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        eprintln!(
            "symlink race: {} mounted (always the real layer), {} refused cleanly",
            mounted.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        );
        assert!(
            mounted.load(Ordering::Relaxed) > 0,
            "the race must sometimes let a mount through"
        );
    });
}

#[test]
fn staging_is_root_only_and_never_under_world_writable_dirs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    in_private_ns("crash::staging_perms", |s| {
        let dir = s.tmpfs_dir("t");
        let layers = make_layers(&dir).dirs;
        let target = dir.join("rootfs");
        fs::create_dir(&target).unwrap();
        let state = dir.join("state");
        // Leave staging behind (injected EBUSY) to inspect it.
        let out = cli_under_strace(
            "umount2:error=EBUSY",
            "host-staged",
            &state,
            &layers,
            &target,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let check = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o700), "{}", p.display());
        };
        check(&state);
        for e in fs::read_dir(&state).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                check(&e);
            } else {
                assert_eq!(
                    fs::metadata(&e).unwrap().mode() & 0o077,
                    0,
                    "{}",
                    e.display()
                );
            }
        }
        run(idoverlay().args(["gc", "--state-dir"]).arg(&state));
        run(idoverlay().arg("umount").arg(&target));
        // A state dir under a world-writable directory is refused.
        let open = dir.join("open");
        mkdir(&open, 0o1777, 0, 0);
        let err = Overlay::new()
            .lowers(layers.iter().cloned())
            .idmap(
                "0:100000:65536".parse().unwrap(),
                "0:100000:65536".parse().unwrap(),
            )
            .strategy(Strategy::HostStaged)
            .state_dir(open.join("state"))
            .mount(&target)
            .unwrap_err();
        assert!(err.to_string().contains("world-writable"), "{err}");
        assert!(!open.join("state").exists());
    });
}
