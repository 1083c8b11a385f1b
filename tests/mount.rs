//! The integration suite: real idmapped overlays on tmpfs and ext4, for
//! every strategy, checked the way a user would check them.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use idoverlay::{IdMap, Overlay, Strategy};

const MAP: &str = "0:100000:65536";

fn map() -> IdMap {
    MAP.parse().unwrap()
}

fn overlay(layers: &[PathBuf], strategy: Strategy) -> Overlay {
    Overlay::new()
        .lowers(layers.iter().cloned())
        .idmap(map(), map())
        .strategy(strategy)
}

/// Mounts three layers with upper and work at `dir/merged` and checks
/// ownership, contents, whiteouts, opaque dirs, writes and the mount table.
fn full_check(dir: &Path, strategy: Strategy) {
    let layers = make_layers(dir);
    let upper = dir.join("upper");
    let work = dir.join("work");
    let merged = dir.join("merged");
    for d in [&upper, &work, &merged] {
        mkdir(d, 0o755, 0, 0);
    }
    let before = mounts();
    let mounted = overlay(&layers.dirs, strategy)
        .upper(&upper)
        .work(&work)
        .mount(&merged)
        .unwrap();
    if strategy != Strategy::Auto {
        assert_eq!(mounted.strategy, strategy);
    }

    // Exactly one new mount: the overlay at the target.
    let added = new_mounts(&before, &mounts());
    assert_eq!(added.len(), 1, "new mounts: {added:#?}");
    assert_eq!(added[0].mount_point, merged);
    assert_eq!(added[0].fs_type, "overlay");

    // Owners: on-disk 0 shows as 100000, on-disk 1000 as 101000.
    assert_eq!(owner(&merged.join("etc/hostname")), (100000, 100000));
    assert_eq!(owner(&merged.join("home/app")), (101000, 101000));
    assert_eq!(owner(&merged.join("home/app/notes.txt")), (101000, 101000));
    assert_eq!(owner(&merged.join("srv/data")), (101000, 101000));
    assert_eq!(owner(&merged.join("home/hostname-link")), (100000, 100000));
    // ... while on disk nothing changed.
    assert_eq!(owner(&layers.dirs[2].join("etc/hostname")), (0, 0));
    assert_eq!(
        owner(&layers.dirs[0].join("home/app/notes.txt")),
        (1000, 1000)
    );

    // Layer order, symlinks, whiteouts and opaque dirs from the image.
    assert_eq!(
        fs::read_to_string(merged.join("home/app/notes.txt")).unwrap(),
        "v3\n"
    );
    assert_eq!(
        fs::read_to_string(merged.join("home/hostname-link")).unwrap(),
        "base\n"
    );
    assert!(
        !merged.join("home/app/deleted-later.txt").exists(),
        "whiteout must hide the file"
    );
    assert!(merged.join("var/cache/new").exists());
    assert!(
        !merged.join("var/cache/old").exists(),
        "opaque dir must hide the lower contents"
    );

    // Writes land in upper; the lower layers stay as they were.
    fs::write(merged.join("etc/new-file"), "hello\n").unwrap();
    assert_eq!(
        fs::read_to_string(upper.join("etc/new-file")).unwrap(),
        "hello\n"
    );
    fs::write(merged.join("etc/hostname"), "changed\n").unwrap();
    assert_eq!(
        fs::read_to_string(upper.join("etc/hostname")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::read_to_string(layers.dirs[2].join("etc/hostname")).unwrap(),
        "base\n"
    );
    // Deleting a lower file through the mount leaves a whiteout in upper.
    fs::remove_file(merged.join("bin/tool")).unwrap();
    assert!(!merged.join("bin/tool").exists());
    assert!(
        layers.dirs[1].join("bin/tool").exists(),
        "lower file must survive"
    );
    let whiteout = fs::symlink_metadata(upper.join("bin/tool")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    // Replacing a lower directory makes it opaque in upper.
    fs::remove_file(merged.join("srv/data")).unwrap();
    fs::remove_dir(merged.join("srv")).unwrap();
    fs::create_dir(merged.join("srv")).unwrap();
    assert_eq!(fs::read_dir(merged.join("srv")).unwrap().count(), 0);
    let opaque = xattr(&upper.join("srv"), "trusted.overlay.opaque");
    assert_eq!(opaque.as_deref(), Some("y"));
    assert!(layers.dirs[1].join("srv/data").exists());

    // umount removes exactly that mount.
    idoverlay::unmount_overlay(&merged, false).unwrap();
    let after = mounts();
    assert!(new_mounts(&before, &after).is_empty());
    assert_eq!(before.len(), after.len());
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lower layers are read-only through an overlay without upper.
fn read_only_lowers(dir: &Path, strategy: Strategy) {
    let layers = make_layers(dir);
    let merged = dir.join("merged");
    mkdir(&merged, 0o755, 0, 0);
    overlay(&layers.dirs, strategy).mount(&merged).unwrap();
    assert_eq!(owner(&merged.join("etc/hostname")), (100000, 100000));
    let err = fs::write(merged.join("etc/hostname"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert_eq!(
        fs::read_to_string(layers.dirs[2].join("etc/hostname")).unwrap(),
        "base\n"
    );
    idoverlay::unmount_overlay(&merged, false).unwrap();
}

/// 500 layers mount; 501 are refused with one clear line, changing nothing.
fn five_hundred_layers(dir: &Path, strategy: Strategy) {
    let parent = dir.join("many");
    mkdir(&parent, 0o755, 0, 0);
    let mut layers = Vec::new();
    for i in 0..501 {
        let l = parent.join(format!("layer-{i:03}"));
        mkdir(&l, 0o755, 0, 0);
        write_file(&l.join(format!("f{i}")), "x", 0o644, (i % 2) * 1000, 0);
        layers.push(l);
    }
    let merged = dir.join("merged");
    mkdir(&merged, 0o755, 0, 0);
    let before = mounts();
    let err = overlay(&layers, strategy).mount(&merged).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("501") && text.contains("at most 500"),
        "{text}"
    );
    assert!(!text.contains('\n'));
    assert_eq!(err.kind(), "invalid_input");
    assert!(new_mounts(&before, &mounts()).is_empty());

    layers.pop();
    overlay(&layers, strategy).mount(&merged).unwrap();
    assert_eq!(owner(&merged.join("f0")), (100000, 100000));
    assert_eq!(owner(&merged.join("f1")), (101000, 100000));
    assert_eq!(owner(&merged.join("f499")), (101000, 100000));
    assert_eq!(fs::read_dir(&merged).unwrap().count(), 500);
    assert_eq!(new_mounts(&before, &mounts()).len(), 1);
    idoverlay::unmount_overlay(&merged, false).unwrap();
    assert!(new_mounts(&before, &mounts()).is_empty());
}

/// Layers on two different filesystems, one of them the root of a mount:
/// each mount needs its own clone, and a shared clone must not hide them.
fn layers_across_mounts(dir: &Path, strategy: Strategy, scratch: &Scratch) {
    let a = dir.join("a");
    let c = dir.join("c");
    mkdir(&a, 0o755, 0, 0);
    mkdir(&c, 0o755, 0, 0);
    write_file(&a.join("from-a"), "a", 0o644, 0, 0);
    write_file(&c.join("from-c"), "c", 0o644, 1000, 0);
    // A separate filesystem whose root is a layer.
    let inner = scratch.ext4_dir(&format!("{}-inner", name(dir)));
    write_file(&inner.join("from-inner"), "b", 0o644, 1000, 1000);
    let merged = dir.join("merged");
    mkdir(&merged, 0o755, 0, 0);
    overlay(&[a, inner.clone(), c], strategy)
        .mount(&merged)
        .unwrap();
    assert_eq!(owner(&merged.join("from-a")), (100000, 100000));
    assert_eq!(owner(&merged.join("from-inner")), (101000, 101000));
    assert_eq!(owner(&merged.join("from-c")), (101000, 100000));
    idoverlay::unmount_overlay(&merged, false).unwrap();
    std::process::Command::new("umount")
        .arg(&inner)
        .status()
        .unwrap();
}

/// A layer inside another layer is refused by the kernel with a hint.
fn nested_layers_refused(dir: &Path, strategy: Strategy) {
    let outer = dir.join("outer");
    let inner = outer.join("inner");
    mkdir(&inner, 0o755, 0, 0);
    let merged = dir.join("merged");
    mkdir(&merged, 0o755, 0, 0);
    let before = mounts();
    let err = overlay(&[outer, inner], strategy)
        .mount(&merged)
        .unwrap_err();
    assert!(err.to_string().contains("inside another"), "{err}");
    assert!(new_mounts(&before, &mounts()).is_empty());
}

macro_rules! suite {
    ($($strategy_mod:ident => $strategy:expr),* $(,)?) => {$(
        mod $strategy_mod {
            use super::*;

            #[test]
            fn tmpfs_full() {
                in_private_ns(concat!(stringify!($strategy_mod), "::tmpfs_full"), |s| {
                    full_check(&s.tmpfs_dir("t"), $strategy)
                });
            }

            #[test]
            fn ext4_full() {
                in_private_ns(concat!(stringify!($strategy_mod), "::ext4_full"), |s| {
                    full_check(&s.ext4_dir("e"), $strategy)
                });
            }

            #[test]
            fn read_only_without_upper() {
                in_private_ns(concat!(stringify!($strategy_mod), "::read_only"), |s| {
                    read_only_lowers(&s.ext4_dir("e"), $strategy)
                });
            }

            #[test]
            fn five_hundred_layers_ext4() {
                in_private_ns(concat!(stringify!($strategy_mod), "::500_ext4"), |s| {
                    five_hundred_layers(&s.ext4_dir("e"), $strategy)
                });
            }

            #[test]
            fn five_hundred_layers_tmpfs() {
                in_private_ns(concat!(stringify!($strategy_mod), "::500_tmpfs"), |s| {
                    five_hundred_layers(&s.tmpfs_dir("t"), $strategy)
                });
            }

            #[test]
            fn nested_layers() {
                in_private_ns(concat!(stringify!($strategy_mod), "::nested"), |s| {
                    nested_layers_refused(&s.tmpfs_dir("t"), $strategy)
                });
            }

            #[test]
            fn layers_on_several_mounts() {
                in_private_ns(concat!(stringify!($strategy_mod), "::several_mounts"), |s| {
                    layers_across_mounts(&s.tmpfs_dir("t"), $strategy, s)
                });
            }
        }
    )*};
}

suite! {
    detached => Strategy::Detached,
    auto => Strategy::Auto,
}
