//! The snapshotter binary driven over its unix socket with containerd's
//! own snapshots API (the generated client), in a private mount namespace:
//! what containerd would see, and what is on disk and in mountinfo.

mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{chown, symlink};
use std::path::Path;
use std::process::Command;

use common::{block_on, in_private_ns, mounted_type, owner, run, Snapshotter};
use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{transport::Channel, Code};

type Client = SnapshotsClient<Channel>;

const UIDMAP: &str = "containerd.io/snapshot/uidmapping";
const GIDMAP: &str = "containerd.io/snapshot/gidmapping";

fn maps(uid: &str, gid: &str) -> HashMap<String, String> {
    [(UIDMAP, uid), (GIDMAP, gid)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(
    c: &mut Client,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<Vec<Mount>, Code> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels,
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn view(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, Code> {
    c.view(ViewSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), Code> {
    c.commit(CommitSnapshotRequest {
        snapshotter: String::new(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|_| ())
    .map_err(|s| s.code())
}

async fn remove(c: &mut Client, key: &str) -> Result<(), (Code, String)> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|_| ())
    .map_err(|s| (s.code(), s.message().to_string()))
}

async fn stat(c: &mut Client, key: &str) -> Result<Info, Code> {
    c.stat(StatSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.unwrap())
    .map_err(|s| s.code())
}

async fn mounts(c: &mut Client, key: &str) -> Result<Vec<Mount>, Code> {
    c.mounts(MountsRequest {
        snapshotter: String::new(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().mounts)
    .map_err(|s| s.code())
}

async fn list(c: &mut Client, filters: &[&str]) -> Vec<String> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    names.sort();
    names
}

fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        r#type: kind.into(),
        source: source.into(),
        target: String::new(),
        options: options.iter().map(|s| s.to_string()).collect(),
    }
}

fn index_off() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

/// Two committed layers like an image's: busybox-ish files owned by 0, and
/// files owned by 0 and 1000. Returns the top layer's name.
async fn two_layers(c: &mut Client, root: &Path) -> String {
    prepare(c, "l1-extract", "", HashMap::new()).await.unwrap();
    let fs1 = root.join("snapshots/1/fs");
    fs::create_dir(fs1.join("bin")).unwrap();
    fs::write(fs1.join("bin/tool"), b"tool").unwrap();
    commit(c, "l1", "l1-extract").await.unwrap();
    prepare(c, "l2-extract", "l1", HashMap::new())
        .await
        .unwrap();
    let fs2 = root.join("snapshots/2/fs");
    fs::create_dir(fs2.join("data")).unwrap();
    fs::write(fs2.join("data/root-file"), b"root").unwrap();
    fs::write(fs2.join("data/user-file"), b"user").unwrap();
    chown(fs2.join("data/user-file"), Some(1000), Some(1000)).unwrap();
    commit(c, "l2", "l2-extract").await.unwrap();
    "l2".into()
}

#[test]
fn plain_lifecycle_as_containerd_overlayfs() {
    in_private_ns("plain_lifecycle_as_containerd_overlayfs", |scratch| {
        let snap = Snapshotter::start(scratch);
        let root = snap.root.clone();
        let r = |p: &str| root.join(p).display().to_string();
        block_on(async {
            let mut c = snap.client().await;
            // A snapshot without parents: a bind of its fs, as containerd does.
            let m = prepare(&mut c, "a", "", HashMap::new()).await.unwrap();
            assert_eq!(
                m,
                vec![mount("bind", &r("snapshots/1/fs"), &["rw", "rbind"])]
            );
            fs::write(root.join("snapshots/1/fs/file"), b"hello").unwrap();
            commit(&mut c, "c1", "a").await.unwrap();
            assert_eq!(
                stat(&mut c, "c1").await.unwrap().kind,
                Kind::Committed as i32
            );
            assert_eq!(stat(&mut c, "a").await, Err(Code::NotFound));
            // On one parent: overlay, in containerd's option order.
            let mut want = vec![
                format!("workdir={}", r("snapshots/2/work")),
                format!("upperdir={}", r("snapshots/2/fs")),
                format!("lowerdir={}", r("snapshots/1/fs")),
            ];
            if index_off() {
                want.push("index=off".into());
            }
            let want_ref: Vec<&str> = want.iter().map(String::as_str).collect();
            let m = prepare(&mut c, "b", "c1", HashMap::new()).await.unwrap();
            assert_eq!(m, vec![mount("overlay", "overlay", &want_ref)]);
            assert_eq!(mounts(&mut c, "b").await.unwrap(), m);
            // A view of one layer: a read-only bind of that layer.
            let v = view(&mut c, "v", "c1").await.unwrap();
            assert_eq!(
                v,
                vec![mount("bind", &r("snapshots/1/fs"), &["ro", "rbind"])]
            );
            // The codes containerd relies on.
            assert_eq!(
                prepare(&mut c, "b", "c1", HashMap::new()).await,
                Err(Code::AlreadyExists)
            );
            // An active parent: as containerd's own storage (bolt.go,
            // "parent is not committed snapshot", ErrInvalidArgument).
            assert_eq!(
                prepare(&mut c, "x", "b", HashMap::new()).await,
                Err(Code::InvalidArgument)
            );
            assert_eq!(
                prepare(&mut c, "x", "nope", HashMap::new()).await,
                Err(Code::NotFound)
            );
            assert_eq!(commit(&mut c, "c1", "b").await, Err(Code::AlreadyExists));
            assert_eq!(
                commit(&mut c, "c2", "v").await,
                Err(Code::FailedPrecondition)
            );
            assert_eq!(
                remove(&mut c, "c1").await.unwrap_err().0,
                Code::FailedPrecondition
            );
            assert_eq!(
                prepare(&mut c, "y", "", maps("0:1:1", "nonsense")).await,
                Err(Code::InvalidArgument)
            );
            // Labels longer than containerd allows (key and value 4,096
            // bytes together): refused by Prepare, Commit and Update alike,
            // and nothing made or changed.
            let entries = || fs::read_dir(root.join("snapshots")).unwrap().count();
            let before = entries();
            let long = |n: usize| -> HashMap<String, String> {
                [("containerd.io/k".to_string(), "v".repeat(n - 15))].into()
            };
            prepare(&mut c, "at-limit", "", long(4096)).await.unwrap();
            remove(&mut c, "at-limit").await.unwrap();
            assert_eq!(
                prepare(&mut c, "y", "", long(4097)).await,
                Err(Code::InvalidArgument)
            );
            let committed = c
                .commit(CommitSnapshotRequest {
                    snapshotter: String::new(),
                    name: "c-long".into(),
                    key: "b".into(),
                    labels: long(4097),
                })
                .await;
            assert_eq!(committed.unwrap_err().code(), Code::InvalidArgument);
            assert_eq!(stat(&mut c, "b").await.unwrap().kind, Kind::Active as i32);
            let mut info = stat(&mut c, "c1").await.unwrap();
            info.labels.extend(long(4097));
            let updated = c
                .update(UpdateSnapshotRequest {
                    snapshotter: String::new(),
                    info: Some(info),
                    update_mask: None,
                })
                .await;
            assert_eq!(updated.unwrap_err().code(), Code::InvalidArgument);
            assert!(stat(&mut c, "c1").await.unwrap().labels.is_empty());
            assert_eq!(stat(&mut c, "y").await, Err(Code::NotFound));
            assert_eq!(entries(), before, "a refused request made a directory");
            // Update, List with filters, Usage.
            let mut info = stat(&mut c, "c1").await.unwrap();
            info.labels
                .insert("containerd.io/gc.root".into(), "x".into());
            c.update(UpdateSnapshotRequest {
                snapshotter: String::new(),
                info: Some(info),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.containerd.io/gc.root".into()],
                }),
            })
            .await
            .unwrap();
            assert_eq!(
                stat(&mut c, "c1").await.unwrap().labels["containerd.io/gc.root"],
                "x"
            );
            assert_eq!(list(&mut c, &[]).await, vec!["b", "c1", "v"]);
            assert_eq!(
                list(&mut c, &["kind==active", "kind==view"]).await,
                vec!["b", "v"]
            );
            assert_eq!(
                list(&mut c, &[r#"labels."containerd.io/gc.root""#]).await,
                vec!["c1"]
            );
            let usage = c
                .usage(UsageRequest {
                    snapshotter: String::new(),
                    key: "c1".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(usage.inodes, 2, "fs and its one file");
            // Removal, children first; the directories go with them.
            remove(&mut c, "b").await.unwrap();
            remove(&mut c, "v").await.unwrap();
            remove(&mut c, "c1").await.unwrap();
            assert_eq!(remove(&mut c, "c1").await.unwrap_err().0, Code::NotFound);
            c.cleanup(CleanupRequest {
                snapshotter: String::new(),
            })
            .await
            .unwrap();
        });
        assert_eq!(fs::read_dir(root.join("snapshots")).unwrap().count(), 0);
        snap.stop();
    });
}

#[test]
fn idmapped_overlay_attached_and_taken_down() {
    in_private_ns("idmapped_overlay_attached_and_taken_down", |scratch| {
        let snap = Snapshotter::start(scratch);
        let root = snap.root.clone();
        block_on(async {
            let mut c = snap.client().await;
            let top = two_layers(&mut c, &root).await;
            let before = layers(&root);
            // Several ranges, as containerd 2.x writes them.
            let m = prepare(
                &mut c,
                "ctr",
                &top,
                maps("0:100000:1000,1000:201000:64536", "0:100000:65536"),
            )
            .await
            .unwrap();
            let target = root.join("mounts/3");
            assert_eq!(
                m,
                vec![mount(
                    "bind",
                    &target.display().to_string(),
                    &["rw", "rbind"]
                )]
            );
            assert_eq!(mounted_type(&target).as_deref(), Some("overlay"));
            assert_eq!(owner(&target.join("data/root-file")), "100000:100000");
            assert_eq!(owner(&target.join("data/user-file")), "201000:101000");
            assert_eq!(owner(&target.join("bin/tool")), "100000:100000");
            assert_eq!(
                owner(&root.join("snapshots/3/fs")),
                "100000:100000",
                "upper root"
            );
            // No idmapped mount is attached anywhere: the layers' clones
            // were handed to overlay as fds (or, on older kernels, lived in
            // a private namespace only).
            let mountinfo = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            assert!(
                !mountinfo
                    .lines()
                    .any(|l| l.split(' ').nth(5).unwrap().contains("idmapped")),
                "{mountinfo}"
            );
            // The overlay's entry names its upper and work dirs as they are
            // (6.13+ takes them by fd and records their paths), so tools
            // that read overlay options find the snapshot's upper.
            let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
            let mut version = release
                .split(['.', '-'])
                .map(|n| n.parse::<u32>().unwrap_or(0));
            if (version.next().unwrap(), version.next().unwrap()) >= (6, 13) {
                let target_str = target.display().to_string();
                let entry = mountinfo
                    .lines()
                    .find(|l| l.split(' ').nth(4) == Some(target_str.as_str()))
                    .unwrap_or_else(|| panic!("no line for {target_str}: {mountinfo}"));
                for dir in ["snapshots/3/fs", "snapshots/3/work"] {
                    let shown = format!("={},", root.join(dir).display());
                    assert!(entry.contains(&shown), "{dir}: {entry}");
                }
            }
            // Writes land in the upper, in host ids; the layers are untouched.
            fs::write(target.join("data/new"), b"new").unwrap();
            assert_eq!(
                fs::read(root.join("snapshots/3/fs/data/new")).unwrap(),
                b"new"
            );
            assert_eq!(layers(&root), before, "the layers changed");
            assert_eq!(mounts(&mut c, "ctr").await.unwrap(), m);
            // Commit takes the overlay down first.
            commit(&mut c, "committed", "ctr").await.unwrap();
            assert_eq!(mounted_type(&target), None);
            assert!(!target.exists());
            // A view with maps is a read-only idmapped overlay.
            let v = view_with_maps(&mut c, "ro", &top).await;
            let vt = root.join("mounts/4");
            assert_eq!(
                v,
                vec![mount("bind", &vt.display().to_string(), &["ro", "rbind"])]
            );
            assert_eq!(owner(&vt.join("data/user-file")), "101000:101000");
            assert!(fs::write(vt.join("data/x"), b"x").is_err(), "read-only");
            // Remove takes the overlay down and deletes the directories.
            remove(&mut c, "ro").await.unwrap();
            assert_eq!(mounted_type(&vt), None);
            assert!(!root.join("snapshots/4").exists());
            assert!(!vt.exists());
        });
        snap.stop();
    });
}

/// Paths, owners, modes, sizes and contents of the two layers, sorted.
fn layers(root: &Path) -> Vec<String> {
    let out = run(Command::new("find")
        .arg(root.join("snapshots/1"))
        .arg(root.join("snapshots/2"))
        .args(["-printf", "%p %U:%G %m %s\n"]));
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| {
            let path = l.split(' ').next().unwrap();
            match fs::read(path) {
                Ok(bytes) => format!("{l} {bytes:?}"),
                Err(_) => l.to_string(),
            }
        })
        .collect();
    lines.sort();
    lines
}

async fn view_with_maps(c: &mut Client, key: &str, parent: &str) -> Vec<Mount> {
    c.view(ViewSnapshotRequest {
        snapshotter: String::new(),
        key: key.into(),
        parent: parent.into(),
        labels: maps("0:100000:65536", "0:100000:65536"),
    })
    .await
    .unwrap()
    .into_inner()
    .mounts
}

#[test]
fn planted_bind_mount_is_refused_and_nothing_deleted() {
    in_private_ns(
        "planted_bind_mount_is_refused_and_nothing_deleted",
        |scratch| {
            let precious = scratch.join("precious");
            fs::create_dir_all(precious.join("deep")).unwrap();
            fs::write(precious.join("file"), b"precious").unwrap();
            fs::write(precious.join("deep/file"), b"deep").unwrap();
            let snap = Snapshotter::start(scratch);
            let root = snap.root.clone();
            block_on(async {
                let mut c = snap.client().await;
                prepare(&mut c, "p", "", HashMap::new()).await.unwrap();
                let fs_dir = root.join("snapshots/1/fs");
                fs::create_dir(fs_dir.join("hostpath")).unwrap();
                fs::write(fs_dir.join("mine"), b"mine").unwrap();
                run(Command::new("mount")
                    .arg("--bind")
                    .arg(&precious)
                    .arg(fs_dir.join("hostpath")));
                // A file bind mount too: no directory to open, found by
                // statx's mount-root attribute.
                fs::write(fs_dir.join("hostfile"), b"").unwrap();
                run(Command::new("mount")
                    .arg("--bind")
                    .arg(precious.join("file"))
                    .arg(fs_dir.join("hostfile")));
                let (code, msg) = remove(&mut c, "p").await.unwrap_err();
                assert_eq!(code, Code::FailedPrecondition);
                for planted in ["hostpath", "hostfile"] {
                    assert!(
                        msg.contains(&fs_dir.join(planted).display().to_string()),
                        "{msg}"
                    );
                }
                assert_eq!(fs::read(precious.join("deep/file")).unwrap(), b"deep");
                assert_eq!(fs::read(precious.join("file")).unwrap(), b"precious");
                assert_eq!(
                    fs::read(fs_dir.join("mine")).unwrap(),
                    b"mine",
                    "nothing removed at all"
                );
                assert_eq!(
                    stat(&mut c, "p").await.unwrap().name,
                    "p",
                    "still a snapshot"
                );
                // A snapshot too big for the walk is checked against the
                // mount table: refused all the same.
                fs::create_dir(fs_dir.join("many")).unwrap();
                for i in 0..idoverlay_snapshotter::remove::CHECK_ENTRIES {
                    fs::write(fs_dir.join(format!("many/{i}")), b"").unwrap();
                }
                let (code, msg) = remove(&mut c, "p").await.unwrap_err();
                assert_eq!(code, Code::FailedPrecondition);
                assert!(
                    msg.contains(&fs_dir.join("hostpath").display().to_string()),
                    "{msg}"
                );
                assert_eq!(fs::read(fs_dir.join("mine")).unwrap(), b"mine");
                run(Command::new("umount").arg(fs_dir.join("hostpath")));
                run(Command::new("umount").arg(fs_dir.join("hostfile")));
                remove(&mut c, "p").await.unwrap();
                assert!(!root.join("snapshots/1").exists());
            });
            assert_eq!(fs::read(precious.join("deep/file")).unwrap(), b"deep");
            assert!(snap
                .log_text()
                .contains("refusing to remove snapshot p: mounted inside it"));
            snap.stop();
        },
    );
}

#[test]
fn restart_after_kill_finds_its_overlays_and_cleans_the_rest() {
    in_private_ns(
        "restart_after_kill_finds_its_overlays_and_cleans_the_rest",
        |scratch| {
            let snap = Snapshotter::start(scratch);
            let root = snap.root.clone();
            let target = root.join("mounts/3");
            block_on(async {
                let mut c = snap.client().await;
                let top = two_layers(&mut c, &root).await;
                prepare(
                    &mut c,
                    "live",
                    &top,
                    maps("0:100000:65536", "0:100000:65536"),
                )
                .await
                .unwrap();
                fs::write(target.join("data/written"), b"before the crash").unwrap();
            });
            snap.kill9();
            // What a kill at other points leaves: a directory being made, one
            // renamed into place whose record was never committed, one being
            // removed. Plus a name the snapshotter never makes, a symlink out
            // of a leftover, and a mount where no snapshot's overlay goes that
            // is no overlay (so not the snapshotter's: left alone).
            let outside = scratch.join("outside");
            fs::create_dir(&outside).unwrap();
            fs::write(outside.join("keep"), b"keep").unwrap();
            for d in [
                "snapshots/new-1-2-3/fs/a/b",
                "snapshots/999/fs/x",
                "snapshots/rm-7/fs",
                "mounts/77",
                "snapshots/keepme",
            ] {
                fs::create_dir_all(root.join(d)).unwrap();
            }
            fs::write(root.join("snapshots/999/fs/x/file"), b"orphan").unwrap();
            symlink(&outside, root.join("snapshots/new-1-2-3/fs/a/link")).unwrap();
            run(Command::new("mount")
                .args(["-t", "tmpfs", "stray"])
                .arg(root.join("mounts/77")));
            let snap = Snapshotter::start(scratch);
            assert!(
                snap.log_text().contains(
                    "found 1 idmapped overlay(s) again; cleaned 3 director(ies) and 0 mount(s)"
                ),
                "{}",
                snap.log_text()
            );
            assert!(
                snap.log_text()
                    .contains("holds a mount that is not an overlay"),
                "{}",
                snap.log_text()
            );
            assert_eq!(
                mounted_type(&root.join("mounts/77")).as_deref(),
                Some("tmpfs")
            );
            run(Command::new("umount").arg(root.join("mounts/77")));
            fs::remove_dir(root.join("mounts/77")).unwrap();
            for gone in ["snapshots/new-1-2-3", "snapshots/999", "snapshots/rm-7"] {
                assert!(!root.join(gone).exists(), "{gone} left");
            }
            assert!(
                root.join("snapshots/keepme").exists(),
                "not a name it makes: left alone"
            );
            assert_eq!(
                fs::read(outside.join("keep")).unwrap(),
                b"keep",
                "symlink not followed"
            );
            assert_eq!(mounted_type(&target).as_deref(), Some("overlay"));
            assert_eq!(
                fs::read(target.join("data/written")).unwrap(),
                b"before the crash"
            );
            block_on(async {
                let mut c = snap.client().await;
                let m = mounts(&mut c, "live").await.unwrap();
                assert_eq!(m[0].source, target.display().to_string());
            });
            snap.stop();
            // The offline check agrees, naming the one thing left (keepme).
            let out = Command::new(env!("CARGO_BIN_EXE_idoverlay-snapshotter"))
                .arg("--root")
                .arg(&root)
                .arg("check")
                .output()
                .unwrap();
            let report = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(1), "{report}");
            assert!(report.contains("snapshots/keepme: leftover"), "{report}");
            assert_eq!(
                report.matches("leftover").count() + report.matches("no snapshot").count(),
                1,
                "{report}"
            );
            fs::remove_dir(root.join("snapshots/keepme")).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_idoverlay-snapshotter"))
                .arg("--root")
                .arg(&root)
                .arg("check")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
            // After a reboot (the overlay gone), Mounts assembles it again.
            idoverlay::unmount_overlay(&target, false).unwrap();
            let snap = Snapshotter::start(scratch);
            block_on(async {
                let mut c = snap.client().await;
                mounts(&mut c, "live").await.unwrap();
            });
            assert_eq!(
                fs::read(target.join("data/written")).unwrap(),
                b"before the crash"
            );
            snap.stop();
        },
    );
}

/// `depth` nested directories `d` in `top`, made by fd (deeper than a
/// path can name), and a file of `bytes` at the bottom.
fn deep_chain(top: &Path, depth: usize, bytes: usize) {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    let mut dir = openat(
        rustix::fs::CWD,
        top,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..depth {
        mkdirat(&dir, "d", Mode::from_raw_mode(0o755)).unwrap();
        dir = openat(&dir, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let file = openat(
        &dir,
        "bottom",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&file, &vec![7u8; bytes]).unwrap();
}

#[test]
fn a_tree_deeper_than_a_walk_holds_fds_for_is_counted_and_removed_whole() {
    // A container can make one in its rootfs (`mkdir d; cd d` in a loop):
    // Usage must count all of it, and Remove delete all of it.
    in_private_ns("deep_tree", |scratch| {
        let snap = Snapshotter::start(scratch);
        let root = snap.root.clone();
        block_on(async {
            let mut c = snap.client().await;
            prepare(&mut c, "deep", "", HashMap::new()).await.unwrap();
            let depth = 5000; // more than any fixed limit a walk of one fd per level had (4096)
            deep_chain(&root.join("snapshots/1/fs"), depth, 1 << 20);
            let usage = c
                .usage(UsageRequest {
                    snapshotter: String::new(),
                    key: "deep".into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(usage.inodes, depth as i64 + 2, "fs, the chain, the file");
            assert!(usage.size >= 1 << 20, "{usage:?}");
            remove(&mut c, "deep").await.unwrap();
            assert_eq!(stat(&mut c, "deep").await, Err(Code::NotFound));
        });
        let left: Vec<_> = fs::read_dir(root.join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        snap.stop();
    });
}

#[test]
fn a_foreign_mount_where_an_overlay_goes_is_neither_stacked_on_nor_taken_down() {
    // Only overlays are ever attached at ROOT/mounts/ID: anything else
    // there (a bind planted after a reboot took the overlay) is not ours.
    in_private_ns("foreign_mount_point", |scratch| {
        let precious = scratch.join("precious");
        fs::create_dir_all(&precious).unwrap();
        fs::write(precious.join("file"), b"precious").unwrap();
        let snap = Snapshotter::start(scratch);
        let root = snap.root.clone();
        block_on(async {
            let mut c = snap.client().await;
            let top = two_layers(&mut c, &root).await;
            let m = prepare(
                &mut c,
                "ctr",
                &top,
                maps("0:100000:65536", "0:100000:65536"),
            )
            .await
            .unwrap();
            let target = root.join("mounts/3");
            assert_eq!(mounted_type(&target).as_deref(), Some("overlay"));
            run(Command::new("umount").arg(&target));
            run(Command::new("mount")
                .arg("--bind")
                .arg(&precious)
                .arg(&target));
            assert_eq!(mounts(&mut c, "ctr").await, Err(Code::FailedPrecondition));
            let (code, msg) = remove(&mut c, "ctr").await.unwrap_err();
            assert_eq!(code, Code::FailedPrecondition, "{msg}");
            assert!(msg.contains(&target.display().to_string()), "{msg}");
            let table = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            let at_target: Vec<&str> = table
                .lines()
                .filter(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
                .collect();
            assert_eq!(at_target.len(), 1, "nothing stacked on it: {at_target:?}");
            assert_eq!(fs::read(target.join("file")).unwrap(), b"precious");
            // Once it is gone, the snapshot is whole again.
            run(Command::new("umount").arg(&target));
            assert_eq!(mounts(&mut c, "ctr").await.unwrap(), m);
            assert_eq!(mounted_type(&target).as_deref(), Some("overlay"));
            remove(&mut c, "ctr").await.unwrap();
            // Where the next snapshot's overlay will go: Prepare refuses.
            let next = root.join("mounts/4");
            fs::create_dir(&next).unwrap();
            run(Command::new("mount")
                .arg("--bind")
                .arg(&precious)
                .arg(&next));
            let refused = prepare(
                &mut c,
                "ctr2",
                &top,
                maps("0:100000:65536", "0:100000:65536"),
            )
            .await;
            assert_eq!(refused, Err(Code::FailedPrecondition));
            assert_eq!(stat(&mut c, "ctr2").await, Err(Code::NotFound));
            assert_eq!(
                mounted_type(&next).as_deref(),
                Some("tmpfs"),
                "nothing on it"
            );
            run(Command::new("umount").arg(&next));
        });
        assert_eq!(fs::read(precious.join("file")).unwrap(), b"precious");
        snap.stop();
    });
}

#[test]
fn a_first_start_killed_at_any_sync_of_its_new_store_starts_again() {
    // redb writes a new store in several steps, each synced; a kill
    // between them (power loss, systemd's stop timeout at first boot) must
    // leave nothing a later start refuses. strace kills the process at the
    // Nth sync, for each N until a start syncs fewer times than that (and
    // then serves: it is ended, by its pid, once it says so).
    in_private_ns("first_start_killed_at_a_sync", |scratch| {
        use std::os::unix::process::ExitStatusExt;
        let mut killed = 0;
        for n in 1..=16 {
            let dir = scratch.join(format!("kill-at-sync-{n}"));
            fs::create_dir(&dir).unwrap();
            let log = dir.join("first-start.log");
            let mut strace = Command::new("strace")
                .args([
                    "-f",
                    "-qq",
                    "-o",
                    "/dev/null",
                    "-e",
                    "trace=fsync,fdatasync",
                ])
                .arg("-e")
                .arg(format!("inject=fsync,fdatasync:signal=KILL:when={n}"))
                .arg(env!("CARGO_BIN_EXE_idoverlay-snapshotter"))
                .arg("--root")
                .arg(dir.join("root"))
                .arg("--address")
                .arg(dir.join("snap.sock"))
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .expect("strace (Debian's strace package; snapshotter/ci-deps installs it)");
            let status = loop {
                if let Some(status) = strace.try_wait().unwrap() {
                    break status;
                }
                if fs::read_to_string(&log)
                    .unwrap()
                    .contains("idoverlay-snapshotter: serving on")
                {
                    // Through every sync: end the snapshotter, strace's child.
                    let children = format!("/proc/{0}/task/{0}/children", strace.id());
                    let pid: i32 = fs::read_to_string(children)
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    rustix::process::kill_process(
                        rustix::process::Pid::from_raw(pid).unwrap(),
                        rustix::process::Signal::TERM,
                    )
                    .unwrap();
                    break strace.wait().unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            if status.signal() != Some(9) {
                assert!(killed > 0, "never killed at a sync: {status:?}");
                break;
            }
            killed += 1;
            let snap = Snapshotter::start(&dir);
            block_on(async {
                let mut c = snap.client().await;
                prepare(&mut c, "after", "", HashMap::new()).await.unwrap();
                assert!(stat(&mut c, "after").await.is_ok());
            });
            snap.stop();
            assert!(
                !dir.join("root/metadata.redb.new").exists(),
                "the temporary name is gone once the store is open"
            );
        }
        assert!(killed >= 2, "killed at {killed} syncs only");
    });
}

#[test]
fn check_where_there_is_no_snapshotter_root_says_so_and_creates_nothing() {
    in_private_ns(
        "check_where_there_is_no_snapshotter_root_says_so_and_creates_nothing",
        |scratch| {
            let plain = scratch.join("plain");
            fs::create_dir(&plain).unwrap();
            let half = scratch.join("half");
            fs::create_dir_all(half.join("snapshots")).unwrap();
            fs::create_dir_all(half.join("mounts")).unwrap();
            let listing = || {
                let mut names: Vec<_> = walk(scratch);
                names.sort();
                names
            };
            let before = listing();
            for (root, says) in [
                (scratch.join("typo/root"), "does not exist"),
                (plain.clone(), "it has no snapshots/"),
                (half.clone(), "no store there"),
            ] {
                let out = Command::new(env!("CARGO_BIN_EXE_idoverlay-snapshotter"))
                    .arg("--root")
                    .arg(&root)
                    .arg("check")
                    .env_remove("RUST_BACKTRACE")
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{}: {err}", root.display());
                assert!(
                    err.contains(says) && err.contains("is --root right?"),
                    "{err}"
                );
                assert_eq!(err.trim_end().lines().count(), 1, "{err}");
                assert!(out.stdout.is_empty());
                assert_eq!(
                    listing(),
                    before,
                    "{}: check created something",
                    root.display()
                );
            }
        },
    );
}

/// Every path beneath `dir`, relative to it.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        found.push(path.strip_prefix(dir).unwrap().to_path_buf());
        if e.file_type().unwrap().is_dir() {
            found.extend(
                walk(&path)
                    .into_iter()
                    .map(|p| path.strip_prefix(dir).unwrap().join(p)),
            );
        }
    }
    found
}
