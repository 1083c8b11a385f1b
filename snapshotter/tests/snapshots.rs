//! The snapshotter's core ([`Snapshots`]) called directly, from several
//! threads at once and with records and directories a crash or an operator
//! left: what a second client on the socket, or a node's history, can do.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::in_private_ns;
use idoverlay_snapshotter::store::Kind;
use idoverlay_snapshotter::{Error, Snapshots};

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn maps() -> BTreeMap<String, String> {
    ["uidmapping", "gidmapping"]
        .into_iter()
        .map(|k| {
            (
                format!("containerd.io/snapshot/{k}"),
                "0:100000:65536".to_string(),
            )
        })
        .collect()
}

/// A committed layer `name` with one file, on `parent`.
fn layer(s: &Snapshots, name: &str, parent: &str) {
    let key = format!("{name}-extract");
    s.create(Kind::Active, &key, parent, no_labels()).unwrap();
    let id = s.stat(&key).unwrap().id;
    std::fs::write(s.storage().upper_path(id).join(name), name).unwrap();
    s.commit(name, &key, no_labels()).unwrap();
}

#[test]
fn a_prepare_and_removes_of_its_key_at_once_never_deadlock() {
    // containerd serialises its own calls per key, but any root process on
    // the socket can send a Remove of a key while its Prepare runs. The
    // Prepare must hold the new snapshot's busy mark before its record is
    // visible: a Remove that took the mark first waits for the store lock
    // the Prepare holds while the Prepare waits for the mark.
    in_private_ns("prepare_remove_deadlock", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        let s = Arc::new(s);
        layer(&s, "l1", "");
        const ROUNDS: usize = 1000;
        const REMOVERS: usize = 3;
        let (tx, rx) = mpsc::channel();
        let worker = {
            let s = s.clone();
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let done = Arc::new(AtomicBool::new(false));
                    let removers: Vec<_> = (0..REMOVERS)
                        .map(|_| {
                            let (s, done) = (s.clone(), done.clone());
                            std::thread::spawn(move || {
                                while !done.load(Ordering::Acquire) {
                                    match s.remove("c") {
                                        Ok(()) => done.store(true, Ordering::Release),
                                        Err(Error::NotFound(_)) => std::thread::yield_now(),
                                        Err(e) => panic!("round {round}: remove: {e}"),
                                    }
                                }
                            })
                        })
                        .collect();
                    let made = s.create(Kind::Active, "c", "l1", maps());
                    if let Err(e) = &made {
                        done.store(true, Ordering::Release);
                        panic!("round {round}: prepare: {e}");
                    }
                    for r in removers {
                        r.join().unwrap();
                    }
                    tx.send(round).unwrap();
                }
            })
        };
        let mut finished = 0;
        while finished < ROUNDS {
            // Liveness, not speed: a round takes milliseconds; one that
            // has not ended in a minute never will.
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(_) => finished += 1,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("deadlock: round {finished} of {ROUNDS} has not ended in 60 s")
                }
            }
        }
        worker.join().unwrap();
        assert_eq!(finished, ROUNDS);
        assert!(matches!(s.stat("c"), Err(Error::NotFound(_))));
        assert_eq!(
            s.storage().mount_entries().unwrap().len(),
            0,
            "no mount point left"
        );
        let root = s.storage().root().to_path_buf();
        let left: Vec<_> = common::mountinfo::read_self()
            .unwrap()
            .into_iter()
            .filter(|m| m.mount_point.starts_with(&root))
            .collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
    });
}

#[test]
fn a_snapshot_deeper_than_overlayfs_stacks_is_refused_at_prepare() {
    // overlayfs stacks at most 500 lower layers. A Prepare on a parent
    // with 500 ancestors was accepted, and the child (whose chain the
    // store then took for a loop) could never be removed or mounted.
    in_private_ns("deeper_than_overlayfs_stacks", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        let mut parent = String::new();
        for i in 1..=500 {
            let name = format!("l{i}");
            layer(&s, &name, &parent);
            parent = name;
        }
        // 500 lower layers: the most there can be, and it works.
        s.create(Kind::Active, "deepest", "l500", no_labels())
            .unwrap();
        let mounts = s.mounts("deepest").unwrap();
        let lowers = mounts[0]
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .expect("lowerdir");
        assert_eq!(lowers.split(':').count(), 500, "{lowers}");
        s.commit("l501", "deepest", no_labels()).unwrap();
        let dirs = s.storage().snapshot_entries().unwrap().len();
        for kind in [Kind::Active, Kind::View] {
            for labels in [no_labels(), maps()] {
                match s.create(kind, "too-deep", "l501", labels) {
                    Err(Error::FailedPrecondition(msg)) => {
                        assert!(msg.contains("501 layers") && msg.contains("500"), "{msg}")
                    }
                    other => panic!("{kind:?} on 501 layers: {other:?}"),
                }
                assert!(matches!(s.stat("too-deep"), Err(Error::NotFound(_))));
                assert_eq!(s.storage().snapshot_entries().unwrap().len(), dirs);
            }
        }
        // The chain stays whole: its top can still be removed.
        s.remove("l501").unwrap();
    });
}

#[test]
fn a_snapshot_whose_directory_is_gone_can_be_removed() {
    // An operator's rm, or a filesystem repaired after a crash: `check`
    // reports the record, and Remove must be able to take it away.
    in_private_ns("directory_gone", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        layer(&s, "l1", "");
        for (key, labels) in [("plain", no_labels()), ("idmapped", maps())] {
            s.create(Kind::Active, key, "l1", labels).unwrap();
            let id = s.stat(key).unwrap().id;
            let mount = s.storage().mount_path(id);
            if mount.exists() {
                common::run(std::process::Command::new("umount").arg(&mount));
            }
            std::fs::remove_dir_all(s.storage().snapshot_path(id)).unwrap();
            s.remove(key)
                .unwrap_or_else(|e| panic!("{key} without its directory: {e}"));
            assert!(matches!(s.stat(key), Err(Error::NotFound(_))));
            assert!(!mount.exists(), "{key}: its mount point went too");
        }
        assert_eq!(
            s.storage().snapshot_entries().unwrap(),
            vec![std::ffi::OsString::from(
                s.stat("l1").unwrap().id.to_string()
            )]
        );
    });
}
