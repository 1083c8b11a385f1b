//! Asking the running kernel what it can do, by trying each operation for
//! real on scratch directories nobody else can see.
//!
//! Everything happens on a short-lived thread of its own (own fs struct).
//! The scratch area is a tmpfs created with `fsmount`, attached nowhere.
//! Where overlay takes detached layers (6.15+), every feature is tried on
//! detached mounts only — clones of the scratch tmpfs, overlays from
//! `fsopen` — and nothing is unshared, so the probe costs the same however
//! many mounts the node has. Elsewhere the thread unshares its mount
//! namespace (a copy of the whole table), makes `/` recursively private and
//! attaches the scratch tmpfs there. A directory the user names (`--path`)
//! is only cloned and idmapped, never written. When the thread ends, its
//! namespace, the tmpfs and every mount made go with it; the user namespace
//! helper is reaped before the probe returns. Nothing is left behind: no
//! mount, file, process or fd.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kernel_compat::{idmap_expected, Feature, KernelVersion};

use crate::idmap::IdMap;
pub use crate::report::{FeatureResult, PathResult, ProbeReport};

/// Keeps `report` in the state dir for the rest of the boot, where
/// [`crate::Overlay::keep_probe_for_boot`] finds it, for each filesystem
/// type of the paths it probed (a report without paths, or a guess made
/// without privileges, is not kept). Creates the state dir's tmpfs when
/// needed.
pub fn keep_for_boot(state_dir: &Path, report: &ProbeReport) -> crate::Result<()> {
    crate::probe_cache::store(&crate::state::StateDirOnce::new(state_dir), report)
}
use crate::process_local::ProcessLocal;
use crate::sys::{self, MountAttrs, SysError};
use crate::userns::UserNamespace;

/// Probes the running kernel: each feature on a scratch tmpfs, and whether
/// each of `paths` takes idmapped mounts. `userns` is used for the idmaps
/// when given; otherwise one is made (map `0:100000:65536`) and dropped.
///
/// ```no_run
/// let report = idoverlay::probe::probe(&[], None);
/// println!("auto would use {:?}: {}", report.strategy, report.reason);
/// ```
pub fn probe(paths: &[PathBuf], userns: Option<&UserNamespace>) -> ProbeReport {
    let release = sys::kernel_release();
    let version: Option<KernelVersion> = release.parse().ok();
    let mut observed: BTreeMap<Feature, Observation> = BTreeMap::new();
    let mut path_results: Vec<PathResult> = paths
        .iter()
        .map(|p| PathResult {
            path: p.clone(),
            fs_type: "unknown".into(),
            idmap: None,
            idmap_expected: false,
            errno: None,
            note: None,
        })
        .collect();
    let privileged = crate::creds::has_cap_sys_admin();
    let mut idmap_fs = "tmpfs".to_string();
    if privileged {
        let live = crate::threads::run_on_thread("probe", || Ok(Live::run(paths, userns)))
            .unwrap_or_default();
        observed = live.features;
        idmap_fs = live.idmap_fs;
        for (result, (fs, outcome)) in path_results.iter_mut().zip(live.paths) {
            result.fs_type = fs;
            match outcome {
                Observation::Works => result.idmap = Some(true),
                Observation::Fails(e) => {
                    result.idmap = Some(false);
                    result.errno = Some(sys::errno_name(e).to_string());
                }
                Observation::NotProbed(why) | Observation::Absent(why) => result.note = Some(why),
            }
        }
    } else {
        for r in &mut path_results {
            r.note = Some("not probed: needs CAP_SYS_ADMIN".into());
        }
    }
    for r in &mut path_results {
        r.idmap_expected = version
            .as_ref()
            .is_some_and(|v| idmap_expected(v, &r.fs_type));
    }

    let mut features = BTreeMap::new();
    for feature in Feature::ALL {
        let expected = match &version {
            None => false,
            Some(v) if feature == Feature::MountSetattrIdmap => idmap_expected(v, &idmap_fs),
            Some(v) => feature.expected_on(v),
        };
        let (observed, errno, note) = match observed.remove(&feature) {
            Some(Observation::Works) => (Some(true), None, None),
            Some(Observation::Fails(e)) => {
                (Some(false), Some(sys::errno_name(e).to_string()), None)
            }
            Some(Observation::Absent(why)) => (Some(false), None, Some(why)),
            Some(Observation::NotProbed(why)) => (None, None, Some(why)),
            None if !privileged => (None, None, Some("not probed: needs CAP_SYS_ADMIN".into())),
            None => (None, None, Some("not probed".into())),
        };
        let note = match (feature, &observed) {
            (Feature::MountSetattrIdmap, Some(_)) => Some(format!("probed on {idmap_fs}")),
            _ => note,
        };
        features.insert(
            feature,
            FeatureResult {
                expected,
                observed,
                errno,
                note,
            },
        );
    }
    let mut report = ProbeReport {
        kernel: release,
        features,
        paths: path_results,
        strategy: None,
        reason: String::new(),
        guess: !privileged,
    };
    crate::choose::fill_auto(&mut report);
    report
}

/// The probe run once per process and per filesystem type of the layers
/// (what `Strategy::Auto` uses): the kernel cannot change under a running
/// process, and a probe costs a few milliseconds. `layer` (a layer of that
/// filesystem type) is probed as the report's one `--path`.
pub(crate) fn cached(
    layer: &Path,
    fs_type: &str,
    userns: Option<&UserNamespace>,
) -> Arc<ProbeReport> {
    static CACHE: ProcessLocal<BTreeMap<String, Arc<ProbeReport>>> =
        ProcessLocal::new(BTreeMap::new());
    // Not held while probing: a burst may probe more than once, but a
    // child forked meanwhile (which probes, unkept) finds the lock free.
    if let Some(report) = CACHE.lock(|_| {}).and_then(|c| c.get(fs_type).cloned()) {
        return report;
    }
    let report = Arc::new(probe(&[layer.to_path_buf()], userns));
    if let Some(mut cache) = CACHE.lock(|_| {}) {
        cache.insert(fs_type.to_string(), report.clone());
    }
    report
}

#[derive(Debug, Clone)]
enum Observation {
    Works,
    Fails(i32),
    /// Does not work, without an errno to show for it.
    Absent(String),
    NotProbed(String),
}

impl<T> From<Result<T, SysError>> for Observation {
    fn from(r: Result<T, SysError>) -> Self {
        match r {
            Ok(_) => Observation::Works,
            Err(e) => Observation::Fails(e.errno),
        }
    }
}

/// The live probe, run on its own thread.
#[derive(Default)]
struct Live {
    features: BTreeMap<Feature, Observation>,
    /// Per path: its filesystem type and whether it took an idmap.
    paths: Vec<(String, Observation)>,
    /// The filesystem the idmap features were observed on.
    idmap_fs: String,
}

/// Two scratch lower layers (and an upper/work pair) inside the scratch tmpfs.
const SCRATCH_DIRS: [&str; 4] = ["l0", "l1", "a0", "a1"];

impl Live {
    fn run(paths: &[PathBuf], userns: Option<&UserNamespace>) -> Live {
        let mut live = Live::run_all(paths, userns);
        live.apply_prerequisites();
        live
    }

    /// A feature left unprobed because what it builds on was observed
    /// missing is observed missing too, with that errno: on a kernel
    /// without `mount_setattr`, no overlay over idmapped layers either.
    fn apply_prerequisites(&mut self) {
        use Feature::*;
        const NEEDS: [(Feature, Feature); 7] = [
            (MountSetattrIdmap, NewMountApi),
            (OverlayIdmappedLayers, MountSetattrIdmap),
            (OverlayDetachedLayers, MountSetattrIdmap),
            (OverlayMergedIdmap, MountSetattrIdmap),
            (OverlayLowerdirPlus, OverlayNewMountApi),
            (OverlayFdLayers, OverlayNewMountApi),
            (OverlayDetachedLayers, OverlayFdLayers),
        ];
        for _ in 0..NEEDS.len() {
            for (feature, needs) in NEEDS {
                let failed = match self.features.get(&needs) {
                    Some(Observation::Fails(e)) => Some(*e),
                    _ => None,
                };
                if let (Some(e), Some(Observation::NotProbed(_)) | None) =
                    (failed, self.features.get(&feature))
                {
                    self.features.insert(feature, Observation::Fails(e));
                }
            }
        }
    }

    /// The probe on detached mounts only (6.15+): `None` when overlay does
    /// not take detached idmapped layers here (then the caller probes the
    /// older ways, in a private namespace).
    fn detached_only(paths: &[PathBuf], userns: BorrowedFd<'_>) -> Option<Live> {
        use Feature::*;
        let scratch = scratch_tmpfs().ok()?;
        for dir in SCRATCH_DIRS {
            sys::mkdir(scratch.as_fd(), Path::new(dir), 0o755).ok()?;
        }
        let overlay = overlay_by_detached_clones(&scratch, Some(userns)).ok()?;
        let mut live = Live {
            idmap_fs: "tmpfs".into(),
            ..Live::default()
        };
        let f = &mut live.features;
        let seen = "observed through detached layers";
        f.insert(NewMountApi, Observation::Works);
        f.insert(MountSetattrIdmap, Observation::Works);
        f.insert(OverlayDetachedLayers, Observation::Works);
        f.insert(OverlayIdmappedLayers, Observation::Works);
        f.insert(
            PrivateMountNs,
            Observation::NotProbed(format!(
                "not probed: not needed where overlay takes detached layers ({seen}); \
                 unsharing would copy the whole mount table"
            )),
        );
        f.insert(OverlayNewMountApi, overlay_new_mount_api());
        f.insert(
            OverlayMergedIdmap,
            sys::mount_setattr(overlay.as_fd(), Some(userns), MountAttrs::default()).into(),
        );
        // The string and plain-fd interfaces, from a working directory in
        // the detached scratch tmpfs (this thread's own fs struct).
        let from_scratch = sys::unshare_fs().and_then(|()| sys::fchdir(scratch.as_fd()));
        match from_scratch {
            Ok(()) => {
                f.insert(
                    OverlayLowerdirPlus,
                    overlay_by_plus_strings(&["l0", "l1"]).into(),
                );
                f.insert(OverlayFdLayers, overlay_by_dir_fds(&["l0", "l1"]).into());
            }
            Err(e) => {
                for feature in [OverlayLowerdirPlus, OverlayFdLayers] {
                    f.insert(
                        feature,
                        Observation::NotProbed(format!(
                            "not probed: no working directory in the scratch tmpfs ({})",
                            e.errno_name()
                        )),
                    );
                }
            }
        }
        live.paths = paths.iter().map(|p| probe_path(p, Ok(userns)).1).collect();
        Some(live)
    }

    fn run_all(paths: &[PathBuf], userns: Option<&UserNamespace>) -> Live {
        use Feature::*;
        let mut live = Live {
            idmap_fs: "tmpfs".into(),
            ..Live::default()
        };
        // A user namespace for the idmaps, made first: once the scratch
        // tmpfs covers "/", this thread counts as chrooted and the kernel
        // refuses to create user namespaces from it.
        let owned_userns;
        let userns = match userns {
            Some(ns) => Ok(ns),
            None => {
                let map: IdMap = "0:100000:65536".parse().expect("valid map");
                owned_userns = UserNamespace::from_maps(&map, &map);
                owned_userns
                    .as_ref()
                    .map_err(|e| e.errno().unwrap_or(libc::EPERM))
            }
        };

        // Where detached layers work, nothing needs attaching, and no copy
        // of the mount table is made.
        if let Ok(ns) = &userns {
            if let Some(mut detached) = Live::detached_only(paths, ns.as_fd()) {
                detached.apply_prerequisites();
                return detached;
            }
        }

        // A private mount namespace for this thread; without one, the
        // probes that must attach something are skipped.
        let private_ns: Observation = sys::unshare_mount_ns()
            .and_then(|()| sys::make_private_recursive(Path::new("/")))
            .into();
        let in_private_ns = matches!(private_ns, Observation::Works);
        live.features.insert(PrivateMountNs, private_ns);

        // The scratch tmpfs, detached (new mount API).
        let scratch = match scratch_tmpfs() {
            Ok(fd) => fd,
            Err(e) => {
                live.features
                    .insert(NewMountApi, Observation::Fails(e.errno));
                let why = format!("not probed: no scratch tmpfs ({})", e.errno_name());
                for f in Feature::ALL {
                    live.features
                        .entry(f)
                        .or_insert_with(|| Observation::NotProbed(why.clone()));
                }
                live.paths = paths
                    .iter()
                    .map(|_| ("unknown".into(), Observation::NotProbed(why.clone())))
                    .collect();
                return live;
            }
        };
        // open_tree(OPEN_TREE_CLONE) of an attached mount (the root; a clone
        // of a detached one is only allowed from 6.15), dropped at once.
        let mut api: Observation = sys::clone_mount(sys::cwd(), Path::new("/")).into();
        let attached = in_private_ns && {
            // Attach the scratch tmpfs over "/" of this private namespace:
            // every directory name then resolves relative to our cwd inside
            // it, while absolute paths still start at the old root.
            let r = sys::move_mount(scratch.as_fd(), sys::cwd(), Path::new("/"))
                .and_then(|()| sys::fchdir(scratch.as_fd()));
            if let (Observation::Works, Err(e)) = (&api, &r) {
                api = Observation::Fails(e.errno);
            }
            r.is_ok()
        };
        live.features.insert(NewMountApi, api);

        // Per path: does a clone take an idmap? (Never written to.)
        let mut idmap_paths: Vec<&Path> = Vec::new();
        for path in paths {
            let (idmapped, entry) = probe_path(path, userns.map(|ns| ns.as_fd()));
            if idmapped {
                idmap_paths.push(path);
            }
            live.paths.push(entry);
        }

        for dir in SCRATCH_DIRS {
            if let Err(e) = sys::mkdir(scratch.as_fd(), Path::new(dir), 0o755) {
                let why = format!("not probed: scratch mkdir failed ({})", e.errno_name());
                for f in Feature::ALL {
                    live.features
                        .entry(f)
                        .or_insert_with(|| Observation::NotProbed(why.clone()));
                }
                return live;
            }
        }

        // Idmap on the scratch tmpfs; failing that, on a named path.
        let userns_fd = match &userns {
            Ok(ns) => Some(ns.as_fd()),
            Err(errno) => {
                live.features.insert(
                    MountSetattrIdmap,
                    Observation::NotProbed(format!(
                        "no user namespace ({})",
                        sys::errno_name(*errno)
                    )),
                );
                None
            }
        };
        // Where the idmapped layer of the attached-layer probe comes from:
        // the scratch tmpfs, or else a named path (cloned, never written).
        let path_fd: Option<OwnedFd> = idmap_paths
            .first()
            .and_then(|p| sys::open_dir_path(sys::cwd(), p).ok());
        let mut tmpfs_idmap = false;
        let mut idmap_source: Option<(BorrowedFd<'_>, &str)> = None;
        if let Some(ns) = userns_fd {
            let on_tmpfs: Observation = idmapped_clone(scratch.as_fd(), Path::new("l0"), ns).into();
            match (&on_tmpfs, &path_fd) {
                (Observation::Works, _) => {
                    tmpfs_idmap = true;
                    idmap_source = Some((scratch.as_fd(), "l0"));
                    live.features.insert(MountSetattrIdmap, on_tmpfs);
                }
                (_, Some(fd)) => {
                    live.idmap_fs = crate::fs_type::of_fd(fd.as_fd());
                    idmap_source = Some((fd.as_fd(), ""));
                    live.features.insert(MountSetattrIdmap, Observation::Works);
                }
                _ => {
                    live.features.insert(MountSetattrIdmap, on_tmpfs);
                }
            }
        }
        let no_idmap_why = match live.features.get(&MountSetattrIdmap) {
            Some(Observation::Fails(e)) => format!(
                "not probed: no probed filesystem takes idmapped mounts (mount_setattr: {})",
                sys::errno_name(*e)
            ),
            _ => "not probed: no idmapped mount possible".into(),
        };

        // An overlay filesystem at all?
        let overlay_ctx = sys::fsopen(c"overlay");
        let overlay_missing = match &overlay_ctx {
            Err(e) => Some(format!(
                "not probed: no overlay filesystem (fsopen: {})",
                e.errno_name()
            )),
            Ok(_) => None,
        };
        if let Some(why) = overlay_missing {
            for f in [
                OverlayIdmappedLayers,
                OverlayNewMountApi,
                OverlayLowerdirPlus,
                OverlayFdLayers,
                OverlayDetachedLayers,
                OverlayMergedIdmap,
            ] {
                live.features.insert(f, Observation::NotProbed(why.clone()));
            }
            return live;
        }
        drop(overlay_ctx);
        live.features
            .insert(OverlayNewMountApi, overlay_new_mount_api());

        // Layers attached in this namespace, by path (5.19), and the
        // string and fd interfaces that need attached layers.
        if attached {
            // One idmapped layer attached at a0 over a plain scratch dir l1.
            let idmapped_attach = match (userns_fd, idmap_source) {
                (Some(ns), Some((src, name))) => idmapped_clone(src, Path::new(name), ns)
                    .and_then(|clone| sys::move_mount(clone.as_fd(), sys::cwd(), Path::new("a0")))
                    .map_err(Some),
                _ => Err(None),
            };
            live.features.insert(
                OverlayIdmappedLayers,
                match idmapped_attach {
                    Ok(()) => overlay_by_string(&["a0", "l1"]).into(),
                    Err(Some(e)) => Observation::Fails(e.errno),
                    Err(None) => Observation::NotProbed(no_idmap_why.clone()),
                },
            );
            live.features.insert(
                OverlayLowerdirPlus,
                overlay_by_plus_strings(&["l0", "l1"]).into(),
            );
            live.features
                .insert(OverlayFdLayers, overlay_by_dir_fds(&["l0", "l1"]).into());
        } else {
            let why = "not probed: needs a private mount namespace to attach scratch layers";
            for f in [OverlayIdmappedLayers, OverlayLowerdirPlus, OverlayFdLayers] {
                live.features.insert(f, Observation::NotProbed(why.into()));
            }
        }

        // Detached clones (idmapped where tmpfs allows) as O_PATH fds (6.15).
        let detached = overlay_by_detached_clones(&scratch, userns_fd.filter(|_| tmpfs_idmap));
        let detached_obs: Observation = detached.as_ref().map(|_| ()).map_err(Clone::clone).into();
        live.features.insert(OverlayDetachedLayers, detached_obs);

        // The merged overlay itself idmapped (7.3), on whichever overlay the
        // kernel could build: from detached layers, or from attached ones.
        let overlay = match detached {
            Ok(fd) => Some(fd),
            Err(_) if attached => overlay_by_string(&["l0", "l1"]).ok(),
            Err(_) => None,
        };
        live.features.insert(
            OverlayMergedIdmap,
            match (&overlay, userns_fd) {
                (Some(overlay), Some(ns)) => {
                    sys::mount_setattr(overlay.as_fd(), Some(ns), MountAttrs::default()).into()
                }
                (None, _) => Observation::NotProbed("not probed: no overlay could be built".into()),
                (_, None) => Observation::NotProbed(no_idmap_why.clone()),
            },
        );
        live
    }
}

/// Whether a clone of `path` takes an idmap (it is never written to):
/// whether it did, and the path's filesystem type and outcome.
fn probe_path(path: &Path, userns: Result<BorrowedFd<'_>, i32>) -> (bool, (String, Observation)) {
    match sys::open_dir_path(sys::cwd(), path) {
        Err(e) => (
            false,
            (
                "unknown".into(),
                Observation::NotProbed(format!("cannot open: {}", e.errno_name())),
            ),
        ),
        Ok(fd) => {
            let fs = crate::fs_type::of_fd(fd.as_fd());
            let outcome = match userns {
                Err(errno) => Observation::NotProbed(format!(
                    "no user namespace ({})",
                    sys::errno_name(errno)
                )),
                Ok(ns) => idmapped_clone(fd.as_fd(), Path::new(""), ns).into(),
            };
            (matches!(outcome, Observation::Works), (fs, outcome))
        }
    }
}

/// overlay's own parameter parsing (6.5): an unknown key is refused at
/// fsconfig time, where the legacy fallback accepts anything.
fn overlay_new_mount_api() -> Observation {
    let ctx = match sys::fsopen(c"overlay") {
        Ok(ctx) => ctx,
        Err(e) => return Observation::Fails(e.errno),
    };
    match sys::fsconfig_set_flag(ctx.as_fd(), c"idoverlay_probe_unknown_key") {
        Err(e) if e.errno == libc::EINVAL => Observation::Works,
        Err(e) => Observation::Fails(e.errno),
        Ok(()) => Observation::Absent(
            "legacy option parsing: an unknown key is accepted at fsconfig time".into(),
        ),
    }
}

/// A fresh tmpfs from `fsopen`/`fsmount`, attached nowhere.
fn scratch_tmpfs() -> Result<OwnedFd, SysError> {
    let ctx = sys::fsopen(c"tmpfs")?;
    sys::fsconfig_set_string(ctx.as_fd(), c"mode", c"0755")?;
    sys::fsconfig_set_string(ctx.as_fd(), c"size", c"1m")?;
    sys::fsconfig_create(ctx.as_fd())?;
    sys::fsmount(ctx.as_fd(), MountAttrs::default())
}

/// A detached clone of `dir/name`, idmapped read-only.
fn idmapped_clone(
    dir: BorrowedFd<'_>,
    name: &Path,
    userns: BorrowedFd<'_>,
) -> Result<OwnedFd, SysError> {
    let opened;
    let source = match name.as_os_str().is_empty() {
        true => dir,
        false => {
            opened = sys::open_dir_path(dir, name)?;
            opened.as_fd()
        }
    };
    crate::overlayfs::clone_and_idmap(source, false, Some(userns), MountAttrs::READ_ONLY)
        .map_err(crate::overlayfs::Failed::sys)
}

fn finish(ctx: &OwnedFd) -> Result<OwnedFd, SysError> {
    sys::fsconfig_create(ctx.as_fd())?;
    sys::fsmount(ctx.as_fd(), MountAttrs::default())
}

/// overlay with one `lowerdir=a:b` string (every kernel's interface).
fn overlay_by_string(lowers: &[&str]) -> Result<OwnedFd, SysError> {
    let ctx = sys::fsopen(c"overlay")?;
    let value = std::ffi::CString::new(lowers.join(":")).expect("no NUL");
    sys::fsconfig_set_string(ctx.as_fd(), c"lowerdir", &value)?;
    finish(&ctx)
}

/// overlay with one `lowerdir+` string per layer (6.7).
fn overlay_by_plus_strings(lowers: &[&str]) -> Result<OwnedFd, SysError> {
    let ctx = sys::fsopen(c"overlay")?;
    for l in lowers {
        let value = std::ffi::CString::new(*l).expect("no NUL");
        sys::fsconfig_set_string(ctx.as_fd(), c"lowerdir+", &value)?;
    }
    finish(&ctx)
}

/// overlay with `FSCONFIG_SET_FD` of plain directory fds (6.13).
fn overlay_by_dir_fds(lowers: &[&str]) -> Result<OwnedFd, SysError> {
    let ctx = sys::fsopen(c"overlay")?;
    for l in lowers {
        let fd = sys::open_dir_read(sys::cwd(), Path::new(l))?;
        sys::fsconfig_set_fd(ctx.as_fd(), c"lowerdir+", fd.as_fd())?;
    }
    finish(&ctx)
}

/// overlay with `FSCONFIG_SET_FD` of detached clones, idmapped when a user
/// namespace is given (6.15).
fn overlay_by_detached_clones(
    scratch: &OwnedFd,
    userns: Option<BorrowedFd<'_>>,
) -> Result<OwnedFd, SysError> {
    let ctx = sys::fsopen(c"overlay")?;
    let mut clones = Vec::new();
    for name in ["l0", "l1"] {
        let clone = match userns {
            Some(ns) => idmapped_clone(scratch.as_fd(), Path::new(name), ns)?,
            None => sys::clone_mount(scratch.as_fd(), Path::new(name))?,
        };
        sys::fsconfig_set_fd(ctx.as_fd(), c"lowerdir+", clone.as_fd())?;
        clones.push(clone);
    }
    finish(&ctx)
}
