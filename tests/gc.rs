//! `gc` misused and raced: it must act only on idoverlay's own state dir,
//! only on staging it can prove is idoverlay's and dead, unmount only
//! idoverlay's own staged mounts that a record names, remove only empty
//! directories a record names — and never touch a live assembly.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use idoverlay::{IdMap, Overlay, Strategy};

fn map() -> IdMap {
    "0:100000:65536".parse().unwrap()
}

/// A state dir made the way idoverlay makes it: by one host-staged mount.
fn real_state_dir(dir: &Path, name: &str) -> PathBuf {
    let layers = make_layers(&dir.join(format!("{name}-layers"))).dirs;
    let target = dir.join(format!("{name}-t"));
    mkdir(&target, 0o755, 0, 0);
    let state = dir.join(name);
    Overlay::new()
        .lowers(layers)
        .idmap(map(), map())
        .strategy(Strategy::HostStaged)
        .state_dir(&state)
        .mount(&target)
        .unwrap();
    idoverlay::unmount_overlay(&target, false).unwrap();
    state
}

/// A record as idoverlay writes it, for a run whose process is gone.
fn record(state: &Path, id: &str, mounts: &[&str]) {
    let text = serde_json::json!({
        "format": "idoverlay-staging", "version": 2, "id": id, "pid": 1,
        "start_time": 1, "created": 0, "mounts": mounts,
    });
    write_file(
        &state.join(format!("{id}.json")),
        &text.to_string(),
        0o600,
        0,
        0,
    );
}

fn gc_json(state: &Path) -> (std::process::Output, serde_json::Value) {
    let out = idoverlay()
        .args(["gc", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            stderr(&out),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out, v)
}

/// The report entry for a path ending in `name`.
fn entry(v: &serde_json::Value, name: &str) -> serde_json::Value {
    v["staging"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"].as_str().unwrap().ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("no entry for {name} in {v}"))
        .clone()
}

#[test]
fn gc_refuses_a_state_dir_that_is_not_idoverlays_and_changes_nothing() {
    in_private_ns("gc::foreign", |s| {
        let dir = s.tmpfs_dir("g");
        // An ordinary root-owned 0700 directory with things in it.
        let srv = dir.join("srv-d");
        write_file(&srv.join("config.json"), "{}", 0o600, 0, 0);
        write_file(&srv.join("notes.json"), "{}", 0o600, 0, 0);
        mkdir(&srv.join("empty-sub"), 0o700, 0, 0);
        mkdir(&srv, 0o700, 0, 0);
        // A tmpfs that is not idoverlay's: no marker, or a marker others
        // could have written.
        let plain_tmpfs = dir.join("tmpfs-d");
        mkdir(&plain_tmpfs, 0o700, 0, 0);
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0700", "x"])
            .arg(&plain_tmpfs));
        mkdir(&plain_tmpfs.join("1-aa"), 0o700, 0, 0);
        let forged = dir.join("forged-d");
        mkdir(&forged, 0o700, 0, 0);
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0700", "y"])
            .arg(&forged));
        write_file(
            &forged.join(".idoverlay-state"),
            r#"{"format":"idoverlay-state","version":1}"#,
            0o644,
            0,
            0,
        );
        record(&forged, "1-aa", &["0"]);
        mkdir(&forged.join("1-aa/0"), 0o700, 0, 0);
        for d in [&srv, &plain_tmpfs, &forged] {
            let before = fingerprint(d);
            let mounts_before = mounts();
            let out = idoverlay()
                .arg("gc")
                .arg("--state-dir")
                .arg(d)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{}: gc accepted it", d.display());
            let err = stderr(&out);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains("state dir"), "{err}");
            assert_eq!(
                fingerprint_diff(&before, &fingerprint(d)),
                Vec::<String>::new()
            );
            assert_eq!(new_mounts(&mounts_before, &mounts()).len(), 0);
            assert_eq!(mounts().len(), mounts_before.len());
        }
        // Nor a symlink to idoverlay's own.
        let real = real_state_dir(&dir, "real");
        std::os::unix::fs::symlink(&real, dir.join("link")).unwrap();
        let out = idoverlay()
            .arg("gc")
            .arg("--state-dir")
            .arg(dir.join("link"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
    });
}

#[test]
fn gc_leaves_alone_whatever_it_cannot_prove_is_a_dead_runs_own() {
    in_private_ns("gc::misuse", |s| {
        let dir = s.tmpfs_dir("g");
        let state = real_state_dir(&dir, "state");
        let precious = dir.join("precious");
        write_file(&precious.join("data"), "keep", 0o600, 0, 0);
        mkdir(&precious.join("empty"), 0o700, 0, 0);
        let precious_print = fingerprint(&precious);

        // A live run: its record locked by a process that is still there.
        record(&state, "1-11", &["0"]);
        mkdir(&state.join("1-11/0"), 0o700, 0, 0);
        // (This process holds the lock; gc runs as another.)
        let holder = fs::File::open(state.join("1-11.json")).unwrap();
        rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
        // Dead runs whose staging holds what idoverlay never puts there.
        record(&state, "2-22", &["0"]);
        write_file(&state.join("2-22/0/precious"), "keep", 0o600, 0, 0);
        record(&state, "3-33", &["0"]);
        mkdir(&state.join("3-33"), 0o700, 0, 0);
        std::os::unix::fs::symlink(&precious, state.join("3-33/0")).unwrap();
        // A bind mount of a precious directory planted at a recorded name.
        record(&state, "4-44", &["0", "1"]);
        mkdir(&state.join("4-44/0"), 0o700, 0, 0);
        mkdir(&state.join("4-44/1"), 0o700, 0, 0);
        run(Command::new("mount")
            .arg("--bind")
            .arg(&precious)
            .arg(state.join("4-44/0")));
        // A staging dir that is itself a mount point.
        record(&state, "5-55", &["0"]);
        mkdir(&state.join("5-55"), 0o700, 0, 0);
        run(Command::new("mount")
            .arg("--bind")
            .arg(&precious)
            .arg(state.join("5-55")));
        // Records that do not parse as idoverlay's: garbage, the old format,
        // a mount name that climbs out.
        write_file(&state.join("6-66.json"), "garbage", 0o600, 0, 0);
        mkdir(&state.join("6-66/0"), 0o700, 0, 0);
        write_file(
            &state.join("7-77.json"),
            r#"{"version":1,"dir":"7-77","pid":1,"start_time":1,"boot_id":"x","created":0}"#,
            0o600,
            0,
            0,
        );
        mkdir(&state.join("7-77/0"), 0o700, 0, 0);
        record(&state, "8-88", &["../7-77"]);
        mkdir(&state.join("8-88"), 0o700, 0, 0);
        // /dev/zero and a FIFO where a record should be.
        std::os::unix::fs::symlink("/dev/zero", state.join("9-99.json")).unwrap();
        run(Command::new("mkfifo").arg(state.join("a-aa.json")));
        // Staging without a record, and something idoverlay never makes.
        mkdir(&state.join("b-bb/0"), 0o700, 0, 0);
        write_file(&state.join("config.json"), "{}", 0o600, 0, 0);
        // And the positive control: a dead run with only what it made.
        record(&state, "c-cc", &["0", "1", "u"]);
        mkdir(&state.join("c-cc/0"), 0o700, 0, 0);
        mkdir(&state.join("c-cc/1"), 0o700, 0, 0);

        let mounts_before = mounts();
        let (out, v) = gc_json(&state);
        assert!(!out.status.success(), "gc says what it left: {v}");
        assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
        let kept = |name: &str, says: &str| {
            let e = entry(&v, name);
            assert_eq!(e["removed"], false, "{name}: {e}");
            let why = e["kept_because"].as_str().unwrap().to_string();
            assert!(why.contains(says), "{name}: {why}");
        };
        kept("1-11", "still running");
        kept("2-22", "did not put there");
        kept("3-33", "symlink");
        kept("4-44", "not idoverlay's");
        kept("5-55", "mount point");
        kept("6-66", "does not parse");
        kept("7-77", "does not parse");
        kept("8-88", "does not parse");
        kept("9-99", "");
        kept("a-aa", "a FIFO");
        kept("b-bb", "without a record");
        kept("config.json", "not something idoverlay makes");
        assert_eq!(entry(&v, "c-cc")["removed"], true, "{v}");
        assert!(!state.join("c-cc").exists() && !state.join("c-cc.json").exists());

        // Everything left is as it was: records, dirs, the planted mounts
        // (still mounted), and what they show.
        for p in [
            "1-11.json",
            "1-11/0",
            "2-22/0/precious",
            "3-33/0",
            "4-44/1",
            "6-66/0",
            "7-77/0",
            "8-88",
            "b-bb/0",
            "config.json",
        ] {
            assert!(fs::symlink_metadata(state.join(p)).is_ok(), "{p} removed");
        }
        assert_eq!(
            new_mounts(&mounts(), &mounts_before).len(),
            0,
            "gc unmounted something"
        );
        assert_eq!(
            fingerprint_diff(&precious_print, &fingerprint(&precious)),
            Vec::<String>::new()
        );
        assert_eq!(
            fingerprint_diff(&precious_print, &fingerprint(&state.join("4-44/0"))),
            Vec::<String>::new()
        );
        // Once the live run is gone, its staging goes too.
        drop(holder);
        let (_, v) = gc_json(&state);
        assert_eq!(entry(&v, "1-11")["removed"], true, "{v}");
        for p in ["4-44/0", "5-55"] {
            run(Command::new("umount").arg(state.join(p)));
        }
    });
}

/// A temporary staging record is created empty and locked a moment later
/// by its writer; gc, listing it in between, must not take its lock, even
/// for a moment, or the writer's `flock(LOCK_NB)` fails and so does its
/// assembly (1 of 160 host-staged mounts in the test below, once). Here
/// an empty temporary record is tried with `LOCK_NB` while gc sweeps.
#[test]
fn gc_never_locks_an_empty_temporary_record() {
    use std::sync::atomic::{AtomicBool, Ordering};
    in_private_ns("gc::empty_temp", |s| {
        let dir = s.tmpfs_dir("g");
        let state = real_state_dir(&dir, "state");
        let temp = state.join(".1f-00c0ffee.0badf00d.tmp");
        write_file(&temp, "", 0o600, 0, 0);
        let file = std::fs::File::open(&temp).unwrap();
        let stop = AtomicBool::new(false);
        let (mut tries, mut refused) = (0u64, 0u64);
        std::thread::scope(|scope| {
            let sweeper = scope.spawn(|| {
                let mut sweeps = 0;
                while !stop.load(Ordering::Relaxed) {
                    idoverlay::gc::collect(&state).unwrap();
                    sweeps += 1;
                }
                sweeps
            });
            while tries < 200_000 {
                tries += 1;
                match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                {
                    Ok(()) => rustix::fs::flock(&file, rustix::fs::FlockOperation::Unlock).unwrap(),
                    Err(_) => refused += 1,
                }
            }
            stop.store(true, Ordering::Relaxed);
            let sweeps = sweeper.join().unwrap();
            eprintln!("{tries} tries beside {sweeps} gc sweeps: {refused} refused");
            assert!(sweeps > 0);
        });
        assert_eq!(refused, 0, "gc took the lock of a record being written");
        assert!(temp.exists(), "an empty temporary record is left alone");
    });
}

#[test]
fn gc_never_removes_a_file_a_live_writer_is_replacing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    in_private_ns("gc::live_writer", |s| {
        let dir = s.tmpfs_dir("g");
        let state = real_state_dir(&dir, "state");
        let layer = make_layers(&dir.join("layers")).dirs.remove(0);
        let report = idoverlay::probe::probe(&[layer], None);
        assert_eq!(report.paths[0].idmap, Some(true), "{report:?}");
        // The report is replaced each time: a temporary name, renamed
        // over the last one, which gc must never take from under its
        // writer.
        idoverlay::probe::keep_for_boot(&state, &report).unwrap();
        let stop = AtomicBool::new(false);
        let (mut writes, mut failed) = (0u64, Vec::new());
        std::thread::scope(|scope| {
            let sweeper = scope.spawn(|| {
                let (mut sweeps, mut removed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let report = idoverlay::gc::collect(&state).unwrap();
                    removed += report.staging.iter().filter(|s| s.removed).count() as u64;
                    sweeps += 1;
                }
                (sweeps, removed)
            });
            while writes < 50_000 {
                writes += 1;
                if let Err(e) = idoverlay::probe::keep_for_boot(&state, &report) {
                    failed.push(e.to_string());
                }
            }
            stop.store(true, Ordering::Relaxed);
            let (sweeps, removed) = sweeper.join().unwrap();
            eprintln!(
                "{writes} replacements beside {sweeps} gc sweeps: {} failed, gc removed {removed}",
                failed.len()
            );
            assert!(sweeps > 100, "gc must sweep all along ({sweeps})");
        });
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..1]
        );
        let left: Vec<_> = fs::read_dir(state.join("probe"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    });
}

#[test]
fn gc_beside_live_assemblies_removes_nothing_live() {
    in_private_ns("gc::live", |s| {
        let dir = s.tmpfs_dir("g");
        let state = dir.join("state");
        let layers = make_layers(&dir.join("layers")).dirs;
        let stop = AtomicBool::new(false);
        let (mounted, failed, sweeps) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        );
        let failures = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            // gc in a tight loop the whole time.
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if idoverlay::gc::collect(&state).is_ok() {
                        sweeps.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            let workers: Vec<_> = (0..4)
                .map(|w| {
                    let (layers, state, dir) = (&layers, &state, &dir);
                    let (mounted, failed, failures) = (&mounted, &failed, &failures);
                    scope.spawn(move || {
                        let target = dir.join(format!("t{w}"));
                        mkdir(&target, 0o755, 0, 0);
                        for _ in 0..40 {
                            let r = Overlay::new()
                                .lowers(layers.iter().cloned())
                                .idmap(map(), map())
                                .strategy(Strategy::HostStaged)
                                .state_dir(state)
                                .mount(&target);
                            match r {
                                Ok(m) if m.warnings.is_empty() => {
                                    mounted.fetch_add(1, Ordering::Relaxed);
                                    assert_eq!(
                                        owner(&target.join("etc/hostname")),
                                        (100000, 100000)
                                    );
                                    idoverlay::unmount_overlay(&target, false).unwrap();
                                }
                                Ok(m) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    failures
                                        .lock()
                                        .unwrap()
                                        .push(format!("warnings: {:?}", m.warnings));
                                    idoverlay::unmount_overlay(&target, false).unwrap();
                                }
                                Err(e) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    failures.lock().unwrap().push(e.to_string());
                                }
                            }
                        }
                    })
                })
                .collect();
            // Stop the sweeper even when a worker panicked (the scope waits
            // for every thread before the panic goes on).
            let joined: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
            stop.store(true, Ordering::Relaxed);
            for j in joined {
                if let Err(p) = j {
                    std::panic::resume_unwind(p);
                }
            }
        });
        eprintln!(
            "gc beside live assemblies: {} mounted, {} failed, {} gc sweeps",
            mounted.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            sweeps.load(Ordering::Relaxed)
        );
        assert!(sweeps.load(Ordering::Relaxed) > 0);
        assert_eq!(failures.into_inner().unwrap(), Vec::<String>::new());
        assert_eq!(mounted.load(Ordering::Relaxed), 160);
        // And nothing is left to collect.
        let report = idoverlay::gc::collect(&state).unwrap();
        assert!(report.staging.is_empty(), "{report:?}");
    });
}
