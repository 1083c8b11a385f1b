//! The storm: the load under which containerd 2.0-rc lost data — many
//! idmapped rootfs mounts at once, each busy (a process holding a FIFO and
//! an open file, its working directory inside) when it is torn down — and
//! the proof that idoverlay loses nothing under it, with a negative control
//! showing the same harness catches the old algorithm's loss.
//!
//! Size: IDOVERLAY_STORM_WORKERS (default 16) workers ×
//! IDOVERLAY_STORM_CYCLES (default 6) assemblies each, every strategy in
//! turn. The long run recorded in docs/safety.md:
//! `IDOVERLAY_STORM_CYCLES=625 cargo test --release --test storm -- --nocapture`.
//!
//! One test per binary section runs at a time (a mutex): they count this
//! process's fds and children.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use idoverlay::{IdMap, Overlay, Strategy, UserNamespace};

static SERIAL: Mutex<()> = Mutex::new(());

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A process with its working directory in `dir`, holding the FIFO open
/// read-write and a regular file open: what makes an unmount fail EBUSY.
fn hold(dir: &Path, fifo: &str, file: &str) -> Child {
    let mut child = Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg(format!("exec 3<>'{fifo}' 4<'{file}'; exec sleep 600"))
        .spawn()
        .unwrap();
    // Wait until it really holds them (sleep has fd 4 open).
    let fd4 = PathBuf::from(format!("/proc/{}/fd/4", child.id()));
    for _ in 0..2000 {
        if fd4.exists()
            && fs::read_link(format!("/proc/{}/exe", child.id()))
                .is_ok_and(|e| e.ends_with("sleep"))
        {
            return child;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("holder did not start");
}

fn release(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

const STRATEGIES: [Strategy; 3] = [
    Strategy::Detached,
    Strategy::PrivateNs,
    Strategy::HostStaged,
];

#[test]
fn storm_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    in_private_ns("storm::storm_loses_nothing", |s| {
        let workers = env_usize("IDOVERLAY_STORM_WORKERS", 16);
        let cycles = env_usize("IDOVERLAY_STORM_CYCLES", 6);
        let dir = s.ext4_dir("e");
        let layers = make_rich_layers(&dir).dirs;
        let prints: Vec<_> = layers.iter().map(|l| fingerprint(l)).collect();
        let state = dir.join("state");
        let map: IdMap = "0:100000:65536".parse().unwrap();
        let userns = Arc::new(UserNamespace::from_maps(&map, &map).unwrap());
        // Warm the probe cache so the fd baseline holds only what stays.
        Overlay::new()
            .lowers(layers.clone())
            .userns(userns.clone())
            .assemble()
            .unwrap();
        let mounts_before: Vec<u64> = mounts().iter().map(|m| m.mount_id).collect();
        let fds_before = fds();
        let assembled = AtomicUsize::new(0);
        let busy = AtomicUsize::new(0);
        let per_strategy: Vec<AtomicUsize> =
            STRATEGIES.iter().map(|_| AtomicUsize::new(0)).collect();
        let started = std::time::Instant::now();

        std::thread::scope(|scope| {
            for w in 0..workers {
                let (layers, dir, state, userns) = (&layers, &dir, &state, &userns);
                let (assembled, busy, per_strategy) = (&assembled, &busy, &per_strategy);
                scope.spawn(move || {
                    // Half the workers keep the working directory they
                    // share with the others (idoverlay then mounts from a
                    // thread of its own); the other half have their own,
                    // which idoverlay lends to the clone for the mount(2).
                    if w % 2 == 1 {
                        // SAFETY: CLONE_FS does not touch the fd table.
                        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
                            .expect("unshare(CLONE_FS)");
                    }
                    let target = dir.join(format!("rootfs-{w}"));
                    let upper = dir.join(format!("c-{w}/upper"));
                    let work = dir.join(format!("c-{w}/work"));
                    for d in [&target, &upper, &work] {
                        fs::create_dir_all(d).unwrap();
                    }
                    for c in 0..cycles {
                        let k = (w + c) % STRATEGIES.len();
                        Overlay::new()
                            .lowers(layers.iter().cloned())
                            .upper(&upper)
                            .work(&work)
                            .userns(userns.clone())
                            .strategy(STRATEGIES[k])
                            .state_dir(state)
                            .mount(&target)
                            .unwrap();
                        assembled.fetch_add(1, Ordering::Relaxed);
                        per_strategy[k].fetch_add(1, Ordering::Relaxed);
                        assert_eq!(owner(&target.join("home/app")), (101000, 101000));
                        let holder = hold(&target, "home/app/fifo", "etc/hostname");
                        // Torn down while busy: a plain unmount must fail,
                        // and the lazy one succeed.
                        match idoverlay::unmount_overlay(&target, false) {
                            Err(e) if e.errno() == Some(libc::EBUSY) => {
                                busy.fetch_add(1, Ordering::Relaxed);
                                idoverlay::unmount_overlay(&target, true).unwrap();
                            }
                            other => panic!("unmount of a busy overlay: {other:?}"),
                        }
                        release(holder);
                    }
                });
            }
        });
        let elapsed = started.elapsed();
        // Clones are closed a moment after `mount` returns: settle() waits
        // for that (and for idoverlay's threads to end).
        idoverlay::settle();

        let lost: Vec<String> = layers
            .iter()
            .zip(&prints)
            .flat_map(|(l, p)| fingerprint_diff(p, &fingerprint(l)))
            .collect();
        let extra: Vec<_> = mounts()
            .into_iter()
            .filter(|m| !mounts_before.contains(&m.mount_id) && m.source != "idoverlay-state")
            .collect();
        let staging_left = fs::read_dir(&state)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name() != ".idoverlay-state")
                    .count()
            })
            .unwrap_or(0);
        let total = assembled.load(Ordering::Relaxed);
        let report = format!(
            "storm: {total} assemblies by {workers} workers in {:.1}s ({}), {} torn down busy, \
             files lost/changed: {}, mounts left: {}, staging left: {staging_left}, \
             children left: {}, fds left: {}",
            elapsed.as_secs_f64(),
            STRATEGIES
                .iter()
                .zip(&per_strategy)
                .map(|(s, n)| format!("{s} {}", n.load(Ordering::Relaxed)))
                .collect::<Vec<_>>()
                .join(", "),
            busy.load(Ordering::Relaxed),
            lost.len(),
            extra.len(),
            child_processes().len(),
            fds().difference(&fds_before).count(),
        );
        eprintln!("{report}");
        assert_eq!(total, workers * cycles);
        assert_eq!(
            busy.load(Ordering::Relaxed),
            total,
            "every teardown met a busy mount"
        );
        assert!(lost.is_empty(), "{report}\n{lost:#?}");
        assert!(extra.is_empty(), "{report}\n{extra:#?}");
        assert_eq!(staging_left, 0, "{report}");
        assert!(child_processes().is_empty(), "{report}");
        assert_eq!(fds(), fds_before, "{report}");
    });
}

#[test]
fn negative_control_the_rc5_algorithm_loses_files_and_the_harness_sees_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    in_private_ns("storm::negative_control", |s| {
        let dir = s.ext4_dir("e");
        // A throwaway copy: this algorithm destroys what it is given.
        let layers = make_rich_layers(&dir.join("throwaway")).dirs;
        let prints: Vec<_> = layers.iter().map(|l| fingerprint(l)).collect();
        let map: IdMap = "0:100000:65536".parse().unwrap();
        let userns = UserNamespace::from_maps(&map, &map).unwrap();
        let target = dir.join("rootfs");
        fs::create_dir(&target).unwrap();

        let temp =
            common::containerd_rc5::attach_temp_mounts(&layers, &dir.join("tmp-idmapped"), &userns)
                .unwrap();
        common::containerd_rc5::mount_overlay(&temp, &target).unwrap();
        assert_eq!(owner(&target.join("home/app")), (101000, 101000));
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::empty()).unwrap();
        // The load: a process busy inside one of the temporary mounts (a
        // pod's FIFO), so its unmount fails EBUSY.
        let holder = hold(&temp.mounts[2], "home/app/fifo", "etc/hostname");
        let failed = common::containerd_rc5::cleanup(&temp);
        release(holder);

        let lost: Vec<String> = layers
            .iter()
            .zip(&prints)
            .flat_map(|(l, p)| fingerprint_diff(p, &fingerprint(l)))
            .collect();
        eprintln!("negative control: {failed} unmount(s) failed with EBUSY; the harness sees {} path(s) lost or changed", lost.len());
        assert!(failed >= 1, "the unmount must have been made to fail");
        assert!(
            lost.iter().any(|d| d.starts_with("lost ")),
            "the harness must detect the rc.5 algorithm's data loss: {lost:#?}"
        );
        // Clean up what the old algorithm left: the still-attached mount.
        for m in &temp.mounts {
            let _ = rustix::mount::unmount(m.as_path(), rustix::mount::UnmountFlags::DETACH);
        }
    });
}
