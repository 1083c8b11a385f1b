//! `idoverlay probe` on this machine: the live answer, the table's answer,
//! and nothing left behind.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use idoverlay::probe::probe;
use idoverlay::{Feature, KernelVersion, Strategy};

const MAP: &str = "0:100000:65536";

#[test]
fn live_probe_agrees_with_the_table_and_leaves_nothing() {
    in_private_ns("probe::live", |s| {
        let ext4 = s.ext4_dir("e");
        let tmp = s.tmpfs_dir("t");
        let scratch_before: Vec<_> = fs::read_dir(&s.root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mounts_before = mounts();

        let report = probe(&[ext4.clone(), tmp.clone(), "/proc".into()], None);

        // Nothing left: mounts, scratch contents (fds and processes are
        // counted in tests/leaks.rs, where no other test runs alongside).
        assert_eq!(mounts(), mounts_before);
        let scratch_after: Vec<_> = fs::read_dir(&s.root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(scratch_after, scratch_before);

        let kernel: KernelVersion = report.kernel.parse().unwrap();
        assert!(report.disagreements().is_empty(), "{:#?}", report.features);
        assert!(!report.guess);
        for f in Feature::ALL {
            let r = report.feature(f);
            assert_eq!(r.expected, f.expected_on(&kernel), "{f}: {r:?}");
            // Where detached layers work, no namespace is unshared (that
            // copies the whole mount table): that one feature is not probed.
            if f == Feature::PrivateMountNs && report.observed(Feature::OverlayDetachedLayers) {
                assert_eq!(r.observed, None, "{r:?}");
                assert!(
                    r.note.as_deref().unwrap_or("").contains("not needed"),
                    "{r:?}"
                );
                continue;
            }
            assert!(r.observed.is_some(), "{f} must be probed here: {r:?}");
        }
        // This machine (6.15+, below 7.3): everything through detached layers.
        if kernel.at_least(6, 15) && !kernel.at_least(7, 3) {
            for f in Feature::ALL {
                let want = f != Feature::OverlayMergedIdmap && f != Feature::PrivateMountNs;
                assert_eq!(report.observed(f), want, "{f}: {:?}", report.feature(f));
            }
            assert_eq!(
                report.feature(Feature::OverlayMergedIdmap).errno.as_deref(),
                Some("EINVAL")
            );
            assert_eq!(report.strategy, Some(Strategy::Detached));
        }
        assert_eq!(report.paths.len(), 3);
        assert_eq!(report.paths[0].fs_type, "ext4");
        assert_eq!(report.paths[0].idmap, Some(true));
        assert_eq!(report.paths[1].fs_type, "tmpfs");
        assert_eq!(report.paths[1].idmap, Some(true));
        assert_eq!(report.paths[2].fs_type, "proc");
        assert_eq!(report.paths[2].idmap, Some(false));
        assert_eq!(report.paths[2].errno.as_deref(), Some("EINVAL"));
        assert!(!report.paths[2].idmap_expected);
    });
}

#[test]
fn cli_probe_json_schema() {
    in_private_ns("probe::cli_json", |s| {
        let ext4 = s.ext4_dir("e");
        let tmp = s.tmpfs_dir("t");
        let before = mounts();
        let out = run(idoverlay()
            .args(["probe", "--json", "--path"])
            .arg(&ext4)
            .arg("--path")
            .arg(&tmp));
        assert_eq!(mounts(), before);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["kernel"].is_string());
        for f in Feature::ALL {
            let entry = &v["features"][f.name()];
            assert!(entry["expected"].is_boolean(), "{f}: {entry}");
            assert!(entry["observed"].is_boolean() || entry["observed"].is_null());
            assert!(entry["errno"].is_string() || entry["errno"].is_null());
        }
        assert_eq!(v["paths"][0]["fs_type"], "ext4");
        assert_eq!(v["paths"][0]["idmap"], true);
        assert_eq!(v["paths"][1]["fs_type"], "tmpfs");
        assert!(v["strategy"].is_string());
        assert!(v["reason"].is_string());
        assert_eq!(v["disagreements"], serde_json::json!([]));
        let out = run(idoverlay().arg("probe"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("overlay_detached_layers") && text.contains("auto would use"),
            "{text}"
        );
    });
}

#[test]
fn without_cap_sys_admin_the_probe_says_so_and_guesses() {
    if !privileged("probe::unprivileged") {
        return;
    }
    // Drop every capability, keep uid 0: the probe must not try anything.
    let out = run(std::process::Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_idoverlay"))
        .args(["probe", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["guess"], true);
    assert!(v["reason"].as_str().unwrap().contains("guess"), "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("CAP_SYS_ADMIN"),
        "{v}"
    );
    for f in Feature::ALL {
        assert!(v["features"][f.name()]["observed"].is_null());
        assert!(v["features"][f.name()]["note"]
            .as_str()
            .unwrap()
            .contains("CAP_SYS_ADMIN"));
    }
}

#[test]
fn forced_strategy_refused_with_the_kernel_version_it_needs() {
    in_private_ns("probe::forced", |s| {
        let dir = s.tmpfs_dir("t");
        let layers = make_layers(&dir);
        let target = dir.join("m");
        mkdir(&target, 0o755, 0, 0);
        let before = mounts();
        let err = idoverlay::Overlay::new()
            .lowers(layers.dirs.clone())
            .idmap(
                "0:100000:65536".parse().unwrap(),
                "0:100000:65536".parse().unwrap(),
            )
            .strategy(Strategy::Detached)
            .pretend_missing(Feature::OverlayDetachedLayers)
            .mount(&target)
            .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.kind(), "unsupported");
        assert!(
            text.starts_with(
                "the detached strategy needs kernel 6.15 (overlay_detached_layers); this is "
            ),
            "{text}"
        );
        assert!(text.contains("auto would use private-ns"), "{text}");
        // Nothing works below 5.19: one line saying why and what would.
        let err = idoverlay::Overlay::new()
            .lowers(layers.dirs.clone())
            .idmap(
                "0:100000:65536".parse().unwrap(),
                "0:100000:65536".parse().unwrap(),
            )
            .pretend_missing(Feature::OverlayIdmappedLayers)
            .pretend_missing(Feature::OverlayDetachedLayers)
            .mount(&target)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("needs kernel 5.19 (overlay_idmapped_layers"),
            "{text}"
        );
        assert_eq!(mounts(), before);
    });
}

#[test]
fn a_saved_report_missing_or_inventing_a_feature_is_refused_in_one_line() {
    in_private_ns("probe::saved_report_features", |s| {
        let dir = s.tmpfs_dir("t");
        let layers = make_layers(&dir).dirs;
        let target = dir.join("m");
        fs::create_dir(&target).unwrap();
        let out = run(idoverlay().args(["probe", "--json"]));
        let full: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut missing = full.clone();
        missing["features"]
            .as_object_mut()
            .unwrap()
            .remove("overlay_detached_layers");
        let mut invented = full.clone();
        invented["features"]["overlay_time_travel"] = full["features"]["new_mount_api"].clone();
        for (name, report, says) in [
            (
                "missing",
                missing,
                "has no result for feature overlay_detached_layers",
            ),
            (
                "invented",
                invented,
                "unknown feature \"overlay_time_travel\"",
            ),
        ] {
            let file = dir.join(format!("{name}.json"));
            fs::write(&file, report.to_string()).unwrap();
            let out = idoverlay()
                .args(["mount", "--strategy", "detached", "--probe-report"])
                .arg(&file)
                .arg("--lower")
                .arg(&layers[0])
                .arg("--lower")
                .arg(&layers[1])
                .args(["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"])
                .arg(&target)
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{name}: {err}");
            assert_eq!(err.lines().count(), 1, "{name}: {err}");
            assert!(err.contains(says), "{name}: {err}");
            assert!(mounts().iter().all(|m| m.mount_point != target));
        }
    });
}

#[test]
fn the_cli_keeps_the_probe_report_for_the_boot_in_the_state_dir() {
    in_private_ns("probe::boot_cache", |s| {
        let dir = s.tmpfs_dir("p");
        let layers = make_layers(&dir.join("layers")).dirs;
        let parent = dir.join("run");
        mkdir(&parent, 0o755, 0, 0);
        let state = parent.join("idoverlay");
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let cli = |args: &[&std::ffi::OsStr]| {
            let mut c = idoverlay();
            c.env_remove("IDOVERLAY_PROBE_CACHE").args(args);
            c.output().unwrap()
        };
        let mount = |lowers: &[PathBuf]| {
            let mut args: Vec<std::ffi::OsString> = vec!["-v".into(), "mount".into()];
            for l in lowers {
                args.push("--lower".into());
                args.push(l.into());
            }
            args.extend(["--uidmap", MAP, "--gidmap", MAP, "--state-dir"].map(Into::into));
            args.push(state.clone().into());
            args.push(target.clone().into());
            let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            cli(&refs)
        };
        let umount = || {
            assert!(cli(&["umount".as_ref(), target.as_os_str()])
                .status
                .success())
        };
        let from_cache = |out: &std::process::Output| stderr(out).contains("of this boot");
        let kept = state.join("probe/tmpfs.json");
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();

        // Bad input keeps nothing: not even the state dir is made.
        let out = mount(&[layers[0].clone(), dir.join("no-such-layer")]);
        assert!(!out.status.success());
        assert!(!state.exists(), "bad input created the state dir");

        // The first mount probes and keeps the report; the next uses it.
        let out = mount(&layers);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!from_cache(&out), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&kept).unwrap()).unwrap();
        assert_eq!(v["boot_id"], boot.trim());
        assert_eq!(v["kernel"], release.trim());
        assert_eq!(v["idoverlay"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["report"]["paths"][0]["fs_type"], "tmpfs");
        let id = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (m.ino(), m.mtime_nsec(), m.mode() & 0o7777, m.uid())
        };
        let first = id(&kept);
        assert_eq!((first.2, first.3), (0o600, 0), "root's alone");
        umount();
        let out = mount(&layers);
        assert!(out.status.success() && from_cache(&out), "{}", stderr(&out));
        assert_eq!(id(&kept), first, "rewritten although it was good");
        umount();

        // Another boot's report, another idoverlay's, or one that does not
        // parse: probed again.
        let other = |key: &str, value: &str| {
            let mut v = v.clone();
            v[key] = value.into();
            serde_json::to_vec(&v).unwrap()
        };
        let other_boot = other("boot_id", "00000000-0000-0000-0000-000000000000");
        let other_idoverlay = other("idoverlay", "0.0.1-older");
        for stale in [other_boot, other_idoverlay, b"{\"format\":".to_vec()] {
            fs::write(&kept, &stale).unwrap();
            let out = mount(&layers);
            assert!(
                out.status.success() && !from_cache(&out),
                "{}",
                stderr(&out)
            );
            let v: serde_json::Value = serde_json::from_slice(&fs::read(&kept).unwrap()).unwrap();
            assert_eq!(v["boot_id"], boot.trim());
            umount();
        }

        // A report whose directory did not take an idmap (what a directory
        // of another user namespace's mount, swapped in for the layer,
        // leaves): never kept, never used; probed again, and the mount made.
        let refused_idmap = {
            let mut v = v.clone();
            v["report"]["paths"][0]["idmap"] = false.into();
            v["report"]["paths"][0]["errno"] = "EINVAL".into();
            serde_json::to_vec(&v).unwrap()
        };
        fs::write(&kept, &refused_idmap).unwrap();
        let out = mount(&layers);
        assert!(
            out.status.success() && !from_cache(&out),
            "{}",
            stderr(&out)
        );
        let again: serde_json::Value = serde_json::from_slice(&fs::read(&kept).unwrap()).unwrap();
        assert_eq!(again["report"]["paths"][0]["idmap"], true);
        umount();
        // A kept strategy that the features do not give (an older
        // idoverlay's choice): the features choose.
        let chose = v["report"]["strategy"].as_str().unwrap().to_string();
        assert_ne!(chose, "host-staged");
        let other_choice = {
            let mut v = v.clone();
            v["report"]["strategy"] = "host-staged".into();
            serde_json::to_vec(&v).unwrap()
        };
        fs::write(&kept, &other_choice).unwrap();
        let out = mount(&layers);
        let said = stderr(&out);
        assert!(out.status.success() && from_cache(&out), "{said}");
        assert!(said.contains(&format!("strategy {chose} ")), "{said}");
        umount();

        // `idoverlay probe` always probes live, and refreshes what is kept.
        let before = id(&kept);
        let out = cli(&[
            "probe".as_ref(),
            "--path".as_ref(),
            layers[0].as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_ne!(id(&kept), before, "idoverlay probe did not refresh it");

        // gc knows it for idoverlay's own.
        let out = cli(&["gc".as_ref(), "--state-dir".as_ref(), state.as_os_str()]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(kept.exists());
    });
}
