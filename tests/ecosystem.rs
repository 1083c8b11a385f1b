//! idoverlay speaking the languages of the tools around it: mount(8)
//! syntax, containerd's snapshot mounts, util-linux's mount helper and
//! fstab, OCI configs, JSON.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Setup {
    layers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    target: PathBuf,
}

fn setup(dir: &Path) -> Setup {
    let layers = make_layers(dir).dirs;
    let (upper, work, target) = (dir.join("c/upper"), dir.join("c/work"), dir.join("rootfs"));
    for d in [&upper, &work, &target] {
        mkdir(d, 0o755, 0, 0);
    }
    Setup {
        layers,
        upper,
        work,
        target,
    }
}

/// What a user sees through a mount: every path with owner and contents.
fn view(root: &Path) -> Vec<(PathBuf, u32, u32, Option<String>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let text = m
            .is_file()
            .then(|| fs::read_to_string(&p).unwrap_or_default());
        out.push((
            p.strip_prefix(root).unwrap().to_path_buf(),
            m.uid(),
            m.gid(),
            text,
        ));
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

fn joined(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn containerd_snapshot_options_give_the_flag_forms_result() {
    in_private_ns("ecosystem::containerd", |s| {
        let dir = s.ext4_dir("e");
        let st = setup(&dir);
        // Exactly as containerd's overlay snapshotter builds them, with
        // multi-range maps (uidmap= ranges separated by commas).
        let maps =
            "uidmap=0:100000:65536,65536:300000:1000,gidmap=0:100000:65536,65536:300000:1000";
        let options = format!(
            "index=off,redirect_dir=on,workdir={},upperdir={},lowerdir={},{maps}",
            st.work.display(),
            st.upper.display(),
            joined(&st.layers)
        );
        let before = mounts();
        run(idoverlay()
            .args(["mount", "-t", "overlay", "overlay", "-o", &options])
            .arg(&st.target));
        let added = new_mounts(&before, &mounts());
        assert_eq!(added.len(), 1);
        assert!(
            added[0].super_options.contains("redirect_dir=on"),
            "{:?}",
            added[0]
        );
        let mount8_view = view(&st.target);
        run(idoverlay().arg("umount").arg(&st.target));

        let mut args = vec!["mount".to_string()];
        for l in &st.layers {
            args.extend(["--lower".into(), l.display().to_string()]);
        }
        args.extend([
            "--upper".into(),
            st.upper.display().to_string(),
            "--work".into(),
            st.work.display().to_string(),
            "--uidmap".into(),
            "0:100000:65536,65536:300000:1000".into(),
            "--gidmap".into(),
            "0:100000:65536,65536:300000:1000".into(),
            "-o".into(),
            "index=off,redirect_dir=on".into(),
            st.target.display().to_string(),
        ]);
        run(idoverlay().args(&args));
        assert_eq!(
            view(&st.target),
            mount8_view,
            "same result as the flag form"
        );
        assert_eq!(owner(&st.target.join("home/app")), (101000, 101000));
        run(idoverlay().arg("umount").arg(&st.target));
        assert_eq!(mounts(), before);
    });
}

#[test]
fn util_linux_idmap_syntax_and_escaped_lowerdir() {
    in_private_ns("ecosystem::util_linux", |s| {
        let dir = s.tmpfs_dir("t");
        let st = setup(&dir);
        // A layer whose name needs overlay's escapes in lowerdir=.
        let odd = dir.join("odd:la,yer");
        write_file(&odd.join("odd-file"), "odd", 0o644, 1000, 1000);
        let escaped = odd
            .display()
            .to_string()
            .replace(':', "\\:")
            .replace(',', "\\,");
        let options = format!(
            "lowerdir={escaped}:{},X-mount.idmap=u:0:100000:65536 g:0:200000:65536",
            joined(&st.layers)
        );
        run(idoverlay()
            .args(["mount", "-t", "overlay", "overlay", "-o", &options])
            .arg(&st.target));
        assert_eq!(owner(&st.target.join("odd-file")), (101000, 201000));
        assert_eq!(owner(&st.target.join("etc/hostname")), (100000, 200000));
        run(idoverlay().arg("umount").arg(&st.target));
    });
}

#[test]
fn oci_config_gives_the_maps() {
    in_private_ns("ecosystem::oci", |s| {
        let dir = s.tmpfs_dir("t");
        let st = setup(&dir);
        let config = dir.join("config.json");
        fs::write(
            &config,
            r#"{"ociVersion": "1.2.0", "process": {"args": ["sh"]}, "linux": {
                "namespaces": [{"type": "user"}, {"type": "mount"}],
                "uidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 400000, "size": 65536}]}}"#,
        )
        .unwrap();
        let out = run(idoverlay()
            .args(["mount", "--json", "--lower"])
            .arg(&st.layers[0])
            .arg("--lower")
            .arg(&st.layers[2])
            .arg("--oci-config")
            .arg(&config)
            .arg(&st.target));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["idmap"]["uidmap"], "0:300000:65536");
        assert_eq!(owner(&st.target.join("home/app")), (301000, 401000));
        run(idoverlay().arg("umount").arg(&st.target));
        // Maps from two places at once are refused.
        let out = idoverlay()
            .args(["mount", "--lower"])
            .arg(&st.layers[0])
            .arg("--oci-config")
            .arg(&config)
            .args(["--uidmap", "0:1:1", "--gidmap", "0:1:1"])
            .arg(&st.target)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("more than one place"),
            "{}",
            stderr(&out)
        );
    });
}

/// In this private namespace, a writable overlay over `dir` (upper and work
/// on the scratch tmpfs), so that what a test writes there stays here.
fn private_overlay_over(scratch: &Path, dir: &str) {
    let tag = dir.trim_start_matches('/').replace('/', "-");
    let (up, work) = (
        scratch.join(format!("{tag}-upper")),
        scratch.join(format!("{tag}-work")),
    );
    for d in [&up, &work] {
        mkdir(d, 0o755, 0, 0);
    }
    run(mount8()
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={dir},upperdir={},workdir={}",
            up.display(),
            work.display()
        ))
        .arg(dir));
}

/// The binary under test as a source install has it, in this private
/// namespace only: copied to /usr/local/bin/idoverlay (an overlay), out of
/// the cargo target dir, which install-helper refuses.
fn installed_copy(scratch: &Path) -> PathBuf {
    private_overlay_over(scratch, "/usr/local/bin");
    let installed = PathBuf::from("/usr/local/bin/idoverlay");
    copy_of_the_binary(&installed);
    installed
}

fn installed(binary: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env("IDOVERLAY_PROBE_CACHE", "off");
    cmd
}

/// mount(8) only looks for helpers in /sbin (/usr/sbin here): in this
/// private namespace, lay a writable overlay over /usr/sbin and install the
/// helper there, linked to an installed copy of the binary.
fn install_helper_privately(dir: &Path) {
    private_overlay_over(dir, "/usr/sbin");
    let binary = installed_copy(dir);
    let out = run(installed(&binary).args(["install-helper", "--dir", "/usr/sbin"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/usr/sbin/mount.idoverlay -> /usr/local/bin/idoverlay\n"
    );
    // Idempotent.
    run(installed(&binary).args(["install-helper", "--dir", "/usr/sbin"]));
}

#[test]
fn install_helper_refuses_a_build_and_dirs_mount8_does_not_search() {
    in_private_ns("ecosystem::install_helper_refusals", |s| {
        let dir = s.tmpfs_dir("t");
        // Whatever goes wrong, nothing reaches the host's /usr/sbin.
        private_overlay_over(&dir, "/usr/sbin");
        let helper = Path::new("/usr/sbin/mount.idoverlay");
        let before = fs::symlink_metadata(helper).ok().map(|m| m.ino());
        let refused = |out: &std::process::Output, what: &[&str]| {
            let err = stderr(out);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
            for w in what {
                assert!(err.contains(w), "{w:?} in {err}");
            }
        };
        let searched = "mount(8) looks for mount.idoverlay in /sbin, /sbin/fs.d, /sbin/fs only";

        // The test binary itself lives in a cargo target dir.
        for args in [
            vec!["install-helper"],
            vec!["install-helper", "--dir", "/usr/sbin"],
        ] {
            let out = idoverlay().args(&args).output().unwrap();
            refused(
                &out,
                &[
                    "is in a cargo target dir",
                    "cargo install --path . --root /usr/local",
                    "/usr/local/bin/idoverlay install-helper",
                ],
            );
        }
        // So does a copy in any tree cargo marked (here only CACHEDIR.TAG).
        let tree = dir.join("elsewhere/target");
        write_file(
            &tree.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n",
            0o644,
            0,
            0,
        );
        mkdir(&tree.join("release"), 0o755, 0, 0);
        let copy = tree.join("release/idoverlay");
        copy_of_the_binary(&copy);
        let out = installed(&copy).arg("install-helper").output().unwrap();
        refused(&out, &["CACHEDIR.TAG is there"]);
        assert_eq!(fs::symlink_metadata(helper).ok().map(|m| m.ino()), before);

        // An installed binary, but directories mount(8) does not search
        // (mount -t idoverlay would say "unknown filesystem type"); the
        // host's /usr/local/sbin under an overlay too, whatever goes wrong.
        let binary = installed_copy(&dir);
        private_overlay_over(&dir, "/usr/local/sbin");
        let elsewhere = dir.join("bin");
        mkdir(&elsewhere, 0o755, 0, 0);
        for d in [
            Path::new("/usr/local/sbin"),
            Path::new("/usr/local/bin"),
            &elsewhere,
        ] {
            let out = installed(&binary)
                .args(["install-helper", "--dir"])
                .arg(d)
                .output()
                .unwrap();
            refused(&out, &["is not a directory mount(8) searches", searched]);
            assert!(fs::symlink_metadata(d.join("mount.idoverlay")).is_err());
        }
        let out = installed(&binary)
            .args(["install-helper", "--dir", "/nonexistent"])
            .output()
            .unwrap();
        refused(&out, &["does not exist", searched]);
        assert_eq!(fs::symlink_metadata(helper).ok().map(|m| m.ino()), before);

        // Help and completions offer the search path.
        let help = run(idoverlay().args(["install-helper", "--help"]));
        assert!(String::from_utf8_lossy(&help.stdout)
            .contains("[possible values: /sbin, /sbin/fs.d, /sbin/fs]"));
    });
}

/// mount(8), whose helper must not keep a probe report in the default
/// state dir (that would create /run/idoverlay).
fn mount8() -> Command {
    let mut cmd = Command::new("mount");
    cmd.env("IDOVERLAY_PROBE_CACHE", "off");
    cmd
}

#[test]
fn mount_helper_fstab_and_namespaces() {
    in_private_ns("ecosystem::helper", |s| {
        let dir = s.tmpfs_dir("t");
        let st = setup(&dir);
        install_helper_privately(&dir);
        let options = format!(
            "lowerdir={},upperdir={},workdir={},uidmap=0:100000:65536,gidmap=0:100000:65536,nosuid",
            joined(&st.layers),
            st.upper.display(),
            st.work.display()
        );
        // The real mount(8) through the helper.
        let before = mounts();
        run(mount8()
            .args(["-t", "idoverlay", "overlay"])
            .arg(&st.target)
            .args(["-o", &options]));
        let added = new_mounts(&before, &mounts());
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].fs_type, "overlay");
        assert!(added[0].mount_options.contains("nosuid"));
        assert_eq!(owner(&st.target.join("srv/data")), (101000, 101000));
        run(Command::new("umount").arg(&st.target));
        assert_eq!(mounts(), before);

        // An fstab line, mounted by its target alone.
        let fstab = dir.join("fstab");
        fs::write(
            &fstab,
            format!("overlay {} idoverlay {options} 0 0\n", st.target.display()),
        )
        .unwrap();
        run(mount8().arg("-T").arg(&fstab).arg(&st.target));
        assert_eq!(owner(&st.target.join("home/app")), (101000, 101000));
        run(Command::new("umount").arg(&st.target));

        // Bad options through mount(8): the helper's one line and mount's status.
        let out = mount8()
            .args(["-t", "idoverlay", "overlay"])
            .arg(&st.target)
            .args([
                "-o",
                &format!(
                    "lowerdir=/nonexistent:{},uidmap=0:1:1,gidmap=0:1:1",
                    joined(&st.layers)
                ),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("\"/nonexistent\": does not exist"),
            "{}",
            stderr(&out)
        );

        // -N: attach inside another mount namespace, not this one.
        let mut other = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "30"])
            .spawn()
            .unwrap();
        let ns = format!("/proc/{}/ns/mnt", other.id());
        let own = fs::read_link("/proc/thread-self/ns/mnt").unwrap();
        while fs::read_link(&ns).map(|l| l == own).unwrap_or(true) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let before = mounts();
        run(idoverlay()
            .args(["mount", "-N", &ns, "-o", &options.replace(",nosuid", "")])
            .arg(&st.target));
        assert_eq!(mounts(), before, "nothing attached in our namespace");
        let theirs = fs::read_to_string(format!("/proc/{}/mountinfo", other.id())).unwrap();
        let target = st.target.display().to_string();
        assert!(
            theirs
                .lines()
                .any(|l| l.contains(&format!(" {target} ")) && l.contains(" overlay ")),
            "{theirs}"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    });
}

#[test]
fn json_everywhere() {
    in_private_ns("ecosystem::json", |s| {
        let dir = s.tmpfs_dir("t");
        let st = setup(&dir);
        let state = dir.join("state");
        let l = st.layers[0].display().to_string();
        let t = st.target.display().to_string();
        let maps = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];
        let parse = |out: &std::process::Output| -> serde_json::Value {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", out))
        };
        let l2 = st.layers[1].display().to_string();
        let v = parse(&run(idoverlay()
            .args(["mount", "--json", "--lower", &l, "--lower", &l2])
            .args(maps)
            .arg(&t)));
        assert_eq!(v["target"], t);
        let v = parse(&run(idoverlay().args(["umount", "--json", &t])));
        assert_eq!(v["unmounted"], true);
        let v = parse(&run(idoverlay().args(["probe", "--json"])));
        assert!(v["features"].is_object());
        let v = parse(&run(idoverlay()
            .args(["gc", "--json", "--state-dir"])
            .arg(&state)));
        assert_eq!(v["clean"], true);
        // Errors too: an object with kind, message, errno, path.
        for args in [
            vec![
                "mount",
                "--json",
                "--lower",
                "/nonexistent",
                "--uidmap",
                "0:1:1",
                "--gidmap",
                "0:1:1",
                &t,
            ],
            vec!["umount", "--json", &l],
            vec![
                "mount", "--json", "--lower", &l, "--uidmap", "x", "--gidmap", "0:1:1", &t,
            ],
        ] {
            let out = idoverlay().args(&args).output().unwrap();
            assert!(!out.status.success());
            let v = parse(&out);
            let e = &v["error"];
            assert!(e["kind"].is_string() && e["message"].is_string(), "{v}");
            assert!(e.get("errno").is_some() && e.get("path").is_some(), "{v}");
        }
    });
}

#[test]
fn man_pages_and_completions_are_generated() {
    in_private_ns("ecosystem::man", |s| {
        let dir = s.tmpfs_dir("man");
        run(idoverlay().arg("manpages").arg(&dir));
        for page in [
            "idoverlay.1",
            "idoverlay-mount.1",
            "idoverlay-probe.1",
            "idoverlay-gc.1",
        ] {
            let text = fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".TH"), "{page}");
        }
        let mount_page = fs::read_to_string(dir.join("idoverlay-mount.1")).unwrap();
        assert!(mount_page.contains("uidmap"));
        for shell in ["bash", "zsh", "fish"] {
            let out = run(idoverlay().args(["completions", shell]));
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("idoverlay"),
                "{shell}"
            );
        }
        let help = run(idoverlay().args(["mount", "--help"]));
        assert!(String::from_utf8_lossy(&help.stdout).contains("Examples:"));
    });
}
