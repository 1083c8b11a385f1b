//! No fd, process or mount left behind, on success and on failure.
//!
//! One test function on purpose: it counts this process's fds and child
//! processes, which other tests running in parallel threads would disturb.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::*;
use idoverlay::{IdMap, Overlay, Strategy, UserNamespace};

/// After `idoverlay::settle()`: no thread of idoverlay's is left (its
/// reaper and mounting threads close layer clones a moment after `mount`
/// returns), so every fd it opened is closed.
fn settled() -> BTreeSet<i32> {
    idoverlay::settle();
    let ours: Vec<String> = fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("idoverlay-"))
        .collect();
    assert!(ours.is_empty(), "threads left after settle(): {ours:?}");
    fds()
}

#[test]
fn no_fd_process_or_mount_left_behind() {
    in_private_ns("leaks::no_fd_process_or_mount_left_behind", |s| {
        let dir = s.tmpfs_dir("t");
        let layers = make_layers(&dir);
        let upper = dir.join("upper");
        let work = dir.join("work");
        let merged = dir.join("merged");
        for d in [&upper, &work, &merged] {
            mkdir(d, 0o755, 0, 0);
        }
        let map: IdMap = "0:100000:65536".parse().unwrap();
        let fds_before = fds();
        let mounts_before = mounts();

        // User namespaces from maps: the helper is always reaped.
        for _ in 0..20 {
            let ns = UserNamespace::from_maps(&map, &map).unwrap();
            assert!(
                child_processes().is_empty(),
                "helper left: {:?}",
                child_processes()
            );
            drop(ns);
        }
        // Namespace files that are not user namespaces, or missing.
        assert!(UserNamespace::open("/proc/self/ns/mnt").is_err());
        assert!(UserNamespace::open("/nonexistent").is_err());
        assert_eq!(fds(), fds_before, "fds after userns");
        assert!(child_processes().is_empty());

        // Full probes, with and without a named path.
        for _ in 0..3 {
            let report = idoverlay::probe::probe(std::slice::from_ref(&dir), None);
            assert!(report.strategy.is_some());
        }
        assert_eq!(fds(), fds_before, "fds after probes");
        assert!(child_processes().is_empty(), "after probes");
        assert_eq!(mounts(), mounts_before);

        // Successful mounts, attached and detached, with every strategy.
        let state = dir.join("state");
        for strategy in [
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
            Strategy::Auto,
        ] {
            for _ in 0..3 {
                let m = Overlay::new()
                    .lowers(layers.dirs.iter().cloned())
                    .upper(&upper)
                    .work(&work)
                    .idmap(map.clone(), map.clone())
                    .strategy(strategy)
                    .state_dir(&state)
                    .mount(&merged)
                    .unwrap();
                assert!(child_processes().is_empty());
                idoverlay::unmount_overlay(&m.target, false).unwrap();
                let d = Overlay::new()
                    .lowers(layers.dirs.iter().cloned())
                    .idmap(map.clone(), map.clone())
                    .strategy(strategy)
                    .state_dir(&state)
                    .assemble()
                    .unwrap();
                drop(d);
            }
        }
        // host-staged keeps its (empty) private state tmpfs; nothing else.
        let mounts_before: Vec<_> = mounts_before
            .into_iter()
            .chain(mounts().into_iter().filter(|m| m.mount_point == state))
            .collect();
        assert_eq!(settled(), fds_before, "fds after mounts");
        assert_eq!(mounts(), mounts_before);

        // Failures at every stage: bad layer, bad option, bad target,
        // nested layers (kernel refuses at create), missing work.
        let bad: Vec<Overlay> = vec![
            Overlay::new()
                .lower("/nonexistent")
                .idmap(map.clone(), map.clone()),
            Overlay::new()
                .lowers(layers.dirs.iter().cloned())
                .param("no_such_overlay_option", Some("1"))
                .idmap(map.clone(), map.clone()),
            Overlay::new()
                .lower(dir.clone())
                .lower(layers.dirs[0].clone())
                .idmap(map.clone(), map.clone()),
            Overlay::new()
                .lowers(layers.dirs.iter().cloned())
                .upper(&upper)
                .work(dir.join("missing-work"))
                .idmap(map.clone(), map.clone()),
        ];
        for overlay in &bad {
            assert!(overlay.mount(&merged).is_err(), "{overlay:?} should fail");
            assert!(overlay.mount(dir.join("no-target")).is_err());
        }
        assert_eq!(settled(), fds_before, "fds after failures");
        assert!(child_processes().is_empty());
        assert_eq!(mounts(), mounts_before);
    });
}
