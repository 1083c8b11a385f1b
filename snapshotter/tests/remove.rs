//! The fd-based tree removal on its own: what it deletes, and what it must
//! never touch (a mount inside the tree, a symlink's target).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::symlink;
use std::process::Command;

use common::{in_private_ns, run};
use idoverlay_snapshotter::remove::{mount_points, remove_tree, RemoveError, CHECK_ENTRIES};
use idoverlay_snapshotter::sys;

#[test]
fn removes_everything_but_follows_no_symlink() {
    in_private_ns("removes_everything_but_follows_no_symlink", |scratch| {
        let outside = scratch.join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("sub/file"), b"keep").unwrap();
        let tree = scratch.join("parent/tree");
        fs::create_dir_all(tree.join("a/b/c")).unwrap();
        fs::write(tree.join("a/b/c/file"), b"x").unwrap();
        symlink(&outside, tree.join("a/link-to-dir")).unwrap();
        symlink(outside.join("sub/file"), tree.join("a/b/link-to-file")).unwrap();
        symlink("/nonexistent", tree.join("dangling")).unwrap();
        run(Command::new("mkfifo").arg(tree.join("fifo")));
        // More entries than one read batch.
        fs::create_dir(tree.join("many")).unwrap();
        for i in 0..10_000 {
            fs::write(tree.join(format!("many/{i}")), b"").unwrap();
        }
        // Deep.
        let mut deep = tree.join("deep");
        for _ in 0..200 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let parent = sys::open_dir_abs(&scratch.join("parent")).unwrap();
        remove_tree(&parent, OsStr::new("tree")).unwrap();
        assert!(!tree.exists());
        assert_eq!(fs::read(outside.join("sub/file")).unwrap(), b"keep");
        assert!(outside.join("sub").is_dir());
    });
}

#[test]
fn stops_at_a_mount_and_deletes_nothing_of_it() {
    in_private_ns("stops_at_a_mount_and_deletes_nothing_of_it", |scratch| {
        let precious = scratch.join("precious");
        fs::create_dir_all(precious.join("deep")).unwrap();
        fs::write(precious.join("deep/file"), b"precious").unwrap();
        let tree = scratch.join("parent/tree");
        fs::create_dir_all(tree.join("x/hostpath")).unwrap();
        fs::write(tree.join("x/mine"), b"mine").unwrap();
        run(Command::new("mount")
            .arg("--bind")
            .arg(&precious)
            .arg(tree.join("x/hostpath")));
        let parent = sys::open_dir_abs(&scratch.join("parent")).unwrap();
        match remove_tree(&parent, OsStr::new("tree")) {
            Err(RemoveError::MountBeneath(p)) => {
                assert_eq!(p, std::path::Path::new("tree/x/hostpath"))
            }
            other => panic!("expected MountBeneath, got {other:?}"),
        }
        assert_eq!(fs::read(precious.join("deep/file")).unwrap(), b"precious");
        assert!(
            tree.join("x/hostpath").is_dir(),
            "the mount point and its parents stay"
        );
        // The tree itself being a mount point is refused too.
        run(Command::new("umount").arg(tree.join("x/hostpath")));
        run(Command::new("mount")
            .arg("--bind")
            .arg(&precious)
            .arg(&tree));
        assert!(matches!(
            remove_tree(&parent, OsStr::new("tree")),
            Err(RemoveError::MountBeneath(_))
        ));
        assert_eq!(fs::read(precious.join("deep/file")).unwrap(), b"precious");
        run(Command::new("umount").arg(&tree));
        remove_tree(&parent, OsStr::new("tree")).unwrap();
        assert!(!tree.exists());
        assert_eq!(fs::read(precious.join("deep/file")).unwrap(), b"precious");
    });
}

#[test]
fn refuses_a_symlink_as_the_tree() {
    in_private_ns("refuses_a_symlink_as_the_tree", |scratch| {
        let outside = scratch.join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("file"), b"keep").unwrap();
        fs::create_dir(scratch.join("parent")).unwrap();
        symlink(&outside, scratch.join("parent/tree")).unwrap();
        let parent = sys::open_dir_abs(&scratch.join("parent")).unwrap();
        assert!(matches!(
            remove_tree(&parent, OsStr::new("tree")),
            Err(RemoveError::Io { .. })
        ));
        assert_eq!(fs::read(outside.join("file")).unwrap(), b"keep");
        // A path with a component is refused as well: names are one level.
        assert!(remove_tree(&parent, OsStr::new("../outside")).is_err());
        assert_eq!(fs::read(outside.join("file")).unwrap(), b"keep");
    });
}

#[test]
fn finds_every_mount_point_without_entering_one() {
    in_private_ns("finds_every_mount_point_without_entering_one", |scratch| {
        let precious = scratch.join("precious");
        fs::create_dir_all(precious.join("inner")).unwrap();
        fs::write(precious.join("file"), b"precious").unwrap();
        let tree = scratch.join("parent/tree");
        fs::create_dir_all(tree.join("a/b/dir-mount")).unwrap();
        fs::write(tree.join("a/file-mount"), b"").unwrap();
        fs::write(tree.join("a/b/plain"), b"x").unwrap();
        // A symlink to a directory that holds a mount: not followed.
        let outside = scratch.join("outside");
        fs::create_dir_all(outside.join("m")).unwrap();
        symlink(&outside, tree.join("a/link")).unwrap();
        let parent = sys::open_dir_abs(&scratch.join("parent")).unwrap();
        let found = |parent| {
            let mut v = mount_points(parent, OsStr::new("tree"))
                .unwrap()
                .expect("a small tree on 6.x is checked by the walk");
            v.sort();
            v
        };
        assert_eq!(found(&parent), Vec::<std::path::PathBuf>::new());
        run(Command::new("mount")
            .arg("--bind")
            .arg(&precious)
            .arg(tree.join("a/b/dir-mount")));
        // A file bind mount: only statx's mount-root attribute shows it
        // (opening it beneath its parent is not asked for: not a dir).
        run(Command::new("mount")
            .arg("--bind")
            .arg(precious.join("file"))
            .arg(tree.join("a/file-mount")));
        // Mounted inside the mount: its tree is not entered, so not listed.
        run(Command::new("mount")
            .arg("-t")
            .arg("tmpfs")
            .arg("tmpfs")
            .arg(tree.join("a/b/dir-mount/inner")));
        run(Command::new("mount")
            .arg("-t")
            .arg("tmpfs")
            .arg("tmpfs")
            .arg(outside.join("m")));
        assert_eq!(
            found(&parent),
            vec![
                std::path::PathBuf::from("tree/a/b/dir-mount"),
                std::path::PathBuf::from("tree/a/file-mount"),
            ]
        );
        // The walk changed nothing.
        assert_eq!(fs::read(tree.join("a/b/plain")).unwrap(), b"x");
        assert_eq!(fs::read(tree.join("a/file-mount")).unwrap(), b"precious");
        // The tree itself a mount point.
        run(Command::new("mount")
            .arg("--bind")
            .arg(&precious)
            .arg(&tree));
        assert_eq!(found(&parent), vec![std::path::PathBuf::from("tree")]);
        // A tree too big to walk for less than the mount table costs is
        // left to the table: the walk does not answer for it.
        run(Command::new("umount").arg(&tree));
        for i in 0..CHECK_ENTRIES {
            fs::write(tree.join(format!("a/b/{i}")), b"").unwrap();
        }
        assert!(mount_points(&parent, OsStr::new("tree")).unwrap().is_none());
    });
}
