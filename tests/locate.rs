//! Where directories are, when names do not tell: a layer reached through
//! a mount no table shows (`/proc/self/fd/N` of a detached clone), btrfs
//! subvolumes (each with its own device number, one inside another), and
//! a target given only when an assembled overlay is attached — here or in
//! another mount namespace. In each case an upper or target inside a layer
//! must be refused, and the layer's bytes stay as they were.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use common::*;
use idoverlay::{IdMap, Overlay, Strategy};

fn map() -> IdMap {
    "0:100000:65536".parse().unwrap()
}

/// Nothing of `dir` mounted beyond what `before` had (the state tmpfs aside).
fn nothing_new_mounted(before: &[mountinfo::MountEntry]) {
    let new = new_mounts(before, &mounts());
    assert!(
        new.iter().all(|m| m.source == "idoverlay-state"),
        "mounted: {new:?}"
    );
}

/// `dir` (made, empty) bind-mounted at `at` (made): the same directory
/// through another mount.
fn bound_elsewhere(dir: &Path, at: &Path) -> std::path::PathBuf {
    mkdir(dir, 0o755, 0, 0);
    mkdir(at, 0o755, 0, 0);
    run(Command::new("mount").arg("--bind").arg(dir).arg(at));
    at.to_path_buf()
}

#[test]
fn a_layer_named_through_a_symlink_cannot_hide_an_upper_inside_it() {
    // The shared clone never follows a symlink, so such a layer is
    // refused beneath it and reached on its own, by its real place: which
    // holds the upper and work dirs here. Spelled directly it is refused;
    // spelled so, too.
    in_private_ns("locate::symlink_on_the_way", |s| {
        let dir = s.tmpfs_dir("d");
        let img = dir.join("img");
        write_file(&img.join("x/in-layer"), "layer", 0o644, 0, 0);
        mkdir(&img.join("x/upper"), 0o755, 100000, 100000);
        mkdir(&img.join("x/work"), 0o755, 0, 0);
        // Also reached through a bind mount of a directory inside the
        // layer, where a walk up from the upper stops at the bind's root:
        // only locating it on its filesystem tells.
        let bound = bound_elsewhere(&img.join("x/sub"), &dir.join("bound"));
        mkdir(&bound.join("upper"), 0o755, 100000, 100000);
        mkdir(&bound.join("work"), 0o755, 0, 0);
        write_file(&dir.join("l/d/a/f"), "a", 0o644, 0, 0);
        std::os::unix::fs::symlink("../../img", dir.join("l/d/lnk")).unwrap();
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let print = fingerprint(&img);
        for strategy in [
            Strategy::Auto,
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            for (layer, at) in [
                (img.join("x"), img.join("x")),
                (dir.join("l/d/lnk/x"), img.join("x")),
                (img.join("x"), bound.clone()),
                (dir.join("l/d/lnk/x"), bound.clone()),
            ] {
                let before = mounts();
                let e = Overlay::new()
                    .lower(&layer)
                    .lower(dir.join("l/d/a"))
                    .upper(at.join("upper"))
                    .work(at.join("work"))
                    .idmap(map(), map())
                    .strategy(strategy)
                    .state_dir(dir.join("state"))
                    .mount(&target)
                    .map(|m| m.target)
                    .expect_err(&format!("{strategy}: upper inside {}", layer.display()))
                    .to_string();
                assert!(
                    e.contains("layer 1"),
                    "{strategy}, {}: {e}",
                    layer.display()
                );
                assert!(!e.contains('\n'));
                nothing_new_mounted(&before);
            }
        }
        // Assembled first, attached later: the target is checked against
        // where the layer really is, not where its name pointed.
        mkdir(&img.join("x/t"), 0o755, 0, 0);
        for strategy in [
            Strategy::Auto,
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            let assembled = Overlay::new()
                .lower(dir.join("l/d/lnk/x"))
                .lower(dir.join("l/d/a"))
                .idmap(map(), map())
                .strategy(strategy)
                .state_dir(dir.join("state"))
                .assemble()
                .unwrap_or_else(|e| panic!("{strategy}: {e}"));
            let before = mounts();
            let e = assembled
                .attach(img.join("x/t"))
                .map(|m| m.target)
                .expect_err(&format!("{strategy}: a target inside layer 1"))
                .to_string();
            assert!(e.contains("layer 1"), "{strategy}: {e}");
            nothing_new_mounted(&before);
        }
        std::fs::remove_dir(img.join("x/t")).unwrap();
        run(Command::new("umount").arg(&bound));
        assert_eq!(
            fingerprint_diff(&print, &fingerprint(&img)),
            Vec::<String>::new()
        );
    });
}

#[test]
fn a_layer_on_a_mount_no_table_shows_cannot_hide_an_upper_inside_it() {
    in_private_ns("locate::detached_fd", |s| {
        let dir = s.tmpfs_dir("d");
        let img = dir.join("img");
        write_file(&img.join("l1/a"), "a", 0o644, 0, 0);
        mkdir(&img.join("l1/up"), 0o755, 0, 0);
        mkdir(&img.join("l1/wk"), 0o755, 0, 0);
        mkdir(&img.join("l1/inner"), 0o755, 0, 0);
        let bound = bound_elsewhere(&img.join("l1/sub"), &dir.join("bound"));
        mkdir(&bound.join("up"), 0o755, 0, 0);
        mkdir(&bound.join("wk"), 0o755, 0, 0);
        write_file(&dir.join("l2/b"), "b", 0o644, 0, 0);
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let print = fingerprint(&img);
        let clone = raw::clone_detached(&img).unwrap();
        let via_fd = format!("/proc/self/fd/{}/l1", clone.as_raw_fd());
        for strategy in [
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            for (upper, work) in [
                (img.join("l1/up"), img.join("l1/wk")),
                (bound.join("up"), bound.join("wk")),
                (dir.join("u"), dir.join("w")),
            ] {
                if !upper.exists() {
                    mkdir(&upper, 0o755, 0, 0);
                    mkdir(&work, 0o755, 0, 0);
                }
                let before = mounts();
                let result = Overlay::new()
                    .lower(dir.join("l2"))
                    .lower(&via_fd)
                    .upper(&upper)
                    .work(&work)
                    .idmap(map(), map())
                    .strategy(strategy)
                    .state_dir(dir.join("state"))
                    .mount(&target);
                if upper.starts_with(&img) || upper.starts_with(&bound) {
                    let e = result.expect_err("upper inside the layer").to_string();
                    assert!(
                        e.contains("does not show") || e.contains("lies inside"),
                        "{strategy}: {e}"
                    );
                    assert!(!e.contains('\n'));
                    nothing_new_mounted(&before);
                } else if let Ok(m) = result {
                    // Beside the layer: fine, if the strategy can take it.
                    idoverlay::unmount_overlay(&m.target, false).unwrap();
                }
            }
        }
        // A second layer inside the first, named through the host's table:
        // only locating the clone's layer on its own mount tells (no walk
        // compares layers with each other).
        for strategy in [
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            let before = mounts();
            let e = Overlay::new()
                .lower(&via_fd)
                .lower(img.join("l1/inner"))
                .idmap(map(), map())
                .strategy(strategy)
                .state_dir(dir.join("state"))
                .mount(&target)
                .expect_err("a layer inside another")
                .to_string();
            assert!(
                ["does not show", "inside", "nested"]
                    .iter()
                    .any(|w| e.contains(w)),
                "{strategy}: {e}"
            );
            nothing_new_mounted(&before);
        }
        assert_eq!(
            fingerprint_diff(&print, &fingerprint(&img)),
            Vec::<String>::new()
        );
    });
}

#[test]
fn btrfs_subvolumes_inside_a_layer_are_seen_inside_it() {
    in_private_ns("locate::btrfs", |s| {
        let image = s.path("btrfs.img");
        let mnt = s.tmpfs_dir("btrfs");
        run(Command::new("truncate").args(["-s", "160M"]).arg(&image));
        run(Command::new("mkfs.btrfs").args(["-q", "-f"]).arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        // A layer that is a subvolume, holding another subvolume in which
        // the upper and work dirs are: other device numbers, same tree.
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(mnt.join("l1")));
        write_file(&mnt.join("l1/a"), "a", 0o644, 0, 0);
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(mnt.join("l1/nested")));
        mkdir(&mnt.join("l1/nested/up"), 0o755, 0, 0);
        mkdir(&mnt.join("l1/nested/wk"), 0o755, 0, 0);
        // The nested subvolume also through a bind mount elsewhere, where a
        // walk up from the upper stops at the bind's root.
        let bound = bound_elsewhere(&mnt.join("l1/nested"), &s.tmpfs_dir("bound").join("b"));
        write_file(&mnt.join("l2/b"), "b", 0o644, 0, 0);
        let target = mnt.join("t");
        mkdir(&target, 0o755, 0, 0);
        let l1_dev =
            std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(mnt.join("l1")).unwrap());
        let up_dev = std::os::unix::fs::MetadataExt::dev(
            &std::fs::metadata(mnt.join("l1/nested/up")).unwrap(),
        );
        assert_ne!(
            l1_dev, up_dev,
            "the nested subvolume shows a device of its own"
        );
        let print = fingerprint(&mnt.join("l1"));
        for strategy in [
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            for at in [mnt.join("l1/nested"), bound.clone()] {
                let before = mounts();
                let e = Overlay::new()
                    .lower(mnt.join("l2"))
                    .lower(mnt.join("l1"))
                    .upper(at.join("up"))
                    .work(at.join("wk"))
                    .idmap(map(), map())
                    .strategy(strategy)
                    .state_dir(s.path("state"))
                    .mount(&target)
                    .expect_err("upper inside a layer")
                    .to_string();
                assert!(e.contains("lies inside layer 2"), "{strategy}: {e}");
                nothing_new_mounted(&before);
            }
            // The target inside the layer's nested subvolume, too.
            let e = Overlay::new()
                .lower(mnt.join("l2"))
                .lower(mnt.join("l1"))
                .idmap(map(), map())
                .strategy(strategy)
                .state_dir(s.path("state"))
                .mount(mnt.join("l1/nested/up"))
                .expect_err("target inside a layer")
                .to_string();
            assert!(
                e.contains("target") && e.contains("layer 2"),
                "{strategy}: {e}"
            );
        }
        assert_eq!(
            fingerprint_diff(&print, &fingerprint(&mnt.join("l1"))),
            Vec::<String>::new()
        );
        run(Command::new("umount").arg(&bound));
        run(Command::new("umount").arg(&mnt));
    });
}

#[test]
fn an_assembled_overlay_is_not_attached_inside_its_own_directories() {
    in_private_ns("locate::attach", |s| {
        let dir = s.tmpfs_dir("d");
        let layers = make_layers(&dir.join("layers")).dirs;
        let (upper, work) = (dir.join("c/upper"), dir.join("c/work"));
        mkdir(&upper.join("sub"), 0o755, 0, 0);
        mkdir(&work, 0o755, 0, 0);
        let state = dir.join("state");
        mkdir(&state.join("sub"), 0o700, 0, 0);
        mkdir(&state, 0o700, 0, 0);
        // Also through a bind mount of the upper's parent: by location.
        let alias = dir.join("alias");
        mkdir(&alias, 0o755, 0, 0);
        run(Command::new("mount")
            .arg("--bind")
            .arg(dir.join("c"))
            .arg(&alias));
        let fine = dir.join("t");
        mkdir(&fine, 0o755, 0, 0);
        for strategy in [
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            // host-staged takes an empty state dir for its tmpfs.
            let staged = strategy == Strategy::HostStaged;
            if staged {
                std::fs::remove_dir(state.join("sub")).unwrap();
            }
            let assemble = || {
                Overlay::new()
                    .lowers(layers.iter().cloned())
                    .upper(&upper)
                    .work(&work)
                    .idmap(map(), map())
                    .strategy(strategy)
                    .state_dir(&state)
                    .assemble()
                    .unwrap()
            };
            for (target, says) in [
                (layers[2].join("etc"), "layer 3"),
                (upper.join("sub"), "upper dir"),
                (alias.join("upper/sub"), "upper dir"),
                (work.clone(), "work dir"),
                (state.join("sub"), "state dir"),
            ] {
                for in_namespace in [false, true] {
                    if (in_namespace || staged) && says == "state dir" {
                        continue;
                    }
                    let before = mounts();
                    let mount = assemble();
                    let result = match in_namespace {
                        false => mount.attach(&target),
                        true => mount.attach_in_namespace("/proc/thread-self/ns/mnt", &target),
                    };
                    let e = result.expect_err("refused").to_string();
                    assert!(
                        e.contains("target") && e.contains(says),
                        "{strategy} {} (-N {in_namespace}): {e}",
                        target.display()
                    );
                    assert!(!e.contains('\n'));
                    nothing_new_mounted(&before);
                }
            }
            // Beside them, both ways, it attaches.
            for in_namespace in [false, true] {
                let mount = assemble();
                let m = match in_namespace {
                    false => mount.attach(&fine),
                    true => mount.attach_in_namespace("/proc/thread-self/ns/mnt", &fine),
                }
                .unwrap();
                assert!(Path::new(&m.target).join("etc").exists());
                idoverlay::unmount_overlay(&fine, false).unwrap();
            }
        }
        run(Command::new("umount").arg(&alias));
    });
}

/// An upper and work 1,200 directories deep below the layers' shared root:
/// the walk up from them (by directory, see `layer::locate::walk_up`) goes
/// through every level, past where its `../..` string is re-based, and
/// mounts; the same depth inside a layer is refused.
#[test]
fn an_upper_deep_below_the_layers_root_is_walked_whole() {
    in_private_ns("locate::deep_upper", |s| {
        let dir = s.tmpfs_dir("deep");
        let layers = make_layers(&dir.join("layers")).dirs;
        let deep = |top: &Path| {
            let mut p = top.to_path_buf();
            for _ in 0..1200 {
                p.push("d");
            }
            mkdir(&p.join("u"), 0o755, 100000, 100000);
            mkdir(&p.join("w"), 0o755, 0, 0);
            p
        };
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let ok = deep(&dir.join("layers/mine"));
        let before = mounts();
        Overlay::new()
            .lowers(layers.iter().cloned())
            .upper(ok.join("u"))
            .work(ok.join("w"))
            .idmap(map(), map())
            .mount(&target)
            .unwrap();
        std::fs::write(target.join("written"), "x").unwrap();
        idoverlay::unmount_overlay(&target, false).unwrap();
        assert!(ok.join("u/written").exists());
        let inside = deep(&layers[0]);
        let e = Overlay::new()
            .lowers(layers.iter().cloned())
            .upper(inside.join("u"))
            .work(inside.join("w"))
            .idmap(map(), map())
            .strategy(Strategy::Detached)
            .mount(&target)
            .unwrap_err();
        assert!(e.to_string().contains("inside"), "{e}");
        nothing_new_mounted(&before);
    });
}

/// An upper and work dir deeper than the walk up goes (4,200 levels,
/// reached through symlinks, as no path to them fits in PATH_MAX) are
/// refused in one line, with nothing mounted: where the walk cannot tell
/// whether they lie inside a layer, they are not taken as lying outside.
#[test]
fn an_upper_too_deep_to_walk_up_is_refused() {
    use rustix::fs::{mkdirat, openat, symlinkat, Mode, OFlags};
    in_private_ns("locate::too_deep", |s| {
        let dir = s.tmpfs_dir("deep");
        let layers = make_layers(&dir.join("layers")).dirs;
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = openat(rustix::fs::CWD, &dir, flags, Mode::empty()).unwrap();
        let mut via = dir.clone();
        for level in 0..4200 {
            if level % 2000 == 0 {
                let hop = format!("hop{}", level / 2000);
                let down = vec!["d"; 2000.min(4200 - level)].join("/");
                symlinkat(down.as_str(), &fd, hop.as_str()).unwrap();
                via.push(hop);
            }
            mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = openat(&fd, "d", flags, Mode::empty()).unwrap();
        }
        mkdirat(&fd, "u", Mode::from_raw_mode(0o755)).unwrap();
        mkdirat(&fd, "w", Mode::from_raw_mode(0o755)).unwrap();
        let before = mounts();
        for strategy in [
            Strategy::Auto,
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            let e = Overlay::new()
                .lowers(layers.iter().cloned())
                .upper(via.join("u"))
                .work(via.join("w"))
                .idmap(map(), map())
                .strategy(strategy)
                .mount(&target)
                .unwrap_err();
            let said = e.to_string();
            assert_eq!(said.lines().count(), 1, "{said}");
            assert!(
                said.contains("could not be walked up to the root")
                    && said.contains("more than 4096 directories"),
                "{strategy:?}: {said}"
            );
        }
        nothing_new_mounted(&before);
    });
}

/// Layers beneath one directory, one of them beyond a mount point below
/// it (the staged strategies clone that directory with the mounts below):
/// an upper, work dir or target inside that layer is refused all the same.
#[test]
fn an_upper_inside_a_layer_beyond_a_mount_below_the_layers_root_is_refused() {
    in_private_ns("locate::across_submount", |s| {
        let root = s.tmpfs_dir("root");
        write_file(&root.join("l1/a"), "a", 0o644, 0, 0);
        mkdir(&root.join("m"), 0o755, 0, 0);
        run(Command::new("mount")
            .args(["-t", "tmpfs", "sub"])
            .arg(root.join("m")));
        write_file(&root.join("m/l2/b"), "b", 0o644, 0, 0);
        mkdir(&root.join("m/l2/u"), 0o755, 100000, 100000);
        mkdir(&root.join("m/l2/w"), 0o755, 0, 0);
        mkdir(&root.join("m/l2/t"), 0o755, 0, 0);
        let target = s.tmpfs_dir("t");
        let print = fingerprint(&root.join("m/l2"));
        for strategy in [
            Strategy::Auto,
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            let overlay = || {
                Overlay::new()
                    .lower(root.join("l1"))
                    .lower(root.join("m/l2"))
                    .idmap(map(), map())
                    .strategy(strategy)
                    .state_dir(s.path("state"))
            };
            let before = mounts();
            let e = overlay()
                .upper(root.join("m/l2/u"))
                .work(root.join("m/l2/w"))
                .mount(&target)
                .map(|m| m.target)
                .expect_err("upper inside layer 2")
                .to_string();
            assert!(e.contains("layer 2"), "{strategy}: {e}");
            nothing_new_mounted(&before);
            let e = overlay()
                .mount(root.join("m/l2/t"))
                .map(|m| m.target)
                .expect_err("target inside layer 2")
                .to_string();
            assert!(e.contains("layer 2"), "{strategy}: {e}");
            nothing_new_mounted(&before);
        }
        assert_eq!(
            fingerprint_diff(&print, &fingerprint(&root.join("m/l2"))),
            Vec::<String>::new()
        );
    });
}
