//! What operators see: the mount table, `idoverlay show` and `list`, and
//! the warnings for the usual mistakes, as they would check them.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const MAP: &str = "0:100000:65536";

struct Setup {
    layers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    target: PathBuf,
    state: PathBuf,
}

/// Three layers, an upper owned by container root's host ids (a correct
/// call), a work dir and a target; a state dir of the test's own.
fn setup(s: &Scratch, name: &str, upper_owner: u32) -> Setup {
    let dir = s.tmpfs_dir(name);
    let layers = make_layers(&dir).dirs;
    let (upper, work, target) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
    mkdir(&upper, 0o755, upper_owner, upper_owner);
    mkdir(&work, 0o755, 0, 0);
    mkdir(&target, 0o755, 0, 0);
    Setup {
        layers,
        upper,
        work,
        target,
        state: s.path("state"),
    }
}

/// The sample layers in a fresh directory of the scratch tmpfs, and an
/// empty target beside them.
fn layers_and_target(s: &Scratch, name: &str) -> (Vec<PathBuf>, PathBuf) {
    let dir = s.tmpfs_dir(name);
    let layers = make_layers(&dir).dirs;
    let target = dir.join("rootfs");
    mkdir(&target, 0o755, 0, 0);
    (layers, target)
}

fn mount_cmd(st: &Setup, extra: &[&str]) -> Command {
    mount_cmd_in(st, &st.state, extra)
}

/// [`mount_cmd`] with the state dir `state`.
fn mount_cmd_in(st: &Setup, state: &Path, extra: &[&str]) -> Command {
    mount_cmd_mapped(st, state, MAP, extra)
}

/// [`mount_cmd_in`] with `map` for both uids and gids.
fn mount_cmd_mapped(st: &Setup, state: &Path, map: &str, extra: &[&str]) -> Command {
    let mut cmd = idoverlay();
    cmd.arg("mount").arg("--state-dir").arg(state);
    for l in &st.layers {
        cmd.arg("--lower").arg(l);
    }
    cmd.arg("--upper")
        .arg(&st.upper)
        .arg("--work")
        .arg(&st.work);
    cmd.args(["--uidmap", map, "--gidmap", map]);
    cmd.args(extra).arg(&st.target);
    cmd
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn show(st: &Setup) -> Value {
    json(&run(idoverlay()
        .args(["show", "--json", "--state-dir"])
        .arg(&st.state)
        .arg(&st.target)))
}

fn list(state: &Path) -> Value {
    json(&run(idoverlay()
        .args(["list", "--json", "--state-dir"])
        .arg(state)))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn paths(p: &[PathBuf]) -> Vec<String> {
    p.iter().map(|p| p.display().to_string()).collect()
}

/// `show` and `list` report the real layers (top-most first), upper,
/// work, maps, strategy and mount id for mounts made by every strategy;
/// `umount` takes the record with it.
#[test]
fn show_and_list_report_every_strategy() {
    in_private_ns("operators::show_and_list_report_every_strategy", |s| {
        for strategy in ["auto", "detached", "private-ns", "host-staged"] {
            let st = setup(s, strategy, 100000);
            let out = run(&mut mount_cmd(&st, &["--strategy", strategy, "--json"]));
            let mounted = json(&out);
            assert_eq!(mounted["warnings"], serde_json::json!([]), "{strategy}");
            assert_eq!(
                stderr(&out),
                "",
                "{strategy}: a correct call has no warning"
            );
            let m = show(&st);
            assert_eq!(m["target"], st.target.display().to_string(), "{strategy}");
            assert_eq!(strs(&m["layers"]), paths(&st.layers), "{strategy}");
            assert_eq!(m["upper"], st.upper.display().to_string());
            assert_eq!(m["work"], st.work.display().to_string());
            assert_eq!(m["uidmap"], MAP);
            assert_eq!(m["gidmap"], MAP);
            let expected = if strategy == "auto" {
                mounted["strategy"].as_str().unwrap().to_string()
            } else {
                strategy.to_string()
            };
            assert_eq!(m["strategy"], expected.as_str());
            assert_eq!(
                mounted["mount"], m,
                "mount --json carries the same description"
            );
            // The id is the kernel's for the mount at the target.
            let id = m["mount_id"].as_u64().unwrap();
            let entry = mounts()
                .into_iter()
                .find(|e| e.mount_point == st.target)
                .expect("the overlay in mountinfo");
            assert_eq!(entry.fs_type, "overlay");
            if !m["unique_mount_id"].as_bool().unwrap() {
                assert_eq!(id, entry.mount_id);
            }
            let all = list(&st.state);
            let listed = all["mounts"].as_array().unwrap();
            assert_eq!(listed.len(), 1, "{all}");
            assert_eq!(listed[0], m);
            // Human output names the target and every layer.
            let text = String::from_utf8(
                run(idoverlay()
                    .args(["show", "--state-dir"])
                    .arg(&st.state)
                    .arg(&st.target))
                .stdout,
            )
            .unwrap();
            for l in &st.layers {
                assert!(text.contains(&l.display().to_string()), "{text}");
            }
            run(idoverlay()
                .args(["umount", "--state-dir"])
                .arg(&st.state)
                .arg(&st.target));
            let records = std::fs::read_dir(st.state.join("mounts")).unwrap().count();
            assert_eq!(records, 0, "{strategy}: umount removed the record");
            assert_eq!(list(&st.state)["mounts"], serde_json::json!([]));
        }
    });
}

/// On a kernel that takes layer fds (6.13+), the mount table names the
/// real upper and work dirs, not /proc/thread-self/fd links: for three
/// layers (one `lowerdir` string) and for 60 (their names would not fit
/// one fsconfig value of 255 bytes: one `lowerdir+` per layer).
#[test]
fn mountinfo_shows_the_real_upper_and_work() {
    in_private_ns("operators::mountinfo_shows_the_real_upper_and_work", |s| {
        let probe = json(&run(idoverlay().args(["probe", "--json"])));
        let fd_layers = probe["features"]["overlay_fd_layers"]["observed"] == true;
        let short = setup(s, "mi", 100000);
        let mut long = setup(s, "long", 100000);
        let stack = long.target.parent().unwrap().join("stack");
        mkdir(&stack, 0o755, 0, 0);
        long.layers = (0..60)
            .rev()
            .map(|i| {
                let layer = stack.join(format!("layer-{i:02}")).join("fs");
                std::fs::create_dir_all(&layer).unwrap();
                std::fs::write(layer.join(format!("f{i}")), format!("{i}\n")).unwrap();
                layer
            })
            .collect();
        for st in [&short, &long] {
            run(&mut mount_cmd(st, &[]));
            let entry = mounts()
                .into_iter()
                .find(|e| e.mount_point == st.target)
                .expect("the overlay in mountinfo");
            let opts = entry.super_options.clone();
            if fd_layers {
                assert!(
                    opts.contains(&format!("upperdir={},", st.upper.display())),
                    "{} layers: {opts}",
                    st.layers.len()
                );
                assert!(
                    opts.contains(&format!("workdir={},", st.work.display())),
                    "{} layers: {opts}",
                    st.layers.len()
                );
                assert!(!opts.contains("/proc/"), "{opts}");
            } else {
                eprintln!("note: this kernel takes no layer fds; mountinfo shows {opts}");
            }
            // Every layer is there, idmapped: on-disk root shows as 100000.
            for l in &st.layers {
                for f in std::fs::read_dir(l).unwrap() {
                    let name = f.unwrap().file_name();
                    let seen = std::fs::metadata(st.target.join(&name)).unwrap();
                    assert_eq!(seen.uid(), 100000, "{name:?}");
                }
            }
            run(idoverlay()
                .args(["umount", "--state-dir"])
                .arg(&st.state)
                .arg(&st.target));
        }
    });
}

/// A mount taken down behind idoverlay's back (umount(8)) drops out of
/// `list`, and its record is pruned; one still there stays.
#[test]
fn list_prunes_records_of_mounts_that_are_gone() {
    in_private_ns(
        "operators::list_prunes_records_of_mounts_that_are_gone",
        |s| {
            let a = setup(s, "a", 100000);
            let b = setup(s, "b", 100000);
            run(&mut mount_cmd(&a, &[]));
            run(&mut mount_cmd(&b, &[]));
            assert_eq!(list(&a.state)["mounts"].as_array().unwrap().len(), 2);
            run(Command::new("umount").arg(&a.target));
            let left = list(&a.state);
            let left = left["mounts"].as_array().unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!(left[0]["target"], b.target.display().to_string());
            assert_eq!(
                std::fs::read_dir(a.state.join("mounts")).unwrap().count(),
                1
            );
            // show refuses a target that has no record, in one line.
            let out = idoverlay()
                .args(["show", "--state-dir"])
                .arg(&a.state)
                .arg(&a.target)
                .output()
                .unwrap();
            assert!(!out.status.success());
            assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
            run(idoverlay()
                .args(["umount", "--state-dir"])
                .arg(&b.state)
                .arg(&b.target));
        },
    );
}

/// `list` run in a chroot of the same mount namespace, and `list` outside
/// it for a record made in the chroot: `statmount` and mountinfo name mount
/// points relative to the caller's root, so the path seen differs from the
/// recorded one (or there is none), yet the mount is alive. Its record is
/// kept and `show` still finds it; the record of a mount really gone is
/// still pruned.
#[test]
fn list_in_a_chroot_keeps_the_records_of_live_mounts() {
    in_private_ns(
        "operators::list_in_a_chroot_keeps_the_records_of_live_mounts",
        |s| {
            // A mount of its own, as a chroot into an image usually is.
            let root = s.tmpfs_dir("chroot");
            run(Command::new("mount").arg("--bind").arg(&root).arg(&root));
            chroot_with_the_tool(&root, &["run", "in"]);
            // The same state dir, at /run/idoverlay inside the chroot.
            let state = root.join("run/idoverlay");
            let chrooted = |args: &[&std::ffi::OsStr]| {
                run(Command::new("chroot")
                    .arg(&root)
                    .arg("/idoverlay")
                    .args(args)
                    .env("IDOVERLAY_PROBE_CACHE", "off"))
            };
            let records = || std::fs::read_dir(state.join("mounts")).unwrap().count();
            let targets = |v: Value| {
                let mut t: Vec<String> = v["mounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["target"].as_str().unwrap().to_string())
                    .collect();
                t.sort();
                t
            };
            // Made outside the chroot, beyond its root: one stays, one is
            // taken down behind idoverlay's back.
            let mut live = setup(s, "live", 100000);
            live.state = state.clone();
            let mut gone = setup(s, "gone", 100000);
            gone.state = state.clone();
            let mounted = json(&run(&mut mount_cmd(&live, &["--json"])));
            let unique = mounted["mount"]["unique_mount_id"].as_bool().unwrap();
            run(&mut mount_cmd(&gone, &[]));
            run(Command::new("umount").arg(&gone.target));
            // Made inside the chroot (the kernel lets no chrooted process
            // make a user namespace: one of the test's).
            let (_userns, userns_path) = userns_for_children();
            let inner = make_layers(&root.join("in")).dirs;
            mkdir(&root.join("in/rootfs"), 0o755, 0, 0);
            let seen = |p: &Path| Path::new("/").join(p.strip_prefix(&root).unwrap());
            let mut args: Vec<std::ffi::OsString> = vec![
                "mount".into(),
                "--state-dir".into(),
                "/run/idoverlay".into(),
            ];
            for l in &inner {
                args.push("--lower".into());
                args.push(seen(l).into());
            }
            args.extend(["--userns".into(), userns_path.clone().into_os_string()]);
            args.push("/in/rootfs".into());
            chrooted(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
            assert_eq!(records(), 3);

            let in_chroot = json(&chrooted(&[
                "list".as_ref(),
                "--json".as_ref(),
                "--state-dir".as_ref(),
                "/run/idoverlay".as_ref(),
            ]));
            if unique {
                assert_eq!(
                    targets(in_chroot),
                    ["/in/rootfs".to_string(), live.target.display().to_string()],
                    "the chroot lists both live mounts"
                );
            }
            // Seen from outside: the overlay is still there, and so is its
            // record; the gone one's record is pruned.
            assert!(
                mounts()
                    .iter()
                    .any(|e| e.mount_point == live.target && e.fs_type == "overlay"),
                "the overlay in mountinfo"
            );
            assert_eq!(show(&live)["target"], live.target.display().to_string());
            assert_eq!(
                records(),
                2,
                "the record of the mount that is gone is pruned"
            );
            let outside = targets(list(&state));
            if unique {
                assert_eq!(
                    outside,
                    ["/in/rootfs".to_string(), live.target.display().to_string()]
                );
            } else {
                assert!(outside.contains(&live.target.display().to_string()));
            }
            assert_eq!(records(), 2, "list outside keeps the chroot's record");
            let shown = json(&chrooted(&[
                "show".as_ref(),
                "--json".as_ref(),
                "--state-dir".as_ref(),
                "/run/idoverlay".as_ref(),
                "/in/rootfs".as_ref(),
            ]));
            assert_eq!(shown["target"], "/in/rootfs");
            // Taken down, each record goes with its mount.
            chrooted(&[
                "umount".as_ref(),
                "--state-dir".as_ref(),
                "/run/idoverlay".as_ref(),
                "/in/rootfs".as_ref(),
            ]);
            run(idoverlay()
                .args(["umount", "--state-dir"])
                .arg(&state)
                .arg(&live.target));
            assert_eq!(records(), 0);
        },
    );
}

/// An upper made by host root: a warning saying what to do, and container
/// root (host uid 100000) really cannot create a file in `/`; with
/// --chown-upper the empty upper's root becomes 100000:100000 on disk, no
/// warning, and the write works.
#[test]
fn root_owned_upper_warns_and_chown_upper_fixes_it() {
    in_private_ns(
        "operators::root_owned_upper_warns_and_chown_upper_fixes_it",
        |s| {
            let st = setup(s, "w", 0);
            let as_container_root = |target: &Path| {
                Command::new("setpriv")
                    .args([
                        "--reuid",
                        "100000",
                        "--regid",
                        "100000",
                        "--clear-groups",
                        "touch",
                    ])
                    .arg(target.join("x"))
                    .output()
                    .unwrap()
            };
            let out = run(&mut mount_cmd(&st, &["--json"]));
            let warnings = json(&out)["warnings"].clone();
            let warnings = strs(&warnings);
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].contains("owned by 0:0"), "{}", warnings[0]);
            assert!(warnings[0].contains("100000:100000"), "{}", warnings[0]);
            assert!(
                stderr(&out).contains("--chown-upper"),
                "the CLI names its flag: {}",
                stderr(&out)
            );
            let touch = as_container_root(&st.target);
            assert!(
                !touch.status.success(),
                "container root wrote into a root-owned upper"
            );
            run(idoverlay()
                .args(["umount", "--state-dir"])
                .arg(&st.state)
                .arg(&st.target));
            assert_eq!(owner(&st.upper), (0, 0), "no flag, no change");

            let out = run(&mut mount_cmd(&st, &["--chown-upper", "--json"]));
            assert_eq!(json(&out)["warnings"], serde_json::json!([]));
            assert_eq!(owner(&st.upper), (100000, 100000));
            let touch = as_container_root(&st.target);
            assert!(
                touch.status.success(),
                "{}",
                String::from_utf8_lossy(&touch.stderr)
            );
            assert_eq!(owner(&st.upper.join("x")), (100000, 100000));
            run(idoverlay()
                .args(["umount", "--state-dir"])
                .arg(&st.state)
                .arg(&st.target));
        },
    );
}

/// --chown-upper never changes an upper that holds anything: refused in
/// one line, the upper's owner and contents untouched, nothing mounted.
#[test]
fn chown_upper_refuses_a_non_empty_upper() {
    in_private_ns("operators::chown_upper_refuses_a_non_empty_upper", |s| {
        let st = setup(s, "n", 0);
        write_file(&st.upper.join("kept"), "data\n", 0o644, 0, 0);
        let before = mounts();
        let out = mount_cmd(&st, &["--chown-upper"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
        assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
        assert_eq!(owner(&st.upper), (0, 0));
        assert_eq!(
            std::fs::read_to_string(st.upper.join("kept")).unwrap(),
            "data\n"
        );
        assert!(new_mounts(&before, &mounts()).is_empty());
    });
}

/// `--chown-upper` with a mount the kernel then refuses (an unknown
/// parameter; two that conflict, which only creating the superblock
/// finds): the upper keeps its owner, for every strategy and the fast path.
#[test]
fn chown_upper_is_undone_when_the_mount_is_refused() {
    in_private_ns("operators::chown_upper_undone", |s| {
        for (i, strategy) in ["auto", "detached", "private-ns", "host-staged"]
            .into_iter()
            .enumerate()
        {
            for (j, bad) in ["bogus=1", "metacopy=on,redirect_dir=off"]
                .into_iter()
                .enumerate()
            {
                let st = setup(s, &format!("u{i}{j}"), 0);
                let before = mounts();
                let out = mount_cmd(&st, &["--chown-upper", "--strategy", strategy, "-o", bad])
                    .output()
                    .unwrap();
                let what = format!("{strategy} -o {bad}");
                assert!(!out.status.success(), "{what}: mounted");
                assert_eq!(stderr(&out).lines().count(), 1, "{what}: {}", stderr(&out));
                assert_eq!(owner(&st.upper), (0, 0), "{what}: {}", stderr(&out));
                // Nothing, the state tmpfs host-staged mounted for the
                // refused assembly included.
                let new = new_mounts(&before, &mounts());
                assert!(new.is_empty(), "{what}: {new:#?}");
            }
        }
    });
}

/// The same when it is the attach that fails, after the overlay was made
/// (here the target is removed once it was opened: `move_mount` says
/// ENOENT): the upper keeps its owner, for every strategy.
#[test]
fn chown_upper_is_undone_when_the_attach_fails() {
    use std::sync::atomic::{AtomicBool, Ordering};
    in_private_ns("operators::chown_upper_undone_attach", |s| {
        for (i, strategy) in [
            idoverlay::Strategy::Auto,
            idoverlay::Strategy::Detached,
            idoverlay::Strategy::PrivateNs,
            idoverlay::Strategy::HostStaged,
        ]
        .into_iter()
        .enumerate()
        {
            let st = setup(s, &format!("a{i}"), 0);
            let removed = std::sync::Arc::new(AtomicBool::new(false));
            let (target, flag) = (st.target.clone(), removed.clone());
            let e = idoverlay::Overlay::new()
                .lowers(st.layers.iter().cloned())
                .upper(&st.upper)
                .work(&st.work)
                .idmap(MAP.parse().unwrap(), MAP.parse().unwrap())
                .chown_upper(true)
                .strategy(strategy)
                .state_dir(&st.state)
                .trace(std::sync::Arc::new(move |line: &str| {
                    if line.starts_with("strategy") && !flag.swap(true, Ordering::SeqCst) {
                        std::fs::remove_dir(&target).unwrap();
                    }
                }))
                .mount(&st.target)
                .map(|m| m.target)
                .expect_err("the target is gone");
            assert!(removed.load(Ordering::SeqCst), "{strategy}: not traced");
            assert!(!e.to_string().contains('\n'), "{strategy}: {e}");
            assert_eq!(owner(&st.upper), (0, 0), "{strategy}: {e}");
        }
    });
}

/// Two `--chown-upper` mounts at once on one empty upper, each to its own
/// target, with the same maps (a runtime retrying) or with other maps (two
/// containers given one pair by mistake): at most one overlay stays (one
/// pair, one overlay), and its upper is its own container root's. Before,
/// the one refused (its claim came second) gave the upper back to 0:0
/// under the other's live overlay, or put it back just before that one
/// claimed the pair (19 rounds of 100, a reviewer's script); and with
/// other maps one chowned the upper of the other's overlay claimed between
/// its in-use check and its chown (5 of 200, a second reviewer): container
/// root then saw its `/` as nobody's.
#[test]
fn of_two_chown_upper_mounts_at_once_the_one_left_keeps_its_upper_owned() {
    in_private_ns("operators::two_chown_upper_at_once", |s| {
        let rounds = 400;
        let mut wrong = Vec::new();
        for round in 0..rounds {
            let st = setup(s, &format!("c{round}"), 0);
            let other = Setup {
                layers: st.layers.clone(),
                upper: st.upper.clone(),
                work: st.work.clone(),
                target: st.target.with_file_name("rootfs2"),
                state: st.state.clone(),
            };
            mkdir(&other.target, 0o755, 0, 0);
            let other_root = if round % 2 == 0 { 100000 } else { 200000 };
            let other_map = format!("0:{other_root}:65536");
            let second = mount_cmd_mapped(&other, &other.state, &other_map, &["--chown-upper"]);
            let children = [mount_cmd(&st, &["--chown-upper"]), second].map(|mut cmd| {
                cmd.stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            });
            for mut child in children {
                child.wait().unwrap();
            }
            let table = mounts();
            let live: Vec<(&Path, u32)> = [(&st.target, 100000), (&other.target, other_root)]
                .into_iter()
                .filter(|(t, _)| table.iter().any(|m| m.mount_point == **t))
                .map(|(t, root)| (t.as_path(), root))
                .collect();
            assert!(live.len() <= 1, "round {round}: both mounted on one pair");
            let upper = owner(&st.upper);
            if let Some((_, root)) = live.first() {
                if upper != (*root, *root) {
                    wrong.push((round, *root, upper));
                }
            }
            for (target, _) in live {
                run(idoverlay()
                    .args(["umount", "--state-dir"])
                    .arg(&st.state)
                    .arg(target));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of {rounds} rounds left a live overlay whose upper is not its container \
             root's (round, container root, owner): {:?}",
            wrong.len(),
            wrong.first()
        );
    });
}

/// The same, made exactly: another overlay on the pair is mounted and
/// claims it right after this request's in-use check (from its trace),
/// before its `--chown-upper` chown. The chown must see the claim and the
/// request fail as in use, leaving the other overlay's upper its own
/// container root's; before, it chowned that live upper to its own maps
/// (a reviewer: 5 of 200 rounds at random).
#[test]
fn a_chown_upper_after_another_overlay_claimed_the_pair_is_refused() {
    use std::sync::atomic::{AtomicBool, Ordering};
    in_private_ns("operators::chown_upper_after_a_claim", |s| {
        let st = setup(s, "k", 0);
        let other = Setup {
            layers: st.layers.clone(),
            upper: st.upper.clone(),
            work: st.work.clone(),
            target: st.target.with_file_name("rootfs2"),
            state: s.path("state-other"),
        };
        mkdir(&other.target, 0o755, 0, 0);
        let fired = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, cmd) = (
            fired.clone(),
            std::sync::Mutex::new(Some(mount_cmd(&other, &["--chown-upper"]))),
        );
        let other_map: idoverlay::IdMap = "0:200000:65536".parse().unwrap();
        let e = idoverlay::Overlay::new()
            .lowers(st.layers.iter().cloned())
            .upper(&st.upper)
            .work(&st.work)
            .idmap(other_map.clone(), other_map)
            .chown_upper(true)
            .state_dir(&st.state)
            .trace(std::sync::Arc::new(move |line: &str| {
                if line.starts_with("upper and work dirs: not in use")
                    && !flag.swap(true, Ordering::SeqCst)
                {
                    let mut cmd = cmd.lock().unwrap().take().unwrap();
                    run(&mut cmd);
                }
            }))
            .mount(&st.target)
            .map(|m| m.target)
            .expect_err("the pair is the other overlay's");
        assert!(fired.load(Ordering::SeqCst), "not traced: {e}");
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(mounts().iter().any(|m| m.mount_point == other.target));
        assert_eq!(owner(&st.upper), (100000, 100000), "{e}");
        run(idoverlay()
            .args(["umount", "--state-dir"])
            .arg(&other.state)
            .arg(&other.target));
    });
}

/// Records of mounts made in mount namespaces that are gone since (a
/// short-lived `unshare -m` each) are removed by `list` from here; one of
/// a namespace still alive is kept until that namespace goes. Else each
/// stayed for the boot, and about a thousand filled the state tmpfs.
#[test]
fn list_prunes_records_of_mount_namespaces_that_are_gone() {
    in_private_ns("operators::list_prunes_records_of_dead_namespaces", |s| {
        let here = setup(s, "here", 100000);
        run(&mut mount_cmd(&here, &[]));
        let records = || {
            std::fs::read_dir(here.state.join("mounts"))
                .unwrap()
                .count()
        };
        let in_a_namespace_of_its_own = |st: &Setup| {
            let cmd = mount_cmd(st, &[]);
            let mut unshare = Command::new("unshare");
            unshare
                .args(["-m", "--propagation", "private", "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            unshare
        };
        for i in 0..3 {
            run(&mut in_a_namespace_of_its_own(&setup(
                s,
                &format!("gone{i}"),
                100000,
            )));
        }
        // One whose namespace lives on while `list` runs: a shell in it
        // that mounts, says so, and waits.
        let alive = mount_cmd(&setup(s, "alive", 100000), &[]);
        let quoted = std::iter::once(alive.get_program())
            .chain(alive.get_args())
            .map(|a| format!("'{}'", a.to_str().unwrap()))
            .collect::<Vec<_>>()
            .join(" ");
        /// Ended (by its pid, it is ours) whatever the test's outcome.
        struct Waiting(std::process::Child);
        impl Drop for Waiting {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut waiting = Command::new("unshare")
            .args(["-m", "--propagation", "private", "--", "sh", "-c"])
            .arg(format!("{quoted} && echo mounted && exec sleep 60"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map(Waiting)
            .unwrap();
        let mut said = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(waiting.0.stdout.as_mut().unwrap()),
            &mut said,
        )
        .unwrap();
        assert_eq!(said, "mounted\n");
        assert_eq!(records(), 5, "one here, three gone, one alive");
        let listed = list(&here.state);
        assert_eq!(listed["mounts"].as_array().unwrap().len(), 1, "{listed}");
        assert_eq!(
            records(),
            2,
            "the three of namespaces that are gone removed"
        );
        drop(waiting);
        list(&here.state);
        assert_eq!(records(), 1, "and the one whose namespace went");
    });
}

/// Container and host swapped (`100000:0:65536`): the layers' owners fall
/// outside the map and show as nobody; a warning says so. The same layers
/// with the map the right way round have none.
#[test]
fn swapped_maps_warn() {
    in_private_ns("operators::swapped_maps_warn", |s| {
        let (layers, target) = layers_and_target(s, "swap");
        let mount = |map: &str| {
            let mut cmd = idoverlay();
            cmd.args(["mount", "--json", "--uidmap", map, "--gidmap", map]);
            for l in &layers {
                cmd.arg("--lower").arg(l);
            }
            run(cmd.arg(&target))
        };
        let out = mount("100000:0:65536");
        let warnings = strs(&json(&out)["warnings"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("swapped"), "{}", warnings[0]);
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 65534);
        run(idoverlay().arg("umount").arg(&target));

        let out = mount(MAP);
        assert_eq!(json(&out)["warnings"], serde_json::json!([]));
        assert_eq!(stderr(&out), "");
        run(idoverlay().arg("umount").arg(&target));
    });
}

/// The library's `Mounted` carries the description: real paths even when
/// the layers were given through a symlinked parent directory.
#[test]
fn mounted_carries_the_description_with_real_paths() {
    in_private_ns(
        "operators::mounted_carries_the_description_with_real_paths",
        |s| {
            let dir = s.tmpfs_dir("lib");
            let layers = make_layers(&dir).dirs;
            std::os::unix::fs::symlink(&dir, s.path("via")).unwrap();
            let via: Vec<PathBuf> = layers
                .iter()
                .map(|l| s.path("via").join(l.file_name().unwrap()))
                .collect();
            let target = dir.join("rootfs");
            mkdir(&target, 0o755, 0, 0);
            let map: idoverlay::IdMap = MAP.parse().unwrap();
            let mounted = idoverlay::Overlay::new()
                .lowers(&via)
                .idmap(map.clone(), map.clone())
                .state_dir(s.path("state"))
                .mount(&target)
                .unwrap();
            let d = &mounted.description;
            assert_eq!(d.layers, layers, "real paths, not through the symlink");
            assert_eq!(d.target, target);
            assert_eq!(d.uidmap.as_ref(), Some(&map));
            assert!(!s.path("state").exists(), "no record without keep_record");
            idoverlay::unmount_overlay(&target, false).unwrap();
        },
    );
}

/// A detached overlay handed over as a bare fd (as over a unix socket)
/// attaches like the original; fds that are not a detached overlay are
/// refused, and nothing moves.
#[test]
fn detached_mount_from_fd() {
    use std::os::fd::OwnedFd;
    in_private_ns("operators::detached_mount_from_fd", |s| {
        let (layers, target) = layers_and_target(s, "fd");
        let map: idoverlay::IdMap = MAP.parse().unwrap();
        let fd: OwnedFd = idoverlay::Overlay::new()
            .lowers(&layers)
            .idmap(map.clone(), map)
            .assemble()
            .unwrap()
            .into_fd();
        let received = idoverlay::DetachedMount::from_fd(fd).unwrap();
        received.attach(&target).unwrap();
        assert_eq!(owner(&target.join("etc/hostname")), (100000, 100000));

        // The attached overlay's own mount, by fd: refused, left where it is.
        let attached = OwnedFd::from(std::fs::File::open(&target).unwrap());
        let err = idoverlay::DetachedMount::from_fd(attached).unwrap_err();
        assert!(err.to_string().contains("attached"), "{err}");
        assert!(mounts().iter().any(|m| m.mount_point == target));
        // A detached clone of a tmpfs: no overlay.
        let tmpfs = common::raw::clone_detached(&s.root).unwrap();
        let err = idoverlay::DetachedMount::from_fd(tmpfs).unwrap_err();
        assert!(err.to_string().contains("not an overlay"), "{err}");
        // A directory inside the overlay: not a mount root.
        let inside = std::fs::File::open(target.join("etc")).unwrap();
        let err = idoverlay::DetachedMount::from_fd(OwnedFd::from(inside)).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
        idoverlay::unmount_overlay(&target, false).unwrap();
    });
}

/// A mount namespace as a container has one (its own pid namespace and
/// /proc), of a process this test started (`unshare … sleep 60`, ended by
/// the test by its pid), once it is there; and its `/proc/PID/ns/mnt`.
fn container_mount_ns() -> (std::process::Child, String) {
    let child = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "-p",
            "-f",
            "--mount-proc",
            "sleep",
            "60",
        ])
        .spawn()
        .unwrap();
    let ns = format!("/proc/{}/ns/mnt", child.id());
    // Wait until unshare has made its namespace (and mounted /proc).
    for _ in 0..200 {
        let here = std::fs::read_link("/proc/thread-self/ns/mnt").unwrap();
        let there = std::fs::read_link(&ns).unwrap();
        let proc_mounted = std::fs::read_to_string(format!("/proc/{}/mountinfo", child.id()))
            .unwrap()
            .lines()
            .filter(|l| l.contains(" /proc ") && l.contains(" - proc "))
            .count()
            >= 2;
        if here != there && proc_mounted {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (child, ns)
}

/// The overlays mounted in `child`'s mount namespace.
fn overlays_in(child: &std::process::Child) -> usize {
    std::fs::read_to_string(format!("/proc/{}/mountinfo", child.id()))
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - overlay "))
        .count()
}

/// Unmounting inside another mount namespace whose /proc belongs to
/// another pid namespace (as a container's does): the overlay attached
/// there goes, this namespace never saw it.
#[test]
fn unmount_inside_another_mount_namespace() {
    in_private_ns("operators::unmount_inside_another_mount_namespace", |s| {
        let (layers, target) = layers_and_target(s, "ns");
        let (mut child, ns) = container_mount_ns();
        let theirs = || overlays_in(&child);
        let map: idoverlay::IdMap = MAP.parse().unwrap();
        let before_here = mounts().len();
        let attach_there = || {
            idoverlay::Overlay::new()
                .lowers(&layers)
                .idmap(map.clone(), map.clone())
                .assemble()
                .unwrap()
                .attach_in_namespace(&ns, &target)
                .unwrap();
        };
        attach_there();
        assert_eq!(theirs(), 1);
        let not_lazy = idoverlay::unmount_overlay_in_namespace(&ns, &target, false);
        not_lazy.unwrap();
        assert_eq!(theirs(), 0, "unmounted there");
        // Lazily, the same.
        attach_there();
        assert_eq!(theirs(), 1);
        idoverlay::unmount_overlay_in_namespace(&ns, &target, true).unwrap();
        assert_eq!(theirs(), 0);
        assert_eq!(mounts().len(), before_here, "nothing here changed");
        child.kill().unwrap();
        child.wait().unwrap();
    });
}

/// `assemble()` clones the layers' common directory with the mounts below
/// it and reads no mount table; a mount there that takes no idmap (an
/// mqueue) makes that refused, and it groups the layers by mount instead:
/// the overlay is the same.
#[test]
fn assemble_beneath_a_mount_that_takes_no_idmap() {
    in_private_ns(
        "operators::assemble_beneath_a_mount_that_takes_no_idmap",
        |s| {
            let dir = s.tmpfs_dir("mq");
            let layers = make_layers(&dir).dirs;
            let other = dir.join("other");
            mkdir(&other, 0o755, 0, 0);
            run(Command::new("mount")
                .args(["-t", "mqueue", "mqueue"])
                .arg(&other));
            let target = s.tmpfs_dir("target");
            let map: idoverlay::IdMap = MAP.parse().unwrap();
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
            let sink = lines.clone();
            let trace: idoverlay::Trace =
                std::sync::Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_string()));
            idoverlay::Overlay::new()
                .lowers(&layers)
                .idmap(map.clone(), map)
                .trace(trace)
                .assemble()
                .unwrap()
                .attach(&target)
                .unwrap();
            assert_eq!(owner(&target.join("etc/hostname")), (100000, 100000));
            assert_eq!(
                std::fs::read_to_string(target.join("home/app/notes.txt")).unwrap(),
                "v3\n"
            );
            let lines = lines.lock().unwrap();
            assert!(
                lines
                    .iter()
                    .any(|l| l.contains("grouping by mount instead")),
                "{lines:#?}"
            );
            idoverlay::unmount_overlay(&target, false).unwrap();
            run(Command::new("umount").arg(&other));
        },
    );
}

/// The options every strategy hands the kernel, which it refuses only when
/// the superblock is made (`FSCONFIG_CMD_CREATE`): after host-staged has
/// staged and private-ns has its staging namespace.
const REFUSED_AT_CREATE: &str = "metacopy=on,redirect_dir=off";

/// A mount as the tool runs by default (the probe report and private-ns'
/// staging namespace kept for the boot in the state dir), of `st`'s layers
/// with the state dir `state`.
fn mount_as_shipped(st: &Setup, state: &Path, extra: &[&str]) -> Command {
    let mut cmd = mount_cmd_in(st, state, extra);
    cmd.env_remove("IDOVERLAY_PROBE_CACHE");
    cmd
}

/// The refusal of [`REFUSED_AT_CREATE`], exactly as before the state
/// tmpfs was ever taken back: status 1, this one line (the fd number
/// aside).
fn assert_refused_at_create(out: &std::process::Output, what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    let (head, rest) = err
        .split_once("fsconfig(fd ")
        .unwrap_or_else(|| panic!("{what}: {err}"));
    assert_eq!(head, "idoverlay: cannot create the overlay: ", "{what}");
    assert_eq!(
        rest.trim_start_matches(|c: char| c.is_ascii_digit()),
        ", FSCONFIG_CMD_CREATE, NULL, NULL, 0): Invalid argument (EINVAL); \
         the kernel log (dmesg) may say more\n",
        "{what}: {err}"
    );
}

/// What `idoverlay show` says of the mount at `target`, with the state dir
/// `state`.
fn show_in(state: &Path, target: &Path) -> Value {
    json(&run(idoverlay()
        .args(["show", "--json", "--state-dir"])
        .arg(state)
        .arg(target)))
}

/// The names in a directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The mounts at `at` (stacked ones too) and below it, in this thread's
/// namespace.
fn mounts_at_or_below(at: &Path) -> Vec<mountinfo::MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(at))
        .collect()
}

/// The state dir's tmpfs is final and serves the mount at `target`
/// (`show` finds it), which is then unmounted.
fn final_and_serving(state: &Path, target: &Path, what: &str) {
    assert_eq!(marker_mode(state), 0o600, "{what}");
    assert_eq!(
        show_in(state, target)["target"],
        target.display().to_string(),
        "{what}"
    );
    run(idoverlay()
        .args(["umount", "--state-dir"])
        .arg(state)
        .arg(target));
}

/// The permission bits of the state tmpfs' marker.
fn marker_mode(state: &Path) -> u32 {
    std::fs::symlink_metadata(state.join(".idoverlay-state"))
        .unwrap()
        .mode()
        & 0o7777
}

/// A mount the kernel refuses (options it refuses only when the superblock
/// is made, after private-ns has its staging namespace and host-staged has
/// staged) keeps nothing, for every strategy, with a fresh state dir given
/// empty or not there at all: the message and status as they were, no new
/// mount (the state tmpfs and the boot's staging namespace taken away
/// again), the state dir empty or gone. Before, private-ns and host-staged
/// left the tmpfs at the state dir, and private-ns the staging namespace's
/// bind inside it. The state dir then serves the next mount as a fresh one.
#[test]
fn a_mount_the_kernel_refuses_keeps_no_state_dir() {
    in_private_ns("operators::refused_keeps_no_state_dir", |s| {
        let st = setup(s, "refused", 100000);
        let run_dir = s.path("run");
        mkdir(&run_dir, 0o755, 0, 0);
        for strategy in ["auto", "private-ns", "host-staged"] {
            for given in [true, false] {
                let what = format!(
                    "{strategy}, state dir {}",
                    ["missing", "given"][given as usize]
                );
                let state = run_dir.join(format!("{strategy}-{given}"));
                if given {
                    mkdir(&state, 0o700, 0, 0);
                }
                let before = mounts();
                let out = mount_as_shipped(
                    &st,
                    &state,
                    &["--strategy", strategy, "-o", REFUSED_AT_CREATE],
                )
                .output()
                .unwrap();
                assert_refused_at_create(&out, &what);
                let new = new_mounts(&before, &mounts());
                assert!(new.is_empty(), "{what}: {new:#?}");
                if given {
                    assert_eq!(names_in(&state), Vec::<String>::new(), "{what}");
                    assert_eq!(
                        std::fs::metadata(&state).unwrap().mode() & 0o7777,
                        0o700,
                        "{what}"
                    );
                } else {
                    assert!(!state.exists(), "{what}: the state dir it created stays");
                }
                // And the state dir serves the next mount as a fresh one.
                run(&mut mount_as_shipped(
                    &st,
                    &state,
                    &["--strategy", strategy],
                ));
                final_and_serving(&state, &st.target, &what);
            }
        }
    });
}

/// Two first mounts the kernel refuses, at the same moment, with the same
/// state dir that does not exist yet: one creates the directory, the other
/// may mount its tmpfs over it first (and, refused, take it away without
/// removing a directory it did not create), and the creator then mounts
/// its own over it. Whatever the order, bad input keeps nothing: after
/// both, the state dir is gone and no mount is left. (Before, 18 of 300
/// such pairs left the empty directory.)
#[test]
fn two_refused_first_mounts_at_once_keep_no_state_dir() {
    in_private_ns("operators::two_refused_at_once", |s| {
        let (a, b) = (setup(s, "a", 100000), setup(s, "b", 100000));
        let run_dir = s.path("run");
        mkdir(&run_dir, 0o755, 0, 0);
        let before = mounts();
        let mut left = Vec::new();
        for round in 0..150 {
            let state = run_dir.join(format!("s{round}"));
            let strategy = ["host-staged", "private-ns"][round % 2];
            let args = ["--strategy", strategy, "-o", REFUSED_AT_CREATE];
            let mut first = mount_as_shipped(&a, &state, &args);
            let first = std::thread::spawn(move || first.output().unwrap());
            let second = mount_as_shipped(&b, &state, &args).output().unwrap();
            let first = first.join().unwrap();
            assert_refused_at_create(&first, &format!("round {round}, a"));
            assert_refused_at_create(&second, &format!("round {round}, b"));
            if state.exists() {
                left.push(format!(
                    "round {round} ({strategy}): {:?}",
                    names_in(&state)
                ));
            }
        }
        let new = new_mounts(&before, &mounts());
        assert!(new.is_empty(), "{new:#?}");
        assert!(left.is_empty(), "the state dir stays: {left:#?}");
    });
}

/// A first mount the kernel refuses, run at the same moment as a correct
/// one with the same fresh state dir, never takes away what the correct
/// one keeps there: whichever mounts the state tmpfs, the other waits for
/// it (a provisional one) or uses it (a final one), and a tmpfs is taken
/// back only when nobody else kept anything in it. Many rounds, both
/// strategies that stage refused beside each strategy mounting, either one
/// started first: each time the correct mount is there and `show` finds
/// its record, and the state dir shows one state tmpfs (none stacked),
/// final, holding only what a correct mount keeps.
#[test]
fn a_refused_first_mount_never_takes_away_what_a_concurrent_one_keeps() {
    in_private_ns("operators::refused_beside_a_concurrent_mount", |s| {
        use std::process::Stdio;
        let a = setup(s, "a", 100000);
        let b = setup(s, "b", 100000);
        let run_dir = s.path("run");
        mkdir(&run_dir, 0o755, 0, 0);
        let refused = ["private-ns", "host-staged"];
        let correct = ["private-ns", "host-staged", "auto"];
        for round in 0..48 {
            let (sa, sb) = (refused[round % 2], correct[(round / 2) % 3]);
            let b_first = (round / 6) % 2 == 1;
            let what = format!("round {round}: {sa} refused beside {sb} (b first: {b_first})");
            let state = run_dir.join(format!("s{round}"));
            let mut ca = mount_as_shipped(&a, &state, &["--strategy", sa, "-o", REFUSED_AT_CREATE]);
            let mut cb = mount_as_shipped(&b, &state, &["--strategy", sb]);
            for c in [&mut ca, &mut cb] {
                c.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            let (pa, pb) = if b_first {
                let pb = cb.spawn().unwrap();
                (ca.spawn().unwrap(), pb)
            } else {
                let pa = ca.spawn().unwrap();
                (pa, cb.spawn().unwrap())
            };
            let (oa, ob) = (
                pa.wait_with_output().unwrap(),
                pb.wait_with_output().unwrap(),
            );
            assert_refused_at_create(&oa, &what);
            assert!(ob.status.success(), "{what}: {}", stderr(&ob));
            assert!(
                !stderr(&ob).contains("idoverlay: warning"),
                "{what}: {}",
                stderr(&ob)
            );
            let top = mounts()
                .into_iter()
                .rev()
                .find(|m| m.mount_point == b.target)
                .unwrap_or_else(|| panic!("{what}: nothing at b's target"));
            assert_eq!(top.fs_type, "overlay", "{what}");
            let at_state = mounts_at_or_below(&state);
            let tmpfs: Vec<_> = at_state.iter().filter(|m| m.mount_point == state).collect();
            assert_eq!(tmpfs.len(), 1, "{what}: {at_state:#?}");
            assert_eq!(tmpfs[0].source, "idoverlay-state", "{what}");
            // Besides it, at most the boot's staging namespace.
            for m in at_state.iter().filter(|m| m.mount_point != state) {
                assert_eq!(m.mount_point, state.join("staging-ns"), "{what}: {m:?}");
                assert_eq!(m.fs_type, "nsfs", "{what}: {m:?}");
            }
            assert_eq!(marker_mode(&state), 0o600, "{what}");
            for name in names_in(&state) {
                assert!(
                    [".idoverlay-state", "mounts", "probe", "staging-ns"].contains(&name.as_str()),
                    "{what}: {name} in the state dir"
                );
            }
            let records = names_in(&state.join("mounts"));
            assert_eq!(records.len(), 1, "{what}: records {records:?}");
            assert_eq!(
                show_in(&state, &b.target)["target"],
                b.target.display().to_string(),
                "{what}"
            );
            run(idoverlay()
                .args(["umount", "--state-dir"])
                .arg(&state)
                .arg(&b.target));
        }
    });
}

/// Whether `child` waits for the lock on the file `ino` — it keeps an fd
/// of that file open while one of its threads sleeps between tries
/// (idoverlay polls, `LOCK_NB`), seen so ten times in a row — rather than
/// going on: false once it exits.
fn waiting_for_lock_or_exited(child: &mut std::process::Child, ino: u64) -> bool {
    let proc = PathBuf::from(format!("/proc/{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut seen = 0;
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let holds = std::fs::read_dir(proc.join("fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.ino() == ino))
        });
        // clock_nanosleep(2), nanosleep(2): what thread::sleep calls.
        let sleeping = std::fs::read_dir(proc.join("task")).is_ok_and(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("syscall"))
                    .is_ok_and(|s| matches!(s.split(' ').next(), Some("230" | "35")))
            })
        });
        seen = if holds && sleeping { seen + 1 } else { 0 };
        if seen == 10 {
            return true;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: neither waiting for the lock nor done",
            proc.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A process of the test's own that takes `flock(LOCK_EX)` of `path` and
/// then stops itself (`SIGSTOP`), as an idoverlay call stopped or stuck
/// mid-way holds its lock. Killed (by pid) and reaped when dropped.
struct StoppedHolder(std::process::Child);

impl StoppedHolder {
    fn of(path: &Path) -> StoppedHolder {
        use std::io::BufRead;
        let mut child = Command::new("perl")
            .args([
                "-e",
                r#"open(my $f, "<", $ARGV[0]) or die "$!"; flock($f, 2) or die "$!";
                   $| = 1; print "locked\n"; kill "STOP", $$; sleep 600"#,
            ])
            .arg(path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n", "{}", path.display());
        let holder = StoppedHolder(child);
        while holder.state() != 'T' {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        holder
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn state(&self) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap()
    }
}

impl Drop for StoppedHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A state tmpfs made here by hand as idoverlay makes one: its marker
/// written, of `marker_mode` (0400 while its maker is still at it, 0600
/// once final). Returns the marker's path.
fn state_tmpfs_by_hand(state: &Path, marker_mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    mkdir(state, 0o700, 0, 0);
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0700,size=4m", "idoverlay-state"])
        .arg(state));
    let marker = state.join(".idoverlay-state");
    std::fs::write(&marker, br#"{"format":"idoverlay-state","version":1}"#).unwrap();
    std::fs::set_permissions(&marker, std::fs::Permissions::from_mode(marker_mode)).unwrap();
    marker
}

/// No wait for a lock in the state dir is for ever. Each lock idoverlay
/// waits for there, held by a stopped process: a provisional tmpfs'
/// marker (a host-staged mount waits for its maker), the marker of a
/// final one while the boot's staging namespace is made (private-ns), and
/// the directory a state tmpfs goes over while one is mounted there
/// (host-staged, the state dir not mounted yet). Each mount waits (seen
/// holding the file open and sleeping between tries), then after 30 s
/// fails with one line that names the holder, stopped, and how to resume
/// it; and nothing changed: no mount at or below its state dir but the
/// hand-made tmpfs, no staging namespace kept, its target not mounted,
/// the state dir as it was. An auto mount, which needs the state dir only
/// after its overlay is attached (the probe report, then its record),
/// mounts, waits once (not once for each: under a minute) and warns in
/// one line, naming the holder, that no record was kept.
///
/// Before, each mount waited in `flock` for as long as the holder lived.
#[test]
fn a_lock_held_by_a_stopped_process_is_waited_for_30_s_and_named() {
    in_private_ns("operators::lock_held_by_a_stopped_process", |s| {
        let run_dir = s.path("run");
        mkdir(&run_dir, 0o755, 0, 0);
        let mut waits = Vec::new();
        for (case, strategy) in [
            ("provisional", "host-staged"),
            ("staging-ns", "private-ns"),
            ("covered", "host-staged"),
            ("record", "auto"),
        ] {
            let st = setup(s, case, 100000);
            let state = run_dir.join(case);
            let locked = match case {
                "provisional" => state_tmpfs_by_hand(&state, 0o400),
                "staging-ns" => state_tmpfs_by_hand(&state, 0o600),
                _ /* covered, record */ => {
                    mkdir(&state, 0o700, 0, 0);
                    state.clone()
                }
            };
            let ino = std::fs::metadata(&locked).unwrap().ino();
            let holder = StoppedHolder::of(&locked);
            let before = mounts_at_or_below(&state);
            let names_before = names_in(&state);
            let started = std::time::Instant::now();
            let mut mount = mount_as_shipped(&st, &state, &["--strategy", strategy])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            assert!(
                waiting_for_lock_or_exited(&mut mount, ino),
                "{case}: did not wait for the lock"
            );
            waits.push((
                case,
                st,
                state,
                holder,
                before,
                names_before,
                started,
                mount,
            ));
        }
        for (case, st, state, holder, before, names_before, started, mut mount) in waits {
            // Still waiting 90 s on: it would wait for ever.
            while mount.try_wait().unwrap().is_none() {
                if started.elapsed() > std::time::Duration::from_secs(90) {
                    let _ = mount.kill();
                    let _ = mount.wait();
                    panic!("{case}: still waiting after 90 s");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let out = mount.wait_with_output().unwrap();
            let waited = started.elapsed();
            let err = stderr(&out);
            let mounted = case == "record";
            assert_eq!(out.status.code(), Some(!mounted as i32), "{case}: {err}");
            assert_eq!(err.lines().count(), 1, "{case}: {err}");
            assert_eq!(
                err.starts_with("idoverlay: warning: no record of the mount was kept: "),
                mounted,
                "{case}: {err}"
            );
            let pid = holder.pid();
            assert!(
                err.contains(&format!(
                    "pid {pid} (perl, stopped: kill -CONT {pid} resumes it) held it for all the 30 s \
                     idoverlay waits"
                )),
                "{case}: {err}"
            );
            assert!(err.contains("EAGAIN"), "{case}: {err}");
            assert!(
                waited >= std::time::Duration::from_secs(30),
                "{case}: {waited:?}"
            );
            if mounted {
                assert!(
                    waited < std::time::Duration::from_secs(58),
                    "{case}: waited twice, {waited:?}"
                );
            }
            assert_eq!(holder.state(), 'T', "{case}");
            drop(holder);
            assert_eq!(mounts_at_or_below(&state), before, "{case}");
            assert_eq!(names_in(&state), names_before, "{case}");
            assert_eq!(
                mounts_at_or_below(&st.target).len(),
                mounted as usize,
                "{case}"
            );
            if mounted {
                run(Command::new("umount").arg(&st.target));
            }
        }
    });
}

/// A provisional state tmpfs, made here by hand as a call mounting one for
/// its assembly makes it (its marker 0400, locked by its maker): a mount
/// waits for the maker (it holds the marker open and sleeps between tries) while
/// `list` only reads and goes on; then, as the maker ends:
/// * killed (the lock let go, the marker still provisional): the mount
///   adopts the tmpfs (final now) and mounts, its record there, no second
///   tmpfs over it;
/// * taking the tmpfs away again: the mount mounts a state tmpfs of its
///   own;
/// * making it final: the mount uses it.
///
/// Before, the tool took a provisional tmpfs as any other, waited for
/// nothing and left it provisional.
#[test]
fn a_provisional_state_tmpfs_is_waited_for_and_adopted_when_its_maker_is_gone() {
    in_private_ns("operators::provisional_state_tmpfs", |s| {
        use std::os::unix::fs::PermissionsExt;
        use std::process::Stdio;
        let st = setup(s, "p", 100000);
        let run_dir = s.path("run");
        mkdir(&run_dir, 0o755, 0, 0);
        for (maker_ends, strategy) in [
            ("killed", "host-staged"),
            ("takes it away", "private-ns"),
            ("makes it final", "auto"),
        ] {
            let what = format!("maker {maker_ends}, {strategy}");
            let state = run_dir.join(strategy);
            let marker = state_tmpfs_by_hand(&state, 0o400);
            let made = mounts_at_or_below(&state);
            assert_eq!(made.len(), 1);
            let maker = std::fs::File::open(&marker).unwrap();
            rustix::fs::flock(&maker, rustix::fs::FlockOperation::LockExclusive).unwrap();
            let ino = maker.metadata().unwrap().ino();

            let mut lister = idoverlay()
                .args(["list", "--state-dir"])
                .arg(&state)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            assert!(
                !waiting_for_lock_or_exited(&mut lister, ino),
                "{what}: list waits for the maker"
            );
            assert!(lister.wait().unwrap().success(), "{what}: list");
            let mut mount = mount_as_shipped(&st, &state, &["--strategy", strategy])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            assert!(
                waiting_for_lock_or_exited(&mut mount, ino),
                "{what}: mounted without waiting for the maker"
            );
            match maker_ends {
                "killed" => {}
                "takes it away" => {
                    run(Command::new("umount").arg("-l").arg(&state));
                }
                _ => maker
                    .set_permissions(std::fs::Permissions::from_mode(0o600))
                    .unwrap(),
            }
            drop(maker);
            let out = mount.wait_with_output().unwrap();
            assert!(out.status.success(), "{what}: {}", stderr(&out));
            let tmpfs: Vec<_> = mounts_at_or_below(&state)
                .into_iter()
                .filter(|m| m.mount_point == state)
                .collect();
            assert_eq!(tmpfs.len(), 1, "{what}: {tmpfs:#?}");
            assert_eq!(
                tmpfs[0].mount_id == made[0].mount_id,
                maker_ends != "takes it away",
                "{what}: {tmpfs:#?} vs {made:#?}"
            );
            final_and_serving(&state, &st.target, &what);
        }
    });
}

/// A name holding a newline or an escape sequence never draws a row or a
/// line of its own in `show` and `list`: each path prints as one run of
/// printable characters (`\xNN` for the rest), and `--json` keeps it as
/// it is. Before, both printed it raw: `show` gained a `layers` row
/// naming `/etc/shadow`, and `list` a second line.
#[test]
fn show_and_list_print_each_path_as_one_run_of_printable_characters() {
    in_private_ns("operators::odd_paths_printed", |s| {
        use std::os::unix::ffi::OsStrExt;
        let dir = s.tmpfs_dir("odd");
        let layers = make_layers(&dir).dirs;
        let target = dir.join("t\nlayers    /etc/shadow\x1b[2J");
        mkdir(&target, 0o755, 0, 0);
        let state = s.path("state");
        let mut cmd = idoverlay();
        cmd.arg("mount").arg("--state-dir").arg(&state);
        for l in &layers {
            cmd.arg("--lower").arg(l);
        }
        run(cmd.args(["--uidmap", MAP, "--gidmap", MAP]).arg(&target));
        let escaped = format!("{}/t\\x0alayers    /etc/shadow\\x1b[2J", dir.display());
        let shown = String::from_utf8(
            run(idoverlay()
                .args(["show", "--state-dir"])
                .arg(&state)
                .arg(&target))
            .stdout,
        )
        .unwrap();
        assert!(!shown.contains('\x1b'), "{shown}");
        assert!(
            shown.lines().any(|l| l == format!("target    {escaped}")),
            "{shown}"
        );
        let layer_rows = shown.lines().filter(|l| l.starts_with("layers ")).count();
        assert_eq!(layer_rows, 1, "{shown}");
        assert_eq!(shown.lines().count(), 5 + layers.len(), "{shown}");
        let listed =
            String::from_utf8(run(idoverlay().args(["list", "--state-dir"]).arg(&state)).stdout)
                .unwrap();
        assert_eq!(listed.lines().count(), 1, "{listed}");
        assert!(listed.starts_with(&format!("{escaped}  ")), "{listed}");
        let json = show_in(&state, &target);
        assert_eq!(
            json["target"].as_str().map(|t| t.as_bytes()),
            Some(target.as_os_str().as_bytes())
        );
        run(idoverlay()
            .args(["umount", "--state-dir"])
            .arg(&state)
            .arg(&target));
    });
}

/// Attached in a container's mount namespace (`-N`: its own pid namespace
/// and /proc), an overlay keeps every check an attach here makes: its
/// upper and work dirs are claimed there (a second overlay on the pair is
/// refused and never attached), a target inside the state dir is refused,
/// and so is a target that directories renamed since the assembly put
/// inside one of its layers.
#[test]
fn attaching_in_a_containers_mount_namespace_keeps_every_check() {
    in_private_ns(
        "operators::attaching_in_a_containers_mount_namespace",
        |s| {
            let dir = s.tmpfs_dir("n");
            let layers = make_layers(&dir.join("layers")).dirs;
            let (upper, work) = (dir.join("upper"), dir.join("work"));
            mkdir(&upper, 0o755, 0, 0);
            mkdir(&work, 0o755, 0, 0);
            let state = dir.join("state");
            mkdir(&state, 0o700, 0, 0);
            let [t1, t2, in_state] = [dir.join("t1"), dir.join("t2"), state.join("x")];
            for t in [&t1, &t2, &in_state] {
                mkdir(t, 0o755, 0, 0);
            }
            // A layer under x/a, and x/b beside it, in a directory of
            // uid 1000's, who swaps them after the assembly: the target
            // x/b/L/sub is then inside the layer.
            let x = dir.join("x");
            mkdir(&x, 0o755, 1000, 1000);
            write_file(&x.join("a/L/who"), "layer", 0o644, 0, 0);
            mkdir(&x.join("a/L/sub"), 0o755, 0, 0);
            mkdir(&x.join("b/L/sub"), 0o755, 0, 0);
            let (mut child, ns) = container_mount_ns();
            let map: idoverlay::IdMap = MAP.parse().unwrap();
            let with_pair = || {
                idoverlay::Overlay::new()
                    .lowers(&layers)
                    .upper(&upper)
                    .work(&work)
                    .idmap(map.clone(), map.clone())
                    .state_dir(&state)
            };
            // The second made before the first is attached: its check found
            // no claim yet, its attach finds the first's.
            let first = with_pair().assemble().unwrap();
            let second = with_pair().assemble().unwrap();
            first.attach_in_namespace(&ns, &t1).unwrap();
            assert_eq!(overlays_in(&child), 1);
            let claim = rustix::fs::getxattr(&upper, "trusted.idoverlay.mount", &mut [0u8; 256])
                .map_err(|e| format!("{e}"));
            assert!(claim.is_ok(), "the upper was not claimed there: {claim:?}");
            let e = second.attach_in_namespace(&ns, &t2).unwrap_err();
            assert!(e.to_string().contains("in use"), "{e}");
            assert_eq!(
                overlays_in(&child),
                1,
                "the second overlay was attached there"
            );
            // What a copy-up in flight keeps in the first overlay's work/:
            // a second overlay's superblock would empty it.
            write_file(&work.join("work/#1f"), "in flight", 0o600, 0, 0);
            // Seen from here, before a second overlay is made, as there.
            let e = with_pair().assemble().unwrap_err();
            assert!(
                e.to_string().contains("in use")
                    && e.to_string().contains("another mount namespace"),
                "{e}"
            );
            let e = with_pair().mount(&t2).unwrap_err();
            assert!(e.to_string().contains("in use"), "{e}");
            assert!(
                work.join("work/#1f").exists(),
                "the first overlay's work/ was emptied"
            );
            assert_eq!(
                overlays_in(&child),
                1,
                "a second overlay was attached there"
            );
            idoverlay::unmount_overlay_in_namespace(&ns, &t1, false).unwrap();
            let plain = || {
                idoverlay::Overlay::new()
                    .lower(x.join("a/L"))
                    .lowers(&layers)
                    .idmap(map.clone(), map.clone())
                    .state_dir(&state)
                    .assemble()
                    .unwrap()
            };
            let e = plain().attach_in_namespace(&ns, &in_state).unwrap_err();
            assert!(e.to_string().contains("inside the state dir"), "{e}");
            let mounted = plain();
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                x.join("a"),
                rustix::fs::CWD,
                x.join("b"),
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .unwrap();
            assert_eq!(std::fs::read_to_string(x.join("b/L/who")).unwrap(), "layer");
            let e = mounted
                .attach_in_namespace(&ns, x.join("b/L/sub"))
                .unwrap_err();
            assert!(e.to_string().contains("as the directories are now"), "{e}");
            assert_eq!(overlays_in(&child), 0);
            child.kill().unwrap();
            child.wait().unwrap();
        },
    );
}
