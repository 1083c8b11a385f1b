//! The integration suite: real idmapped overlays on tmpfs and ext4, for
//! every strategy, checked the way a user would check them.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use idoverlay::{Feature, IdMap, Overlay, Strategy};

const MAP: &str = "0:100000:65536";

fn map() -> IdMap {
    MAP.parse().unwrap()
}

/// A strategy, possibly with kernel features pretended missing to force
/// the code paths older kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub strategy: Strategy,
    pub missing: &'static [Feature],
    pub per_layer_clones: bool,
}

impl Variant {
    const fn plain(strategy: Strategy) -> Self {
        Variant {
            strategy,
            missing: &[],
            per_layer_clones: false,
        }
    }
}

/// Mounts added since `before`, except host-staged's state tmpfs at
/// `dir/state` (it stays, by design, and never holds data).
fn added(
    dir: &Path,
    before: &[common::mountinfo::MountEntry],
) -> Vec<common::mountinfo::MountEntry> {
    let state = dir.join("state");
    let added = new_mounts(before, &mounts());
    added
        .into_iter()
        .filter(|m| m.mount_point != state)
        .collect()
}

/// Host-staged leaves nothing in its state dir after a run (but the
/// marker of its own state tmpfs).
fn state_is_empty(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir.join("state")) {
        let left: Vec<_> = entries
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != ".idoverlay-state")
            .collect();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }
}

/// The overlay for a test in `dir` (host-staged keeps its state there).
fn overlay(dir: &Path, layers: &[PathBuf], v: Variant) -> Overlay {
    let mut o = Overlay::new()
        .lowers(layers.iter().cloned())
        .idmap(map(), map())
        .strategy(v.strategy)
        .state_dir(dir.join("state"))
        .per_layer_clones(v.per_layer_clones);
    for f in v.missing {
        o = o.pretend_missing(*f);
    }
    o
}

/// Mounts three layers with upper and work at `dir/merged` and checks
/// ownership, contents, whiteouts, opaque dirs, writes and the mount table.
fn full_check(dir: &Path, v: Variant) {
    let layers = make_layers(dir);
    let upper = dir.join("upper");
    let work = dir.join("work");
    let merged = dir.join("merged");
    // The upper owned by container root's host ids: a correct call.
    mkdir(&upper, 0o755, 100000, 100000);
    for d in [&work, &merged] {
        mkdir(d, 0o755, 0, 0);
    }
    let before = mounts();
    let mounted = overlay(dir, &layers.dirs, v)
        .upper(&upper)
        .work(&work)
        .mount(&merged)
        .unwrap();
    if v.strategy != Strategy::Auto {
        assert_eq!(mounted.strategy, v.strategy);
    }
    assert!(mounted.warnings.is_empty(), "{:?}", mounted.warnings);

    // Exactly one new mount: the overlay at the target.
    let new = added(dir, &before);
    assert_eq!(new.len(), 1, "new mounts: {new:#?}");
    assert_eq!(new[0].mount_point, merged);
    assert_eq!(new[0].fs_type, "overlay");
    state_is_empty(dir);

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
    assert!(added(dir, &before).is_empty());
    let after = mounts();
    let gone: Vec<_> = before
        .iter()
        .filter(|b| !after.iter().any(|a| a.mount_id == b.mount_id))
        .collect();
    assert!(gone.is_empty(), "mounts vanished: {gone:?}");
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
fn read_only_lowers(dir: &Path, v: Variant) {
    let layers = make_layers(dir);
    let merged = dir.join("merged");
    mkdir(&merged, 0o755, 0, 0);
    overlay(dir, &layers.dirs, v).mount(&merged).unwrap();
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
fn five_hundred_layers(dir: &Path, v: Variant) {
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
    let err = overlay(dir, &layers, v).mount(&merged).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("501") && text.contains("at most 500"),
        "{text}"
    );
    assert!(!text.contains('\n'));
    assert_eq!(err.kind(), "invalid_input");
    assert!(added(dir, &before).is_empty());

    layers.pop();
    // Even through mount(2)'s one page (no lowerdir+ before 6.7): staged
    // names are relative to the staging dir, so 500 of them fit.
    overlay(dir, &layers, v).mount(&merged).unwrap();
    assert_eq!(owner(&merged.join("f0")), (100000, 100000));
    assert_eq!(owner(&merged.join("f1")), (101000, 100000));
    assert_eq!(owner(&merged.join("f499")), (101000, 100000));
    assert_eq!(fs::read_dir(&merged).unwrap().count(), 500);
    assert_eq!(added(dir, &before).len(), 1);
    idoverlay::unmount_overlay(&merged, false).unwrap();
    assert!(added(dir, &before).is_empty());
}

/// Layers on two different filesystems, one of them the root of a mount:
/// each mount needs its own clone, and a shared clone must not hide them.
fn layers_across_mounts(dir: &Path, v: Variant, scratch: &Scratch) {
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
    overlay(dir, &[a, inner.clone(), c], v)
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

/// A layer inside another layer is refused before the kernel sees it.
fn nested_layers_refused(dir: &Path, v: Variant) {
    let outer = dir.join("outer");
    let inner = outer.join("inner");
    mkdir(&inner, 0o755, 0, 0);
    let merged = dir.join("merged");
    mkdir(&merged, 0o755, 0, 0);
    let before = mounts();
    let err = overlay(dir, &[outer, inner], v).mount(&merged).unwrap_err();
    assert!(err.to_string().contains("lies inside layer 1"), "{err}");
    assert!(added(dir, &before).is_empty());
}

/// Refusals that once named the wrong problem say what is really wrong,
/// whichever way the strategy reaches the layers: a lone layer that does
/// not exist (not "needs at least two lower layers"), a regular file inside
/// another layer (not "lies inside layer 1"), an upper dir that is one of
/// the layers (not "lies inside"). Nothing is mounted.
fn misleading_refusals_say_what_is_wrong(dir: &Path, v: Variant) {
    let layers = make_layers(dir);
    let (upper, work, merged) = (dir.join("u"), dir.join("w"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        mkdir(d, 0o755, 0, 0);
    }
    let file = layers.dirs[1].join("in-l2");
    write_file(&file, "x", 0o644, 0, 0);
    let before = mounts();

    let missing = dir.join("missing");
    let err = overlay(dir, std::slice::from_ref(&missing), v)
        .mount(&merged)
        .unwrap_err()
        .to_string();
    assert_eq!(err, format!("layer {missing:?}: does not exist"), "{v:?}");

    let with_file = [layers.dirs[0].clone(), layers.dirs[1].clone(), file.clone()];
    let err = overlay(dir, &with_file, v)
        .mount(&merged)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("layer {file:?}: is a regular file, not a directory"),
        "{v:?}"
    );

    let with_upper = [layers.dirs[0].clone(), upper.clone()];
    let err = overlay(dir, &with_upper, v)
        .upper(&upper)
        .work(&work)
        .mount(&merged)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "upper dir {upper:?}: is the same directory as layer 2 ({upper:?}): writes would land \
             in the image layer; give a fresh, empty upper dir outside every layer"
        ),
        "{v:?}"
    );
    assert!(added(dir, &before).is_empty(), "{:?}", added(dir, &before));
}

/// A work dir overlay cannot write in (immutable) makes overlay mount
/// read-only; a writable overlay was asked for, so it is refused, and
/// nothing stays mounted whichever step noticed.
fn unwritable_work_dir_refused(dir: &Path, v: Variant) {
    let layers = make_layers(dir);
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [&upper, &work, &merged] {
        mkdir(d, 0o755, 0, 0);
    }
    run(std::process::Command::new("chattr").arg("+i").arg(&work));
    let before = mounts();
    let result = overlay(dir, &layers.dirs, v)
        .upper(&upper)
        .work(&work)
        .mount(&merged);
    run(std::process::Command::new("chattr").arg("-i").arg(&work));
    let err = result.unwrap_err();
    assert!(err.to_string().contains("mounted read-only"), "{err}");
    assert!(added(dir, &before).is_empty(), "{:?}", added(dir, &before));
    assert_eq!(fs::read_dir(&work).unwrap().count(), 0, "work dir written");
    state_is_empty(dir);
}

macro_rules! suite {
    ($($strategy_mod:ident => $variant:expr),* $(,)?) => {$(
        mod $strategy_mod {
            use super::*;

            #[test]
            fn tmpfs_full() {
                in_private_ns(concat!(stringify!($strategy_mod), "::tmpfs_full"), |s| {
                    full_check(&s.tmpfs_dir("t"), $variant)
                });
            }

            #[test]
            fn ext4_full() {
                in_private_ns(concat!(stringify!($strategy_mod), "::ext4_full"), |s| {
                    full_check(&s.ext4_dir("e"), $variant)
                });
            }

            #[test]
            fn read_only_without_upper() {
                in_private_ns(concat!(stringify!($strategy_mod), "::read_only"), |s| {
                    read_only_lowers(&s.ext4_dir("e"), $variant)
                });
            }

            #[test]
            fn five_hundred_layers_ext4() {
                in_private_ns(concat!(stringify!($strategy_mod), "::500_ext4"), |s| {
                    five_hundred_layers(&s.ext4_dir("e"), $variant)
                });
            }

            #[test]
            fn five_hundred_layers_tmpfs() {
                in_private_ns(concat!(stringify!($strategy_mod), "::500_tmpfs"), |s| {
                    five_hundred_layers(&s.tmpfs_dir("t"), $variant)
                });
            }

            #[test]
            fn nested_layers() {
                in_private_ns(concat!(stringify!($strategy_mod), "::nested"), |s| {
                    nested_layers_refused(&s.tmpfs_dir("t"), $variant)
                });
            }

            #[test]
            fn misleading_refusals() {
                in_private_ns(concat!(stringify!($strategy_mod), "::misleading_refusals"), |s| {
                    misleading_refusals_say_what_is_wrong(&s.tmpfs_dir("t"), $variant)
                });
            }

            #[test]
            fn unwritable_work_dir() {
                in_private_ns(concat!(stringify!($strategy_mod), "::unwritable_work"), |s| {
                    unwritable_work_dir_refused(&s.ext4_dir("e"), $variant)
                });
            }

            #[test]
            fn layers_on_several_mounts() {
                in_private_ns(concat!(stringify!($strategy_mod), "::several_mounts"), |s| {
                    layers_across_mounts(&s.tmpfs_dir("t"), $variant, s)
                });
            }
        }
    )*};
}

suite! {
    detached => Variant::plain(Strategy::Detached),
    auto => Variant::plain(Strategy::Auto),
    private_ns => Variant::plain(Strategy::PrivateNs),
    host_staged => Variant::plain(Strategy::HostStaged),
    // The code paths of kernels before 6.7 (no lowerdir+): one lowerdir=
    // string through fsconfig or, when longer than 255 bytes, mount(2).
    private_ns_legacy => Variant { strategy: Strategy::PrivateNs, missing: &[Feature::OverlayLowerdirPlus], per_layer_clones: false },
    host_staged_legacy => Variant { strategy: Strategy::HostStaged, missing: &[Feature::OverlayLowerdirPlus], per_layer_clones: false },
    // Every layer its own clone (no shared parents).
    detached_per_layer => Variant { strategy: Strategy::Detached, missing: &[], per_layer_clones: true },
    private_ns_per_layer => Variant { strategy: Strategy::PrivateNs, missing: &[], per_layer_clones: true },
}

/// Runs a shell command as `uid:uid` with no supplementary groups.
fn as_user(uid: u32, script: &str) {
    run(std::process::Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "sh", "-c", script]));
}

/// Features that do not depend on the strategy.
mod features {
    use super::*;
    use idoverlay::UserNamespace;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn options_and_mount_flags_reach_the_kernel() {
        in_private_ns("features::options", |s| {
            let dir = s.tmpfs_dir("t");
            let layers = make_layers(&dir);
            let (upper, work, merged) = (dir.join("u"), dir.join("w"), dir.join("m"));
            for d in [&upper, &work, &merged] {
                mkdir(d, 0o755, 0, 0);
            }
            let before = mounts();
            overlay(&dir, &layers.dirs, Variant::plain(Strategy::Auto))
                .upper(&upper)
                .work(&work)
                .options("index=off,redirect_dir=on,nosuid,nodev,noexec")
                .unwrap()
                .mount(&merged)
                .unwrap();
            let added = added(&dir, &before);
            assert_eq!(added.len(), 1);
            let m = &added[0];
            for flag in ["nosuid", "nodev", "noexec"] {
                assert!(m.mount_options.split(',').any(|o| o == flag), "{m:?}");
            }
            assert!(m.super_options.contains("redirect_dir=on"), "{m:?}");
            idoverlay::unmount_overlay(&merged, false).unwrap();
        });
    }

    #[test]
    fn unknown_option_surfaces_the_kernel_message() {
        in_private_ns("features::unknown_option", |s| {
            let dir = s.tmpfs_dir("t");
            let layers = make_layers(&dir);
            let merged = dir.join("m");
            mkdir(&merged, 0o755, 0, 0);
            let err = overlay(&dir, &layers.dirs, Variant::plain(Strategy::Auto))
                .options("frobnicate=1")
                .unwrap()
                .mount(&merged)
                .unwrap_err();
            let text = err.to_string();
            assert_eq!(err.kind(), "invalid_input");
            assert!(text.contains("frobnicate=1"), "{text}");
            assert!(
                text.contains("Unknown parameter"),
                "kernel's own words: {text}"
            );
        });
    }

    #[test]
    fn read_only_flag() {
        in_private_ns("features::read_only", |s| {
            let dir = s.tmpfs_dir("t");
            let layers = make_layers(&dir);
            let (upper, work, merged) = (dir.join("u"), dir.join("w"), dir.join("m"));
            for d in [&upper, &work, &merged] {
                mkdir(d, 0o755, 0, 0);
            }
            overlay(&dir, &layers.dirs, Variant::plain(Strategy::Auto))
                .upper(&upper)
                .work(&work)
                .read_only(true)
                .mount(&merged)
                .unwrap();
            let err = fs::write(merged.join("x"), "x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS));
            idoverlay::unmount_overlay(&merged, false).unwrap();
        });
    }

    #[test]
    fn data_only_layers_are_not_listed() {
        in_private_ns("features::data_layers", |s| {
            let dir = s.tmpfs_dir("t");
            let layers = make_layers(&dir);
            let data = dir.join("data");
            write_file(&data.join("blob"), "payload", 0o644, 1000, 1000);
            let merged = dir.join("m");
            mkdir(&merged, 0o755, 0, 0);
            overlay(&dir, &layers.dirs, Variant::plain(Strategy::Auto))
                .data_lower(&data)
                .options("metacopy=on,redirect_dir=follow")
                .unwrap()
                .mount(&merged)
                .unwrap();
            assert!(merged.join("etc/hostname").exists());
            assert!(
                !merged.join("blob").exists(),
                "data-only layers are not merged in"
            );
            idoverlay::unmount_overlay(&merged, false).unwrap();
        });
    }

    #[test]
    fn idmapped_upper_writes_container_ids_to_disk() {
        in_private_ns("features::idmap_upper", |s| {
            let dir = s.ext4_dir("e");
            let layers = make_layers(&dir);
            let state = dir.join("c1");
            let (upper, work, merged) = (state.join("upper"), state.join("work"), dir.join("m"));
            for d in [&upper, &work, &merged] {
                mkdir(d, 0o755, 0, 0);
            }
            overlay(&dir, &layers.dirs, Variant::plain(Strategy::Auto))
                .upper(&upper)
                .work(&work)
                .idmap_upper(true)
                .mount(&merged)
                .unwrap();
            // The upper's root shows idmapped too.
            assert_eq!(owner(&merged), (100000, 100000));
            // Container root (host 100000) creates a file: on disk it is 0.
            as_user(100000, &format!("echo x > {}/new-file", merged.display()));
            assert_eq!(owner(&merged.join("new-file")), (100000, 100000));
            assert_eq!(
                owner(&upper.join("new-file")),
                (0, 0),
                "on disk in container ids"
            );
            // Container user 1000 (host 101000) changes its file: the copy-up
            // keeps 1000 on disk.
            as_user(
                101000,
                &format!("echo changed > {}/home/app/notes.txt", merged.display()),
            );
            assert_eq!(owner(&upper.join("home/app/notes.txt")), (1000, 1000));
            assert_eq!(
                fs::read_to_string(upper.join("home/app/notes.txt")).unwrap(),
                "changed\n"
            );
            // Host root has no id on the container's disk: the kernel says so.
            let err = fs::write(merged.join("from-host-root"), "x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EOVERFLOW));
            idoverlay::unmount_overlay(&merged, false).unwrap();
        });
    }

    #[test]
    fn userns_from_file_and_pid() {
        in_private_ns("features::userns_file", |s| {
            let dir = s.tmpfs_dir("t");
            let layers = make_layers(&dir);
            let merged = dir.join("m");
            mkdir(&merged, 0o755, 0, 0);
            // A process in a user namespace of its own; its maps (0 → 200000)
            // are written from here, as a runtime's would be.
            let mut child = std::process::Command::new("unshare")
                .args(["--user", "sleep", "30"])
                .spawn()
                .unwrap();
            let ns_file = format!("/proc/{}/ns/user", child.id());
            let own_ns = fs::read_link("/proc/self/ns/user").unwrap();
            let mut ns = None;
            for _ in 0..500 {
                if fs::read_link(&ns_file).is_ok_and(|l| l != own_ns) {
                    // Refused until both maps are written: with none, and
                    // with the uid map alone.
                    for map in ["uid_map", "gid_map"] {
                        let e = UserNamespace::from_pid(child.id()).unwrap_err();
                        assert!(e.to_string().contains("has no uid and gid maps"), "{e}");
                        fs::write(format!("/proc/{}/{map}", child.id()), "0 200000 65536\n")
                            .unwrap();
                    }
                    ns = Some(UserNamespace::from_pid(child.id()).unwrap());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let ns = ns.expect("child's user namespace with maps");
            Overlay::new()
                .lowers(layers.dirs.iter().cloned())
                .userns(ns)
                .mount(&merged)
                .unwrap();
            assert_eq!(owner(&merged.join("etc/hostname")), (200000, 200000));
            assert_eq!(owner(&merged.join("home/app")), (201000, 201000));
            idoverlay::unmount_overlay(&merged, false).unwrap();
            // Opened as /proc/PID/ns/user, its maps are read from that
            // process (for the record of the mount).
            let again = UserNamespace::open(&ns_file).unwrap();
            assert_eq!(
                again.uid_map().map(ToString::to_string).as_deref(),
                Some("0:200000:65536")
            );
            assert_eq!(
                again.gid_map().map(ToString::to_string).as_deref(),
                Some("0:200000:65536")
            );
            child.kill().unwrap();
            child.wait().unwrap();
            // Not a user namespace: a clear refusal.
            let err = UserNamespace::open("/proc/self/ns/mnt").unwrap_err();
            assert!(err.to_string().contains("not a user namespace"), "{err}");
            let err = UserNamespace::open("/etc/hostname").unwrap_err();
            assert!(err.to_string().contains("not a namespace file"), "{err}");
        });
    }

    #[test]
    fn concurrent_assemblies_from_many_threads() {
        in_private_ns("features::concurrent", |s| {
            let dir = s.tmpfs_dir("t");
            let layers = make_layers(&dir);
            let ns = std::sync::Arc::new(UserNamespace::from_maps(&map(), &map()).unwrap());
            let before = mounts();
            std::thread::scope(|scope| {
                for t in 0..8 {
                    let layers = &layers;
                    let dir = &dir;
                    let ns = ns.clone();
                    scope.spawn(move || {
                        for i in 0..10 {
                            let target = dir.join(format!("m-{t}-{i}"));
                            mkdir(&target, 0o755, 0, 0);
                            Overlay::new()
                                .lowers(layers.dirs.iter().cloned())
                                .userns(ns.clone())
                                .mount(&target)
                                .unwrap();
                            assert_eq!(owner(&target.join("srv/data")), (101000, 101000));
                            idoverlay::unmount_overlay(&target, false).unwrap();
                        }
                    });
                }
            });
            assert_eq!(mounts(), before);
        });
    }

    /// The `SigBlk` line of this thread's status: its blocked signals.
    fn blocked_signals() -> String {
        fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .find(|l| l.starts_with("SigBlk:"))
            .unwrap()
            .to_string()
    }

    /// Mounts with a trace and returns the line that says which thread
    /// made the mount(2).
    fn mount_traced(layers: &[PathBuf], target: &Path) -> String {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        Overlay::new()
            .lowers(layers.iter().cloned())
            .idmap(map(), map())
            .trace(std::sync::Arc::new(move |l: &str| {
                sink.lock().unwrap().push(l.to_string())
            }))
            .mount(target)
            .unwrap();
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .find(|l| l.starts_with("mount(2) at the target"))
            .cloned()
            .unwrap_or_else(|| panic!("no mount(2) line in {lines:#?}"))
    }

    /// The working directory is lent only by a thread that has it to
    /// itself, and comes back with the signal mask: the caller's, and every
    /// other thread's, are as they were; otherwise a thread of our own
    /// mounts.
    #[test]
    fn working_directories_and_signal_masks_stay_as_they_were() {
        in_private_ns("features::cwd_kept", |s| {
            let dir = s.tmpfs_dir("t");
            let layers = make_layers(&dir);
            let here = dir.join("here");
            mkdir(&here, 0o755, 0, 0);
            // This test thread has its own fs struct (it unshared the mount
            // namespace): it lends its working directory.
            std::env::set_current_dir(&here).unwrap();
            let mask = blocked_signals();
            let target = dir.join("m1");
            mkdir(&target, 0o755, 0, 0);
            let how = mount_traced(&layers.dirs, &target);
            assert!(how.contains("from this thread"), "{how}");
            assert_eq!(std::env::current_dir().unwrap(), here);
            assert_eq!(blocked_signals(), mask);
            assert_eq!(owner(&target.join("srv/data")), (101000, 101000));
            idoverlay::unmount_overlay(&target, false).unwrap();
            // `assemble` names many layers the same way (fsconfig calls from
            // a working directory in the clone).
            let many: Vec<PathBuf> = (0..30)
                .map(|i| {
                    let l = dir.join(format!("many/l{i:02}"));
                    mkdir(&l, 0o755, 0, 0);
                    write_file(&l.join(format!("f{i}")), "x", 0o644, 1000, 0);
                    l
                })
                .collect();
            let detached = Overlay::new()
                .lowers(many.iter().cloned())
                .idmap(map(), map())
                .assemble()
                .unwrap();
            assert_eq!(std::env::current_dir().unwrap(), here);
            assert_eq!(blocked_signals(), mask);
            detached.attach(&target).unwrap();
            assert_eq!(owner(&target.join("f29")), (101000, 100000));
            idoverlay::unmount_overlay(&target, false).unwrap();
            // A thread sharing it (spawned from this one): a thread of our
            // own mounts, and neither working directory moves.
            let (seen_tx, seen) = std::sync::mpsc::channel();
            let (done_tx, done) = std::sync::mpsc::channel::<()>();
            std::thread::scope(|scope| {
                scope.spawn(move || {
                    seen_tx.send(std::env::current_dir().unwrap()).unwrap();
                    done.recv().unwrap();
                    seen_tx.send(std::env::current_dir().unwrap()).unwrap();
                });
                assert_eq!(seen.recv().unwrap(), here);
                let target = dir.join("m2");
                mkdir(&target, 0o755, 0, 0);
                let how = mount_traced(&layers.dirs, &target);
                assert!(how.contains("from a thread of its own"), "{how}");
                done_tx.send(()).unwrap();
                assert_eq!(seen.recv().unwrap(), here);
                assert_eq!(std::env::current_dir().unwrap(), here);
                assert_eq!(owner(&target.join("srv/data")), (101000, 101000));
                idoverlay::unmount_overlay(&target, false).unwrap();
            });
        });
    }

    /// What overlay itself leaves in a work dir (an emptied work/, a
    /// leftover temporary `#hex` file after a crash, index entries named in
    /// hex) does not make the work dir refused: it can be used again.
    #[test]
    fn a_work_dir_with_overlays_own_leftovers_is_used_again() {
        in_private_ns("features::work_leftovers", |s| {
            let dir = s.tmpfs_dir("t");
            let layers = make_layers(&dir);
            let (upper, work, merged) = (dir.join("u"), dir.join("w"), dir.join("m"));
            for d in [&upper, &merged] {
                mkdir(d, 0o755, 0, 0);
            }
            write_file(&work.join("work/#1f"), "", 0o600, 0, 0);
            write_file(&work.join("index/00fb21"), "", 0o600, 0, 0);
            mkdir(&work.join("incompat"), 0o700, 0, 0);
            let overlay = Overlay::new()
                .lowers(layers.dirs.iter().cloned())
                .upper(&upper)
                .work(&work)
                .idmap(map(), map());
            overlay.mount(&merged).unwrap();
            assert_eq!(owner(&merged.join("srv/data")), (101000, 101000));
            idoverlay::unmount_overlay(&merged, false).unwrap();
            // And once more, after overlay's own use of it.
            overlay.mount(&merged).unwrap();
            idoverlay::unmount_overlay(&merged, false).unwrap();
        });
    }

    /// The inode of the user namespace an fd in this process refers to.
    fn userns_fds(ino: u64) -> usize {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_str() == Some(&format!("user:[{ino}]")))
            .count()
    }

    #[test]
    fn shared_user_namespaces_are_reused_while_held_and_closed_after() {
        if !privileged("features::shared_userns") {
            return;
        }
        // A map no other test uses: the cache is process-wide.
        let odd: IdMap = "0:234567:1000".parse().unwrap();
        let a = UserNamespace::shared(&odd, &odd).unwrap();
        let b = UserNamespace::shared(&odd, &odd).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        let ino = fs::metadata(format!("/proc/self/fd/{}", a.as_fd().as_raw_fd()))
            .unwrap()
            .ino();
        assert_eq!(userns_fds(ino), 1, "one fd for both holders");
        // Different maps get their own namespace.
        let other: IdMap = "0:334567:1000".parse().unwrap();
        let c = UserNamespace::shared(&other, &other).unwrap();
        assert!(!std::sync::Arc::ptr_eq(&a, &c));
        drop((a, b, c));
        assert_eq!(
            userns_fds(ino),
            0,
            "the namespace is closed with its last holder"
        );
        // And a later call makes a working one again.
        let d = UserNamespace::shared(&odd, &odd).unwrap();
        assert_eq!(d.uid_map().unwrap().to_string(), "0:234567:1000");
    }
}
