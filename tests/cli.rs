//! The command line tool, driven as a user would drive it.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn three_ext4_layers(s: &Scratch) -> (Vec<PathBuf>, PathBuf, PathBuf, PathBuf) {
    let dir = s.ext4_dir("e");
    let layers = make_layers(&dir);
    let upper = dir.join("upper");
    let work = dir.join("work");
    let target = dir.join("rootfs");
    for d in [&upper, &work, &target] {
        mkdir(d, 0o755, 0, 0);
    }
    (layers.dirs, upper, work, target)
}

fn mount_args(layers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Vec<String> {
    let mut args = vec!["mount".to_string()];
    for l in layers {
        args.push("--lower".into());
        args.push(l.display().to_string());
    }
    args.extend([
        "--upper".into(),
        upper.display().to_string(),
        "--work".into(),
        work.display().to_string(),
        "--uidmap".into(),
        "0:100000:65536".into(),
        "--gidmap".into(),
        "0:100000:65536".into(),
        target.display().to_string(),
    ]);
    args
}

#[test]
fn mount_three_ext4_layers_and_umount() {
    in_private_ns("cli::mount_three_ext4_layers_and_umount", |s| {
        let (layers, upper, work, target) = three_ext4_layers(s);
        let before = mounts();
        let out = run(idoverlay().args(mount_args(&layers, &upper, &work, &target)));
        assert!(out.stdout.is_empty(), "silent on success without --json");
        let added = new_mounts(&before, &mounts());
        assert_eq!(added.len(), 1, "{added:#?}");
        assert_eq!(added[0].mount_point, target);
        assert_eq!(added[0].fs_type, "overlay");
        assert_eq!(owner(&target.join("etc/hostname")), (100000, 100000));
        assert_eq!(owner(&target.join("home/app/notes.txt")), (101000, 101000));
        std::fs::write(target.join("written"), "x").unwrap();
        assert!(upper.join("written").exists());

        run(idoverlay().arg("umount").arg(&target));
        assert!(new_mounts(&before, &mounts()).is_empty());
        assert_eq!(before.len(), mounts().len());
    });
}

#[test]
fn json_output_for_mount_and_umount() {
    in_private_ns("cli::json_output", |s| {
        let (layers, upper, work, target) = three_ext4_layers(s);
        let mut args = mount_args(&layers, &upper, &work, &target);
        args.insert(1, "--json".into());
        let out = run(idoverlay().args(&args));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["target"], target.display().to_string());
        assert_eq!(v["strategy"], "detached");
        assert_eq!(v["layers"], 3);
        assert_eq!(v["idmap"]["uidmap"], "0:100000:65536");
        let out = run(idoverlay().args(["umount", "--json"]).arg(&target));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["unmounted"], true);
    });
}

#[test]
fn five_hundred_layers_mount_and_501_are_refused_in_one_line() {
    in_private_ns("cli::500_501", |s| {
        let dir = s.ext4_dir("e");
        let mut layers = Vec::new();
        for i in 0..501 {
            let l = dir.join(format!("{i}"));
            mkdir(&l, 0o755, 0, 0);
            write_file(&l.join(format!("f{i}")), "", 0o644, 1000, 1000);
            layers.push(l);
        }
        let target = dir.join("rootfs");
        mkdir(&target, 0o755, 0, 0);
        let before = mounts();
        let args = |n: usize| {
            let mut a = vec!["mount".to_string()];
            for l in &layers[..n] {
                a.push(format!("--lower={}", l.display()));
            }
            a.extend([
                "--uidmap=0:100000:65536".into(),
                "--gidmap=0:100000:65536".into(),
            ]);
            a.push(target.display().to_string());
            a
        };
        let out = idoverlay().args(args(501)).output().unwrap();
        assert!(!out.status.success());
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.contains("501 layers") && err.contains("at most 500"),
            "{err}"
        );
        assert!(new_mounts(&before, &mounts()).is_empty());

        run(idoverlay().args(args(500)));
        assert_eq!(owner(&target.join("f499")), (101000, 101000));
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 500);
        run(idoverlay().arg("umount").arg(&target));
        assert!(new_mounts(&before, &mounts()).is_empty());
    });
}

#[test]
fn demo_runs_and_leaves_nothing() {
    in_private_ns("cli::demo", |s| {
        let base = s.tmpfs_dir("demo-base");
        let before = mounts();
        let out = run(idoverlay().arg("demo").arg("--base").arg(&base));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("100000:100000"), "{text}");
        assert!(text.contains("101000:101000"), "{text}");
        assert_eq!(
            std::fs::read_dir(&base).unwrap().count(),
            0,
            "demo removed all it made"
        );
        assert_eq!(mounts().len(), before.len());

        let out = run(idoverlay().args(["demo", "--json", "--base"]).arg(&base));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["files"][0]["on_disk"]["uid"], 0);
        assert_eq!(v["files"][0]["through_mount"]["uid"], 100000);
        assert_eq!(v["write_landed_in_upper"], true);
        assert_eq!(v["unmounted"], true);

        // A reader that went away does not cut the demo short: it still
        // removes all it made, and ends well.
        for args in [&["demo"][..], &["demo", "--json"]] {
            let (reader, writer) = rustix::pipe::pipe().unwrap();
            drop(reader);
            let out = idoverlay()
                .args(args)
                .arg("--base")
                .arg(&base)
                .stdout(std::process::Stdio::from(writer))
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
            assert_eq!(std::fs::read_dir(&base).unwrap().count(), 0, "{args:?}");
            assert_eq!(mounts().len(), before.len(), "{args:?}");
        }
    });
}

/// A base another user can rename in (a directory of uid 1000's, as
/// their home is) is refused before anything is made: the demo names its
/// files by path, and swapping its directory for a symlink there led its
/// unmount to another overlay and its removals to files it never made (a
/// reviewer's script: 20 of 20, 5 of 5). A sticky world-writable base of
/// root's, as /tmp, is fine.
#[test]
fn demo_refuses_a_base_others_can_rename_in() {
    in_private_ns("cli::demo_base", |s| {
        let before = mounts();
        let theirs = s.tmpfs_dir("demo-theirs");
        let base = theirs.join("base");
        mkdir(&base, 0o755, 1000, 1000);
        for base in [&theirs.join("base"), &base.join("..").join("base")] {
            let out = idoverlay()
                .arg("demo")
                .arg("--base")
                .arg(base)
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains("--base") && err.contains("uid 1000"), "{err}");
            assert_eq!(std::fs::read_dir(base).unwrap().count(), 0, "{err}");
        }
        // Beneath it too: its entries are uid 1000's to rename.
        let below = base.join("below");
        mkdir(&below, 0o755, 0, 0);
        let out = idoverlay()
            .arg("demo")
            .arg("--base")
            .arg(&below)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(std::fs::read_dir(&below).unwrap().count(), 0);
        let sticky = s.tmpfs_dir("demo-sticky");
        run(std::process::Command::new("chmod").arg("1777").arg(&sticky));
        run(idoverlay().arg("demo").arg("--base").arg(&sticky));
        assert_eq!(std::fs::read_dir(&sticky).unwrap().count(), 0);
        assert_eq!(mounts().len(), before.len());
    });
}

#[test]
fn umount_refuses_what_is_not_an_overlay() {
    in_private_ns("cli::umount_refuses", |s| {
        let dir = s.tmpfs_dir("plain");
        let before = mounts();
        // The scratch tmpfs is a mount, but not an overlay.
        let out = idoverlay().arg("umount").arg(&s.root).output().unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("not an overlay"), "{}", stderr(&out));
        let out = idoverlay().arg("umount").arg(&dir).output().unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("not a mount point"),
            "{}",
            stderr(&out)
        );
        assert_eq!(mounts(), before);
    });
}

#[test]
fn errors_are_one_line_and_json_when_asked() {
    in_private_ns("cli::errors", |s| {
        let dir = s.tmpfs_dir("t");
        let layers = make_layers(&dir);
        let target = dir.join("rootfs");
        mkdir(&target, 0o755, 0, 0);
        let l = layers.dirs[0].display().to_string();
        let t = target.display().to_string();
        let out = idoverlay()
            .args([
                "mount",
                "--json",
                "--lower",
                &l,
                "--uidmap",
                "0:100000:0",
                "--gidmap",
                "0:100000:1",
                &t,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("--uidmap") && err.contains("size 0"), "{err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "invalid_input");
        assert!(v["error"]["message"].as_str().unwrap().contains("size 0"));
    });
}

#[test]
fn data_layers_from_flags_join_lower_layers_from_o() {
    in_private_ns("cli::data_lower", |s| {
        let dir = s.tmpfs_dir("d");
        let layers = make_layers(&dir.join("layers")).dirs;
        let data = dir.join("data");
        write_file(&data.join("blob"), "only by redirect", 0o644, 0, 0);
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let lowerdir = format!("lowerdir={}:{}", layers[0].display(), layers[1].display());
        let out = idoverlay()
            .args(["mount", "-o", &lowerdir, "--data-lower"])
            .arg(&data)
            .args(["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"])
            .arg(&target)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let m = mounts()
            .into_iter()
            .find(|m| m.mount_point == target)
            .expect("mounted");
        // Two lower layers, then the data layer after `::` (or as datadir+).
        assert!(
            m.super_options.contains("::") || m.super_options.contains("datadir+"),
            "the data layer is not in the overlay: {}",
            m.super_options
        );
        run(std::process::Command::new("umount").arg(&target));
        // Given both ways, data layers are refused as given twice.
        let datadir = format!("{lowerdir},datadir+={}", data.display());
        let out = idoverlay()
            .args(["mount", "-o", &datadir, "--data-lower"])
            .arg(&data)
            .args(["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"])
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("data layers"), "{}", stderr(&out));
        assert!(mounts().iter().all(|m| m.mount_point != target));
    });
}

/// Relative paths as mount(8) and umount(8) take them: from the working
/// directory, read once (runc's `root.path` defaults to the relative
/// `rootfs`). The target, layers, upper and work in the flag form and in
/// `-o lowerdir=…`; what is reported (JSON `target`, the mount table)
/// shows the absolute path.
#[test]
fn relative_paths_from_the_working_directory() {
    in_private_ns("cli::relative_paths", |s| {
        let (layers, upper, work, target) = three_ext4_layers(s);
        let dir = target.parent().unwrap().to_path_buf();
        let rel = |p: &Path| p.strip_prefix(&dir).unwrap().to_path_buf();
        let before = mounts();
        let mut args = mount_args(
            &layers.iter().map(|l| rel(l)).collect::<Vec<_>>(),
            &rel(&upper),
            &rel(&work),
            Path::new("rootfs/"),
        );
        args.insert(1, "--json".into());
        let out = run(idoverlay().current_dir(&dir).args(&args));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["target"], target.display().to_string());
        let added = new_mounts(&before, &mounts());
        assert_eq!(added.len(), 1, "{added:#?}");
        assert_eq!(added[0].mount_point, target);
        assert_eq!(added[0].fs_type, "overlay");
        assert_eq!(owner(&target.join("etc/hostname")), (100000, 100000));
        std::fs::write(target.join("written"), "x").unwrap();
        assert!(upper.join("written").exists());
        let out = run(idoverlay()
            .current_dir(&dir)
            .args(["umount", "--json", "rootfs"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["target"], target.display().to_string());
        assert!(new_mounts(&before, &mounts()).is_empty());

        // The mount(8) form, from a directory below: `..` is the kernel's.
        let inner = dir.join("inner");
        mkdir(&inner, 0o755, 0, 0);
        let lowerdir = layers
            .iter()
            .map(|l| format!("../{}", rel(l).display()))
            .collect::<Vec<_>>()
            .join(":");
        run(idoverlay().current_dir(&inner).args([
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!(
                "lowerdir={lowerdir},upperdir=../{},workdir=../{},uidmap=0:100000:65536,\
                 gidmap=0:100000:65536",
                rel(&upper).display(),
                rel(&work).display()
            ),
            "../rootfs",
        ]));
        let added = new_mounts(&before, &mounts());
        assert_eq!(added.len(), 1, "{added:#?}");
        assert_eq!(added[0].mount_point, target);
        assert!(target.join("written").exists(), "the same upper dir");
        run(idoverlay().current_dir(&dir).args(["umount", "./rootfs/."]));
        assert!(new_mounts(&before, &mounts()).is_empty());

        // A relative target that is a symlink is refused as an absolute
        // one is, however spelled.
        std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
        for spelling in ["link", "link/", "link/.", "link//"] {
            let mut args = mount_args(&layers, &upper, &work, Path::new(spelling));
            args.remove(0);
            let out = idoverlay()
                .current_dir(&dir)
                .arg("mount")
                .args(&args)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{spelling}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains(&format!("{:?}", dir.join("link"))) && err.contains("symlink"),
                "{spelling}: {err}"
            );
            assert!(new_mounts(&before, &mounts()).is_empty(), "{spelling}");
        }
    });
}

/// A working directory whose name another user can redirect (`x` in
/// uid 1000's `alice`, swapped with alice's own `y` in a loop): relative
/// paths are refused in one line, as a name joined with it could lead to
/// alice's layers, and nothing is mounted; the kernel (plain overlay)
/// would resolve them from the working directory itself. From a
/// directory only root can rename, the same paths mount.
#[test]
fn relative_paths_from_a_working_directory_others_can_rename_are_refused() {
    in_private_ns("cli::relative_renamable", |s| {
        let dir = s.tmpfs_dir("c");
        let alice = dir.join("alice");
        mkdir(&alice, 0o755, 1000, 1000);
        for (d, says) in [("x", "root's layer"), ("y", "alice's layer")] {
            write_file(&alice.join(d).join("l1/f"), says, 0o644, 0, 0);
            mkdir(&alice.join(d).join("l2"), 0o755, 0, 0);
        }
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let mount = |cwd: &Path| {
            idoverlay()
                .current_dir(cwd)
                .args(["mount", "-t", "overlay", "overlay", "-o"])
                .arg("lowerdir=l2:l1,uidmap=0:100000:65536,gidmap=0:100000:65536")
                .arg(&target)
                .output()
                .unwrap()
        };
        let before = mounts();
        let swapper = Swapper::start(&alice, "x", "y");
        swapper.resume();
        for _ in 0..20 {
            let out = mount(&alice.join("x"));
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.contains("is a relative path") && err.contains("others could rename"),
                "{err}"
            );
            assert!(new_mounts(&before, &mounts()).is_empty());
        }
        assert!(swapper.pause());
        drop(swapper);
        // The same from a directory only root can rename: mounted.
        let root_only = dir.join("root-only");
        write_file(&root_only.join("l1/f"), "root's layer", 0o644, 0, 0);
        mkdir(&root_only.join("l2"), 0o755, 0, 0);
        let out = mount(&root_only);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(target.join("f")).unwrap(),
            "root's layer"
        );
        run(idoverlay().arg("umount").arg(&target));
    });
}

/// `idoverlay list | head -1`: a reader that is gone ends the command with
/// status 0 and nothing on stderr, for lines (probe, list) and for the
/// completion script, where println! panicked before.
#[test]
fn a_closed_stdout_ends_quietly() {
    for args in [
        &["probe"][..],
        &["probe", "--json"],
        &["list", "--json"],
        &["completions", "bash"],
    ] {
        // The read end is closed before the child starts: its first write
        // gets EPIPE.
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        drop(reader);
        let out = idoverlay()
            .args(args)
            .env("IDOVERLAY_STATE_DIR", "/nonexistent-idoverlay-state")
            .stdout(std::process::Stdio::from(writer))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
    // A stdout that cannot be written for another reason fails the command
    // in one line.
    let out = idoverlay()
        .args(["probe", "--json"])
        .stdout(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot write to standard output"), "{err}");
}
