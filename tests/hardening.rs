//! Misuse that is not a path race: files that are not what they claim
//! (`/dev/zero`, a FIFO, a huge file), maps given twice in different ways,
//! an upper/work pair another overlay uses, a target where no overlay
//! belongs, an unmount raced onto another mount, a set-uid copy of the
//! binary, a caller inside a user namespace.

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use idoverlay::{IdMap, Overlay, Strategy};

const MAP: &str = "0:100000:65536";

fn map() -> IdMap {
    MAP.parse().unwrap()
}

/// Runs the CLI with a guard against hanging (not a timing assertion: the
/// bound is far above any real run), returning its output.
fn cli_bounded(args: &[OsString]) -> std::process::Output {
    let mut child = idoverlay()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("idoverlay {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

/// One line on stderr, the exit status, and nothing mounted.
fn refused(out: &std::process::Output, status: i32, says: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(status), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    for s in says {
        assert!(err.contains(s), "{err:?} does not say {s:?}");
    }
}

#[test]
fn files_that_are_not_what_they_claim_are_refused_without_reading_them() {
    in_private_ns("hardening::files", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let fifo = dir.join("fifo");
        run(Command::new("mkfifo").arg(&fifo));
        let huge = dir.join("huge.json");
        let f = fs::File::create(&huge).unwrap();
        f.set_len(8 << 20).unwrap();
        // A device whose open would act (a watchdog's arms it): never opened.
        let device = dir.join("device");
        let watch = OpenWatch::on_new_null_device(&device);
        let before = mounts();
        let mount_layers = || {
            let mut args: Vec<OsString> = vec!["mount".into()];
            for l in &layers {
                args.push("--lower".into());
                args.push(l.into());
            }
            args
        };
        let maps = || -> Vec<OsString> {
            ["--uidmap", MAP, "--gidmap", MAP]
                .into_iter()
                .map(Into::into)
                .collect()
        };
        for flag in ["--oci-config", "--probe-report"] {
            for (file, says) in [
                (
                    Path::new("/dev/zero"),
                    "a character device, not a regular file",
                ),
                (fifo.as_path(), "a FIFO, not a regular file"),
                (device.as_path(), "a character device, not a regular file"),
                (huge.as_path(), "larger than"),
                (dir.as_path(), "a directory, not a regular file"),
            ] {
                let mut args = mount_layers();
                if flag == "--probe-report" {
                    args.extend(maps());
                }
                args.extend([flag.into(), file.into(), target.clone().into()]);
                let out = cli_bounded(&args);
                refused(&out, 2, &[says, &file.display().to_string()]);
            }
        }
        // A FIFO or a device where a user namespace or mount namespace file
        // should be.
        for file in [&fifo, &device] {
            let mut userns = mount_layers();
            userns.extend(["--userns".into(), file.into(), target.clone().into()]);
            refused(&cli_bounded(&userns), 2, &["not a namespace"]);
            let mut ns = mount_layers();
            ns.extend(maps());
            ns.extend(["-N".into(), file.into(), target.clone().into()]);
            refused(&cli_bounded(&ns), 2, &["not a mount namespace"]);
        }
        assert!(new_mounts(&before, &mounts()).is_empty());
        assert_eq!(watch.opens(), 0, "the device was opened");
    });
}

#[test]
fn maps_given_twice_in_different_ways_are_refused_naming_both() {
    in_private_ns("hardening::maps", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let lowerdir = format!("lowerdir={}:{}", layers[0].display(), layers[1].display());
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        for (options, both) in [
            (
                format!("{lowerdir},uidmap={MAP},uidmap=0:200000:65536,gidmap={MAP}"),
                ["uidmap=0:100000:65536", "uidmap=0:200000:65536"],
            ),
            (
                format!("{lowerdir},uidmap={MAP},gidmap={MAP},X-mount.idmap=b:0:200000:65536"),
                ["uidmap=0:100000:65536", "X-mount.idmap=b:0:200000:65536"],
            ),
            (
                format!("{lowerdir},idmap=b:0:100000:65536,X-mount.idmap=b:0:200000:65536"),
                ["idmap=b:0:100000:65536", "X-mount.idmap=b:0:200000:65536"],
            ),
        ] {
            let out = idoverlay()
                .args(["mount", "-t", "overlay", "overlay", "-o", &options])
                .arg(&target)
                .output()
                .unwrap();
            refused(&out, 2, &both);
        }
        // The same map twice is only said twice.
        let out = idoverlay()
            .args(["mount", "-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "{lowerdir},uidmap={MAP},gidmap={MAP},idmap=b:{MAP}"
            ))
            .arg(&target)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        run(idoverlay().arg("umount").arg(&target));
    });
}

#[test]
fn an_upper_or_work_dir_in_use_by_another_overlay_is_refused() {
    in_private_ns("hardening::in_use", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let pair = |name: &str| {
            let (u, w) = (
                dir.join(format!("{name}/upper")),
                dir.join(format!("{name}/work")),
            );
            mkdir(&u, 0o755, 0, 0);
            mkdir(&w, 0o755, 0, 0);
            (u, w)
        };
        let (u1, w1) = pair("c1");
        let (u2, w2) = pair("c2");
        let target = |name: &str| {
            let t = dir.join(name);
            mkdir(&t, 0o755, 0, 0);
            t
        };
        let (t1, t2) = (target("t1"), target("t2"));
        // Seen through a bind mount too: by identity, not by name.
        let alias = target("alias");
        run(Command::new("mount")
            .arg("--bind")
            .arg(dir.join("c1"))
            .arg(&alias));
        let overlay = |u: &Path, w: &Path, strategy| {
            Overlay::new()
                .lowers(layers.iter().cloned())
                .upper(u)
                .work(w)
                .idmap(map(), map())
                .strategy(strategy)
                .state_dir(dir.join("state"))
        };
        for first in [
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            overlay(&u1, &w1, first).mount(&t1).unwrap();
            // One claim per dir, naming the same mount but not identical:
            // ext4 shares one xattr block between inodes whose xattrs are
            // identical, and rewriting a shared block costs a copy and a
            // discard at every mount.
            let claim = |d: &Path| {
                let mut buf = [0u8; 128];
                let n = rustix::fs::getxattr(d, "trusted.idoverlay.mount", &mut buf[..])
                    .unwrap_or_else(|e| panic!("claim on {}: {e}", d.display()));
                String::from_utf8(buf[..n].to_vec()).unwrap()
            };
            let (cu, cw) = (claim(&u1), claim(&w1));
            // `idoverlay1 BOOT uID ROLE nsID`: the role word alone differs.
            let words = |c: &str| c.split(' ').map(str::to_string).collect::<Vec<_>>();
            let (mut wu, mut ww) = (words(&cu), words(&cw));
            assert_eq!(
                (wu[3].as_str(), ww[3].as_str()),
                ("upper", "work"),
                "{cu} / {cw}"
            );
            wu.remove(3);
            ww.remove(3);
            assert_eq!(wu, ww, "{cu} / {cw}");
            // What the first overlay has in flight in its work dir (a
            // copy-up's temporary file): a second overlay on that work dir
            // would empty work/ as it mounts, even if taken down at once.
            let in_flight = w1.join("work/#99");
            write_file(&in_flight, "copy-up in flight", 0o644, 0, 0);
            for second in [
                Strategy::Detached,
                Strategy::PrivateNs,
                Strategy::HostStaged,
            ] {
                let before = mounts();
                for (u, w, busy) in [
                    (&u1, &w2, &u1),
                    (&u2, &w1, &w1),
                    (
                        &alias.join("upper"),
                        &alias.join("other-work"),
                        &alias.join("upper"),
                    ),
                ] {
                    mkdir(&dir.join("c1/other-work"), 0o755, 0, 0);
                    let e = overlay(u, w, second).mount(&t2).unwrap_err();
                    let text = e.to_string();
                    assert!(
                        text.contains("in use") && text.contains(&busy.display().to_string()),
                        "{first} then {second}: {text}"
                    );
                    assert!(text.contains(&t1.display().to_string()), "{text}");
                    assert!(!text.contains('\n'));
                    assert_eq!(e.kind(), "invalid_input");
                    assert!(new_mounts(&before, &mounts())
                        .iter()
                        .all(|m| m.source == "idoverlay-state"));
                }
            }
            assert!(
                in_flight.exists(),
                "{first}: the first overlay's work dir was emptied"
            );
            fs::remove_file(&in_flight).unwrap();
            idoverlay::unmount_overlay(&t1, false).unwrap();
            // Free again once that overlay is gone.
            overlay(&u1, &w2, first).mount(&t2).unwrap();
            idoverlay::unmount_overlay(&t2, false).unwrap();
        }
        // An overlay idoverlay did not make counts the same (on a pair no
        // overlay of idoverlay's used in this boot: for one that did, the
        // mount table is not searched, see strategy/in_use.rs).
        let (u3, w3) = pair("c3");
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                layers[0].display(),
                u3.display(),
                w3.display()
            ))
            .arg(&t1));
        for (u, w) in [(&u3, &w2), (&u2, &w3)] {
            let e = overlay(u, w, Strategy::Auto).mount(&t2).unwrap_err();
            assert!(e.to_string().contains("in use"), "{e}");
        }
        run(Command::new("umount").arg(&t1));
        run(Command::new("umount").arg(&alias));
    });
}

#[test]
fn targets_where_no_overlay_belongs_are_refused() {
    in_private_ns("hardening::targets", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let (upper, work) = (dir.join("c/upper"), dir.join("c/work"));
        mkdir(&upper, 0o755, 0, 0);
        mkdir(&work, 0o755, 0, 0);
        mkdir(&upper.join("sub"), 0o755, 0, 0);
        let state = dir.join("state");
        mkdir(&state.join("sub"), 0o700, 0, 0);
        mkdir(&state, 0o700, 0, 0);
        let inside_layer = layers[2].join("etc");
        for (strategy, target, says) in [
            (Strategy::Detached, inside_layer.clone(), "layer 3"),
            (Strategy::PrivateNs, layers[0].clone(), "layer 1"),
            (Strategy::HostStaged, upper.clone(), "upper dir"),
            (Strategy::Detached, upper.join("sub"), "upper dir"),
            (Strategy::Detached, work.clone(), "work dir"),
            (Strategy::Detached, state.join("sub"), "state dir"),
        ] {
            let before = mounts();
            let e = Overlay::new()
                .lowers(layers.iter().cloned())
                .upper(&upper)
                .work(&work)
                .idmap(map(), map())
                .strategy(strategy)
                .state_dir(&state)
                .mount(&target)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("target") && e.contains(says),
                "{}: {e}",
                target.display()
            );
            assert!(new_mounts(&before, &mounts())
                .iter()
                .all(|m| m.source == "idoverlay-state"));
        }
    });
}

#[test]
fn umount_takes_only_an_overlay_root_and_exactly_the_one_it_checked() {
    in_private_ns("hardening::umount", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        // An overlay at x/a/t and a tmpfs at x/b/t; a thread exchanges a
        // and b (whose entries are mount points, but which are not).
        let x = dir.join("x");
        let (a_t, b_t) = (x.join("a/t"), x.join("b/t"));
        mkdir(&a_t, 0o755, 0, 0);
        mkdir(&b_t, 0o755, 0, 0);
        run(Command::new("mount")
            .args(["-t", "tmpfs", "bystander"])
            .arg(&b_t));
        let bystander = mounts()
            .into_iter()
            .find(|m| m.mount_point == b_t)
            .unwrap()
            .mount_id;
        let swapper = Swapper::start(&x, "a", "b");
        let mut unmounted = 0;
        for round in 0..300 {
            Overlay::new()
                .lowers(layers.iter().cloned())
                .idmap(map(), map())
                .mount(&a_t)
                .unwrap();
            swapper.resume();
            let result = idoverlay::unmount_overlay(&a_t, round % 2 == 1);
            assert!(swapper.pause(), "names stuck");
            assert!(
                mounts().iter().any(|m| m.mount_id == bystander),
                "round {round}: the other mount was unmounted ({result:?})"
            );
            match result {
                Ok(()) => unmounted += 1,
                Err(e) => {
                    assert!(!e.to_string().contains('\n'));
                    idoverlay::unmount_overlay(&a_t, false).unwrap();
                }
            }
            assert!(
                mounts().iter().all(|m| m.fs_type != "overlay"),
                "round {round}"
            );
        }
        eprintln!(
            "umount race: {unmounted} of 300 unmounted at once, {} swaps",
            swapper.swaps()
        );
        assert!(unmounted > 0);
        drop(swapper);
        // A bind mount of a directory inside an overlay is not the overlay.
        let t = dir.join("t");
        mkdir(&t, 0o755, 0, 0);
        Overlay::new()
            .lowers(layers.iter().cloned())
            .idmap(map(), map())
            .mount(&t)
            .unwrap();
        let bind = dir.join("bind");
        mkdir(&bind, 0o755, 0, 0);
        run(Command::new("mount")
            .arg("--bind")
            .arg(t.join("home"))
            .arg(&bind));
        let out = idoverlay().arg("umount").arg(&bind).output().unwrap();
        refused(&out, 2, &["bind mount of a directory inside an overlay"]);
        assert!(mounts().iter().any(|m| m.mount_point == bind));
        run(Command::new("umount").arg(&bind));
        idoverlay::unmount_overlay(&t, false).unwrap();
        run(Command::new("umount").arg(&b_t));
    });
}

/// A mount put on the overlay between umount's last look and its
/// umount(2) (which takes the top mount at a name) is what goes: the
/// umount says so and fails, rather than report the overlay unmounted.
/// strace holds the process at its umount(2) for two seconds while the
/// test mounts a tmpfs there (a CLI reaches it within milliseconds: had
/// the tmpfs come before the last look, that look would refuse, also a
/// failure with the overlay still there).
#[test]
fn a_mount_put_on_the_overlay_while_it_is_unmounted_is_reported() {
    in_private_ns("hardening::umount_stacked", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let t = dir.join("t");
        mkdir(&t, 0o755, 0, 0);
        Overlay::new()
            .lowers(layers.iter().cloned())
            .idmap(map(), map())
            .mount(&t)
            .unwrap();
        let umount = Command::new("strace")
            .args([
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "inject=umount2:delay_enter=2000000",
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_idoverlay"))
            .arg("umount")
            .arg(&t)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        run(Command::new("mount")
            .args(["-t", "tmpfs", "stacked"])
            .arg(&t));
        let out = umount.wait_with_output().unwrap();
        let at_t: Vec<String> = mounts()
            .into_iter()
            .filter(|m| m.mount_point == t)
            .map(|m| m.fs_type)
            .collect();
        assert_eq!(at_t, ["overlay"], "{}", stderr(&out));
        refused(&out, 2, &["target"]);
        idoverlay::unmount_overlay(&t, false).unwrap();
    });
}

#[test]
fn a_set_uid_copy_refuses_to_run() {
    in_private_ns("hardening::setuid", |s| {
        let dir = s.tmpfs_dir("h");
        // The scratch tmpfs is mounted nosuid? No: a plain tmpfs honours it.
        let copy = dir.join("idoverlay-suid");
        copy_of_the_binary(&copy);
        run(Command::new("chmod").arg("u+s,a+rx").arg(&copy));
        let helper = dir.join("mount.idoverlay");
        std::os::unix::fs::symlink(&copy, &helper).unwrap();
        let secret = dir.join("secret");
        write_file(&secret.join("shadow"), "root only", 0o600, 0, 0);
        let target = dir.join("t");
        mkdir(&target, 0o777, 0, 0);
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let as_nobody = |program: &Path, args: &[&str]| {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(program)
                .args(args)
                .output()
                .unwrap()
        };
        // Root's 0600 file, shown as owned by the caller through a map of
        // the caller's choice: what a set-uid copy would give away.
        mkdir(&dir.join("empty"), 0o755, 0, 0);
        let lowers = format!(
            "lowerdir={}:{},uidmap=0:65534:1,gidmap=0:65534:1",
            secret.display(),
            dir.join("empty").display()
        );
        let out = as_nobody(
            &copy,
            &[
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                &lowers,
                target.to_str().unwrap(),
            ],
        );
        refused(&out, 4, &["set-uid"]);
        let out = as_nobody(
            &helper,
            &["overlay", target.to_str().unwrap(), "-o", &lowers],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.starts_with("mount.idoverlay: refusing"), "{err}");
        assert!(mounts().iter().all(|m| m.mount_point != target));
    });
}

#[test]
fn inside_a_user_namespace_own_filesystems_work_and_host_ones_are_refused_clearly() {
    in_private_ns("hardening::userns", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let bin = env!("CARGO_BIN_EXE_idoverlay");
        // A user namespace (root inside is this uid) with its own mount
        // namespace: the host's tmpfs is not its to idmap...
        let script = format!(
            "{bin} mount --lower {l1} --lower {l2} --uidmap 0:0:1 --gidmap 0:0:1 {t}; echo \"status $?\" >&2; \
             mkdir -p {own} && mount -t tmpfs own {own} && mkdir {own}/a {own}/b {own}/t && \
             touch {own}/a/from-a && {bin} mount --lower {own}/a --lower {own}/b --uidmap 0:0:1 --gidmap 0:0:1 {own}/t && \
             ls {own}/t",
            l1 = layers[0].display(),
            l2 = layers[1].display(),
            t = target.display(),
            own = dir.join("own").display(),
        );
        let out = Command::new("unshare")
            .env("IDOVERLAY_PROBE_CACHE", "off")
            .args(["-Urm", "sh", "-c", &script])
            .output()
            .unwrap();
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0].contains("user namespace") && lines[0].contains("run idoverlay on the host"),
            "{err}"
        );
        assert_eq!(lines[1], "status 4", "{err}");
        // ...while a tmpfs it mounted itself is.
        assert!(out.status.success(), "{err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-a");
        assert!(mounts().iter().all(|m| m.mount_point != target));
    });
}

#[test]
fn a_work_dir_changing_while_it_is_checked_is_refused_as_in_use() {
    use std::sync::atomic::{AtomicBool, Ordering};
    in_private_ns("hardening::work_changing", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        mkdir(&upper, 0o755, 0, 0);
        mkdir(&work.join("index"), 0o755, 0, 0);
        // What overlay does in a work dir it uses: its temporary names
        // (`#` and hex) come and go; in index/, which an overlay mounted
        // without `index=on` leaves alone (the kernel refuses a mount
        // whose work/ changes as it empties it, a race of its own).
        let stop = AtomicBool::new(false);
        let (mut mounted, mut changed, mut other) = (0, 0, Vec::new());
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let temp = work.join("index/#1f");
                while !stop.load(Ordering::Relaxed) {
                    let _ = fs::create_dir(&temp);
                    let _ = fs::remove_dir(&temp);
                }
            });
            for _ in 0..1000 {
                let result = Overlay::new()
                    .lowers(layers.iter().cloned())
                    .upper(&upper)
                    .work(&work)
                    .idmap(map(), map())
                    .strategy(Strategy::Detached)
                    .state_dir(dir.join("state"))
                    .mount(&target);
                match result {
                    Ok(_) => {
                        mounted += 1;
                        idoverlay::unmount_overlay(&target, false).unwrap();
                    }
                    Err(e) if e.to_string().contains("changed while it was checked") => {
                        assert_eq!(e.kind(), idoverlay::ErrorKind::InvalidInput, "{e}");
                        assert!(!e.to_string().contains('\n'));
                        changed += 1;
                    }
                    Err(e) => other.push(e.to_string()),
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        eprintln!(
            "{mounted} mounted, {changed} refused as changing, {} otherwise",
            other.len()
        );
        assert!(
            other.is_empty(),
            "{} refused otherwise, e.g. {}",
            other.len(),
            other[0]
        );
        assert!(!mounts().iter().any(|m| m.mount_point == target));
    });
}

#[test]
fn a_work_dir_holding_anything_overlay_did_not_leave_is_refused_and_kept() {
    in_private_ns("hardening::work_contents", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let attempt = |name: &str, plant: &dyn Fn(&Path), says: &str| {
            let c = dir.join(name);
            mkdir(&c.join("upper"), 0o755, 0, 0);
            mkdir(&c.join("work"), 0o755, 0, 0);
            plant(&c.join("work"));
            for strategy in [
                Strategy::Detached,
                Strategy::PrivateNs,
                Strategy::HostStaged,
            ] {
                let print = fingerprint(&c.join("work"));
                let before = mounts();
                let e = Overlay::new()
                    .lowers(layers.iter().cloned())
                    .upper(c.join("upper"))
                    .work(c.join("work"))
                    .idmap(map(), map())
                    .strategy(strategy)
                    .state_dir(dir.join("state"))
                    .mount(&target)
                    .expect_err(name)
                    .to_string();
                assert!(
                    e.contains("work dir") && e.contains(says),
                    "{name} {strategy}: {e}"
                );
                assert!(!e.contains('\n'));
                assert!(new_mounts(&before, &mounts())
                    .iter()
                    .all(|m| m.source == "idoverlay-state"));
                assert_eq!(
                    fingerprint_diff(&print, &fingerprint(&c.join("work"))),
                    Vec::<String>::new(),
                    "{name} {strategy}: the work dir changed"
                );
            }
        };
        // Files inside directories named like overlay's temporaries.
        attempt(
            "hex-dir",
            &|w| write_file(&w.join("work/#1a/precious"), "keep", 0o644, 0, 0),
            "work/#1a/precious",
        );
        attempt(
            "index-hex-dir",
            &|w| write_file(&w.join("index/#2b/precious"), "keep", 0o644, 0, 0),
            "index/#2b/precious",
        );
        // A mount on work/, on index/, on an entry of work/: the check would
        // read the mounted directory, overlay empties the one beneath.
        let mount_on = |at: &Path| {
            write_file(&at.join("beneath"), "keep", 0o644, 0, 0);
            run(Command::new("mount").args(["-t", "tmpfs", "cover"]).arg(at));
        };
        attempt(
            "work-mounted",
            &|w| mount_on(&w.join("work")),
            "mount point",
        );
        attempt(
            "index-mounted",
            &|w| mount_on(&w.join("index")),
            "mount point",
        );
        attempt(
            "entry-mounted",
            &|w| mount_on(&w.join("work/#3c")),
            "mount point",
        );
        for name in ["work-mounted", "index-mounted"] {
            let sub = if name == "work-mounted" {
                "work"
            } else {
                "index"
            };
            let at = dir.join(name).join("work").join(sub);
            run(Command::new("umount").arg(&at));
            assert!(at.join("beneath").exists(), "{name}");
        }
        let at = dir.join("entry-mounted/work/work/#3c");
        run(Command::new("umount").arg(&at));
        assert!(at.join("beneath").exists());
        // What a crash leaves is overlay's own: a temporary dir of whiteouts.
        let c = dir.join("crashed");
        mkdir(&c.join("upper"), 0o755, 0, 0);
        mkdir(&c.join("work/work/#4d"), 0o755, 0, 0);
        run(Command::new("mknod")
            .arg(c.join("work/work/#4d/gone"))
            .args(["c", "0", "0"]));
        Overlay::new()
            .lowers(layers.iter().cloned())
            .upper(c.join("upper"))
            .work(c.join("work"))
            .idmap(map(), map())
            .mount(&target)
            .unwrap();
        idoverlay::unmount_overlay(&target, false).unwrap();
    });
}

#[test]
fn parameters_never_name_layers_maps_or_the_source() {
    in_private_ns("hardening::params", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        write_file(&dir.join("secret/shadow"), "root's", 0o600, 0, 0);
        write_file(&dir.join("victim/work/precious"), "keep", 0o644, 0, 0);
        mkdir(&dir.join("c/upper"), 0o755, 0, 0);
        mkdir(&dir.join("c/work"), 0o755, 0, 0);
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let secret = dir.join("secret").display().to_string();
        let victim = dir.join("victim").display().to_string();
        // A key that holds a `=` (or a comma, a backslash, a space) is no
        // key: on mount(2)'s string (a lower-only detached mount) it would
        // be a whole option of its own, a layer neither idmapped nor
        // checked.
        let smuggled_lower = format!("lowerdir={secret}:{}", layers[0].display());
        let smuggled_upper = format!("upperdir={victim}/u");
        for (key, value) in [
            ("lowerdir+", Some(secret.as_str())),
            ("lowerdir", Some(secret.as_str())),
            ("datadir+", Some(secret.as_str())),
            ("workdir", Some(victim.as_str())),
            ("upperdir", Some(victim.as_str())),
            ("uidmap", Some("0:0:1")),
            ("source", Some("mine")),
            (smuggled_lower.as_str(), None),
            (smuggled_upper.as_str(), None),
            ("redirect_dir off", None),
            ("xino\\", None),
        ] {
            for (assemble, with_upper) in [(false, true), (true, true), (false, false)] {
                let before = mounts();
                let mut overlay = Overlay::new()
                    .lowers(layers.iter().cloned())
                    .param(key, value)
                    .idmap(map(), map());
                if with_upper {
                    overlay = overlay.upper(dir.join("c/upper")).work(dir.join("c/work"));
                }
                let e = match assemble {
                    false => overlay.mount(&target).map(|_| ()),
                    true => overlay.assemble().map(|_| ()),
                }
                .expect_err(key);
                assert_eq!(e.kind(), "invalid_input", "{key}: {e}");
                assert!(e.to_string().contains(key), "{key}: {e}");
                assert_eq!(new_mounts(&before, &mounts()), Vec::new());
            }
        }
        assert!(dir.join("victim/work/precious").exists());
    });
}

#[test]
fn a_plain_umount_by_name_is_refused_where_others_could_rename() {
    in_private_ns("hardening::umount_parent", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let mount_at = |t: &Path| {
            Overlay::new()
                .lowers(layers.iter().cloned())
                .idmap(map(), map())
                .mount(t)
                .unwrap();
        };
        // Others may write the parent: refused, with the lazy way named.
        for (name, mode, uid, target_uid) in [
            ("open", 0o777, 0, 0),
            ("owned", 0o755, 1000, 0),
            ("sticky-theirs", 0o1777, 0, 1000),
        ] {
            let t = dir.join(name).join("t");
            mkdir(&t, 0o755, target_uid, target_uid);
            mkdir(&dir.join(name), mode, uid, uid);
            mount_at(&t);
            let e = idoverlay::unmount_overlay(&t, false).unwrap_err();
            assert!(e.to_string().contains("lazily"), "{name}: {e}");
            assert!(!e.to_string().contains('\n'));
            assert!(mounts().iter().any(|m| m.mount_point == t), "{name}");
            let out = idoverlay().arg("umount").arg(&t).output().unwrap();
            refused(&out, 2, &["--lazy"]);
            // Lazily it goes: through the fd of the very mount checked.
            idoverlay::unmount_overlay(&t, true).unwrap();
            assert!(mounts().iter().all(|m| m.mount_point != t), "{name}");
        }
        // Root's alone, or sticky with root's directory under the mount: fine.
        for (name, mode) in [("roots", 0o755), ("sticky-roots", 0o1777)] {
            let t = dir.join(name).join("t");
            mkdir(&t, 0o755, 0, 0);
            mkdir(&dir.join(name), mode, 0, 0);
            mount_at(&t);
            idoverlay::unmount_overlay(&t, false).unwrap();
            assert!(mounts().iter().all(|m| m.mount_point != t), "{name}");
        }
    });
}

#[test]
fn the_state_tmpfs_is_private_and_its_lock_is_idoverlays_alone() {
    in_private_ns("hardening::state_tmpfs", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let parent = dir.join("run");
        mkdir(&parent, 0o755, 0, 0);
        let state = parent.join("idoverlay");
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let host_staged = || {
            Overlay::new()
                .lowers(layers.iter().cloned())
                .idmap(map(), map())
                .strategy(Strategy::HostStaged)
                .state_dir(&state)
                .mount(&target)
        };
        // Anyone may open the parent and hold a lock on it: no matter.
        let mut holder = Command::new("setpriv")
            // --no-fork: the process started here is the one holding the
            // lock (so killing it lets go), and nothing else keeps stdout.
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "flock",
                "--no-fork",
            ])
            .arg(&parent)
            .args(["sleep", "600"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (tx, rx) = std::sync::mpsc::channel();
        // On a thread of this one (in its mount namespace), so that a hang
        // shows as a timeout rather than a stuck test.
        let job = {
            let (layers, state, target) = (layers.clone(), state.clone(), target.clone());
            std::thread::spawn(move || {
                let m = Overlay::new()
                    .lowers(layers.iter().cloned())
                    .idmap(map(), map())
                    .strategy(Strategy::HostStaged)
                    .state_dir(&state)
                    .mount(&target);
                let _ = tx.send(m.map(|m| m.strategy));
            })
        };
        let done = rx.recv_timeout(std::time::Duration::from_secs(60));
        let _ = holder.kill();
        let _ = holder.wait();
        assert!(matches!(done, Ok(Ok(Strategy::HostStaged))), "{done:?}");
        job.join().unwrap();
        idoverlay::unmount_overlay(&target, false).unwrap();
        // A state tmpfs left shared (a crash right after attaching it):
        // the next open makes it private again before anything is staged.
        run(Command::new("mount").arg("--make-shared").arg(&state));
        let shared =
            |m: &mountinfo::MountEntry| m.mount_point == state && m.optional.contains("shared:");
        assert!(mounts().iter().any(shared));
        host_staged().unwrap();
        assert!(!mounts().iter().any(shared), "still shared");
        idoverlay::unmount_overlay(&target, false).unwrap();
    });
}

/// A reader (`list`, `show`, every mount's first look at an explicit state
/// dir) leaves a provisional state tmpfs exactly as it is: its maker may be
/// detaching it that moment, and making it private then failed (EINVAL),
/// failing a call that only had to look again. A final one it makes private
/// (a crash between attaching and making it private leaves it shared).
#[test]
fn a_reader_leaves_a_provisional_state_tmpfs_as_it_is_and_makes_a_final_one_private() {
    in_private_ns("hardening::provisional_reader", |s| {
        let dir = s.tmpfs_dir("h");
        let layers = make_layers(&dir.join("layers")).dirs;
        let state = dir.join("state");
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        Overlay::new()
            .lowers(layers.iter().cloned())
            .idmap(map(), map())
            .strategy(Strategy::HostStaged)
            .state_dir(&state)
            .mount(&target)
            .unwrap();
        idoverlay::unmount_overlay(&target, false).unwrap();
        let shared =
            |m: &mountinfo::MountEntry| m.mount_point == state && m.optional.contains("shared:");
        let marker = state.join(".idoverlay-state");
        for (mode, stays_shared) in [(0o400, true), (0o600, false)] {
            fs::set_permissions(&marker, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
            run(Command::new("mount").arg("--make-shared").arg(&state));
            assert!(mounts().iter().any(shared));
            assert!(idoverlay::records::list(&state).unwrap().is_empty());
            assert_eq!(
                mounts().iter().any(shared),
                stays_shared,
                "marker {mode:o}: a reader changed the propagation of the state tmpfs"
            );
        }
    });
}

#[test]
fn without_a_readable_auxv_the_tool_refuses_as_if_set_uid() {
    in_private_ns("hardening::auxv", |_| {
        // In this test's mount namespace only: /proc covered.
        run(Command::new("mount").args(["-t", "tmpfs", "no-proc", "/proc"]));
        let out = idoverlay().arg("probe").output().unwrap();
        run(Command::new("umount").arg("/proc"));
        refused(&out, 4, &["auxv"]);
    });
}
