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

/// `f("a")` and `f("b")`, each on its own thread, released together;
/// their results in that order.
fn both_at_once<T: Send + 'static>(
    f: impl Fn(&'static str) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let (f, barrier) = (Arc::new(f), Arc::new(std::sync::Barrier::new(2)));
    ["a", "b"]
        .map(|key| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                f(key)
            })
        })
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect()
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

#[test]
fn two_first_starts_at_once_keep_every_snapshot_either_made() {
    // Two starts (or a start and a `check`) on a root without a store:
    // each either fails to open it or keeps what it made. A second start
    // used to remove the first's half-made store and link its own, so the
    // first served from an unlinked file: what it made was gone at the
    // next start, and that start removed its directories.
    in_private_ns("two_first_starts", |scratch| {
        let mut both_opened_rounds = 0;
        for round in 0..200 {
            let root = scratch.join(format!("root-{round}"));
            let made = {
                let root = root.clone();
                both_at_once(move |key| {
                    let (s, _) = Snapshots::open(&root).ok()?;
                    s.create(Kind::Active, key, "", no_labels()).ok()?;
                    Some(key.to_string())
                })
            };
            let made: Vec<String> = made.into_iter().flatten().collect();
            assert!(!made.is_empty(), "round {round}: neither start worked");
            both_opened_rounds += usize::from(made.len() == 2);
            let (s, _) = Snapshots::open(&root).unwrap();
            for key in &made {
                let record = s
                    .stat(key)
                    .unwrap_or_else(|e| panic!("round {round}: {key} made, then lost: {e}"));
                assert!(s.storage().upper_path(record.id).is_dir());
            }
            assert!(!root.join("metadata.redb.new").exists());
        }
        // Both can open in turn (the first done before the second starts);
        // what matters is that neither loses what it made.
        eprintln!("rounds where both made their snapshot: {both_opened_rounds}");
    });
}

#[test]
fn of_two_commits_to_one_name_the_refused_one_keeps_its_overlay() {
    // The refused Commit must change nothing: its snapshot stays active
    // with its overlay attached (a running container's rootfs). Both
    // passed the name check, both took their overlays down, and only then
    // did one find the name taken.
    in_private_ns("two_commits_one_name", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        layer(&s, "l1", "");
        let s = Arc::new(s);
        for round in 0..200 {
            for key in ["a", "b"] {
                s.create(Kind::Active, key, "l1", maps()).unwrap();
            }
            let results = {
                let s = s.clone();
                both_at_once(move |key| (key, s.commit("c", key, no_labels())))
            };
            let mut refused = 0;
            for (key, result) in results {
                match result {
                    Ok(()) => {}
                    Err(Error::AlreadyExists(_)) => {
                        refused += 1;
                        let record = s.stat(key).unwrap();
                        assert_eq!(record.kind, Kind::Active, "round {round}: {key}");
                        let at = s.storage().mount_path(record.id);
                        assert_eq!(
                            common::mounted_type(&at).as_deref(),
                            Some("overlay"),
                            "round {round}: the refused commit of {key} took its overlay down"
                        );
                        s.remove(key).unwrap();
                    }
                    Err(e) => panic!("round {round}: commit of {key}: {e}"),
                }
            }
            assert_eq!(refused, 1, "round {round}");
            s.remove("c").unwrap();
        }
    });
}

#[test]
fn usage_of_a_snapshot_removed_meanwhile_is_not_found() {
    // Usage takes no busy mark: a Remove may delete the tree it counts.
    // containerd expects NotFound then, not an I/O error.
    in_private_ns("usage_beside_remove", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        let s = Arc::new(s);
        let mut other = Vec::new();
        for round in 0..300 {
            s.create(Kind::Active, "u", "", no_labels()).unwrap();
            let fs = s.storage().upper_path(s.stat("u").unwrap().id);
            for d in 0..20 {
                std::fs::create_dir_all(fs.join(format!("d{d}/e/f"))).unwrap();
            }
            let counter = {
                let s = s.clone();
                std::thread::spawn(move || loop {
                    match s.usage("u") {
                        Ok(_) => std::thread::yield_now(),
                        Err(Error::NotFound(_)) => return None,
                        Err(e) => return Some(format!("round {round}: {e}")),
                    }
                })
            };
            s.remove("u").unwrap();
            other.extend(counter.join().unwrap());
        }
        assert!(
            other.is_empty(),
            "{} errors: {:?}",
            other.len(),
            other.first()
        );
    });
}

#[test]
fn usage_counts_a_file_with_hard_links_once() {
    // As containerd's fs.DiskUsage (and du): each inode once.
    in_private_ns("usage_hard_links", |scratch| {
        // On ext4, where fs itself has blocks to count.
        let (s, _) = Snapshots::open(&common::ext4_dir(scratch, "ext4").join("root")).unwrap();
        s.create(Kind::Active, "h", "", no_labels()).unwrap();
        let fs = s.storage().upper_path(s.stat("h").unwrap().id);
        std::fs::write(fs.join("file"), vec![1u8; 1 << 20]).unwrap();
        let (one_size, one_inodes) = s.usage("h").unwrap();
        std::fs::create_dir(fs.join("dir")).unwrap();
        for i in 0..9 {
            std::fs::hard_link(fs.join("file"), fs.join(format!("dir/link{i}"))).unwrap();
        }
        let (size, inodes) = s.usage("h").unwrap();
        assert_eq!(one_inodes, 2, "fs and the file");
        assert!(one_size >= 1 << 20, "{one_size}");
        assert_eq!(inodes, 3, "fs, the file (ten names), dir");
        // Each inode's blocks once, fs's own included (containerd's walk
        // starts at the root, as du does).
        let blocks = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(p).unwrap().blocks() as i64 * 512
        };
        let each = blocks(&fs) + blocks(&fs.join("file")) + blocks(&fs.join("dir"));
        assert_eq!(
            size, each,
            "the file counted more than once, or fs not at all"
        );
        s.commit("hc", "h", no_labels()).unwrap();
        assert_eq!(s.usage("hc").unwrap().1, 3, "what Commit recorded");
    });
}

#[test]
fn usage_counts_every_name_of_a_directory_of_more_than_a_million() {
    // A container's directory of millions of files: every one counted
    // (Usage read at most 2^20 names a directory before, so a pod could
    // put the rest of its disk use past them, out of an eviction's sight).
    in_private_ns("usage_million_names", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        s.create(Kind::Active, "m", "", no_labels()).unwrap();
        let fs = s.storage().upper_path(s.stat("m").unwrap().id);
        let many = (1 << 20) + 1000;
        let dir = fs.join("many");
        std::fs::create_dir(&dir).unwrap();
        let dir = std::fs::File::open(&dir).unwrap();
        for i in 0..many {
            let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE;
            let mode = rustix::fs::Mode::from_raw_mode(0o644);
            rustix::fs::openat(&dir, format!("{i:x}"), flags, mode).unwrap();
        }
        let (_, inodes) = s.usage("m").unwrap();
        assert_eq!(inodes, many + 2, "fs, many, and each of its names");
        s.remove("m").unwrap();
    });
}

#[test]
fn usage_of_a_tree_deeper_than_a_walk_holds_fds_for_counts_each_name_once() {
    // Levels above the deepest 256 give their fd up while the walk is
    // below them and go on from where they were: each of their names,
    // before and after the one walked into, is counted once.
    in_private_ns("usage_deep_wide", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        s.create(Kind::Active, "d", "", no_labels()).unwrap();
        let mut dir = s.storage().upper_path(s.stat("d").unwrap().id);
        let (depth, files) = (400, 30);
        for _ in 0..depth {
            for f in 0..files {
                std::fs::write(dir.join(format!("f{f}")), b"").unwrap();
            }
            dir.push("d");
            std::fs::create_dir(&dir).unwrap();
        }
        // A walk that went on from a level's start would walk it for ever.
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || done.send(s.usage("d").unwrap()).unwrap());
        let (_, inodes) = result
            .recv_timeout(Duration::from_secs(60))
            .expect("Usage returns");
        assert_eq!(
            inodes,
            1 + depth * (files + 1),
            "fs, and each level's files and d"
        );
    });
}

#[test]
fn a_commit_to_a_name_being_given_waits_and_then_finds_it() {
    // containerd's unpack commits each layer to its chain id; on
    // AlreadyExists it takes the layer as there and prepares the next one
    // on it. So AlreadyExists must mean the name exists: a second Commit
    // to a name another Commit is giving waits for that one.
    in_private_ns("commit_name_being_given", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        layer(&s, "l1", "");
        let s = Arc::new(s);
        let mut wrong = Vec::new();
        for round in 0..50 {
            for key in ["a", "b"] {
                s.create(Kind::Active, key, "l1", no_labels()).unwrap();
            }
            // A tree the first Commit takes a while to count.
            let fs = s.storage().upper_path(s.stat("a").unwrap().id);
            for d in 0..20 {
                std::fs::create_dir(fs.join(format!("d{d}"))).unwrap();
                for f in 0..500 {
                    std::fs::write(fs.join(format!("d{d}/f{f}")), b"x").unwrap();
                }
            }
            let first = {
                let s = s.clone();
                std::thread::spawn(move || s.commit("chain", "a", no_labels()))
            };
            std::thread::sleep(Duration::from_millis(2));
            if let Err(Error::AlreadyExists(_)) = s.commit("chain", "b", no_labels()) {
                // What containerd does next: use the layer.
                if let Err(e) = s.stat("chain") {
                    wrong.push(format!("round {round}: AlreadyExists, then stat: {e}"));
                }
                match s.create(Kind::Active, "next", "chain", no_labels()) {
                    Ok(_) => s.remove("next").unwrap(),
                    Err(e) => {
                        wrong.push(format!("round {round}: AlreadyExists, then prepare: {e}"))
                    }
                }
            }
            let first = first.join().unwrap();
            for key in ["a", "b"] {
                let _ = s.remove(key);
            }
            assert!(
                first.is_ok() || matches!(first, Err(Error::AlreadyExists(_))),
                "round {round}: {first:?}"
            );
            s.remove("chain").unwrap();
        }
        assert!(
            wrong.is_empty(),
            "{} wrong: {:?}",
            wrong.len(),
            wrong.first()
        );
    });
}

#[test]
fn removing_a_removal_name_that_is_gone_is_done() {
    // Cleanup lists rm-N, then a Remove finishes deleting it: done, not
    // a "could not remove" in the cleanup's report.
    in_private_ns("removal_name_gone", |scratch| {
        let (s, _) = Snapshots::open(&scratch.join("root")).unwrap();
        s.storage()
            .remove_dir(std::ffi::OsStr::new("rm-12345"))
            .unwrap();
        assert!(s.storage().snapshot_entries().unwrap().is_empty());
    });
}
