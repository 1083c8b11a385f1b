//! The variants measured, and one mount + unmount of each.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------
// Variants: what is measured
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Variant {
    /// Plain overlay without idmap: mount(2), relative lowerdir=.
    Floor,
    /// containerd ≤ 2.1: one attached temporary idmapped mount per layer.
    Reference,
    /// The least work the kernel can be asked for: one idmapped clone of
    /// the layers' parent, the floor's mount(2) from inside it, the clone
    /// closed — no checks, no threads (bench code only).
    IdmapMinimum,
    /// The least work for an overlay that needs its idmapped layers
    /// attached (private-ns and host-staged, before 6.15): idmap-minimum's
    /// clone, attached on a directory made beforehand, the floor's mount(2)
    /// through it, the clone detached again — in the bench's own
    /// namespace, with no namespace switch and no stage to make (bench
    /// code only).
    StagedMinimum,
    /// idoverlay detached, one clone per layer.
    DetachedPerLayer,
    /// idoverlay detached, one clone of the shared parent (the default).
    DetachedShared,
    PrivateNs,
    HostStaged,
    Auto,
    /// `auto` called from a thread that shares its working directory with
    /// another thread (most threads of most programs): idoverlay cannot
    /// lend it, and mounts from a thread of its own.
    AutoSharedCwd,
}

impl Variant {
    pub(crate) const ALL: [Variant; 10] = [
        Variant::Floor,
        Variant::Reference,
        Variant::IdmapMinimum,
        Variant::StagedMinimum,
        Variant::DetachedPerLayer,
        Variant::DetachedShared,
        Variant::PrivateNs,
        Variant::HostStaged,
        Variant::Auto,
        Variant::AutoSharedCwd,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Floor => "floor",
            Variant::Reference => "reference",
            Variant::IdmapMinimum => "idmap-minimum",
            Variant::StagedMinimum => "staged-minimum",
            Variant::DetachedPerLayer => "detached-per-layer",
            Variant::DetachedShared => "detached-shared",
            Variant::PrivateNs => "private-ns",
            Variant::HostStaged => "host-staged",
            Variant::Auto => "auto",
            Variant::AutoSharedCwd => "auto-shared-cwd",
        }
    }

    pub(crate) fn idmapped(self) -> bool {
        self != Variant::Floor
    }
}

/// A thread that shares the measuring thread's working directory (it is
/// started from it, and threads share their fs struct) and waits, while
/// `auto-shared-cwd` mounts. Started and ended outside the timed part.
pub(crate) struct Sibling {
    pub(crate) release: Option<std::sync::mpsc::Sender<()>>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Sibling {
    pub(crate) fn start() -> Sibling {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = wait.recv();
        });
        Sibling {
            release: Some(release),
            thread: Some(thread),
        }
    }
}

impl Drop for Sibling {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Everything a variant needs prepared before the clock starts: the
/// mount(2) data string, the `Overlay` description, the temp names.
pub(crate) struct Job {
    pub(crate) variant: Variant,
    pub(crate) slot: Slot,
    /// Where this job's relative names resolve; entered before each cycle.
    pub(crate) cwd: PathBuf,
    pub(crate) kind: JobKind,
    /// The strategy idoverlay reported on the last mount (for `auto`).
    pub(crate) used: Option<Strategy>,
}

pub(crate) enum JobKind {
    Floor {
        data: CString,
    },
    Reference {
        layers: Vec<CString>,
        temps: Vec<CString>,
        data: CString,
        userns: Arc<UserNamespace>,
    },
    IdmapMinimum {
        parent: CString,
        data: CString,
        userns: Arc<UserNamespace>,
    },
    StagedMinimum {
        parent: CString,
        data: CString,
        userns: Arc<UserNamespace>,
    },
    Library(Box<Overlay>),
}

/// Shared inputs for building jobs.
pub(crate) struct Env<'a> {
    pub(crate) set: &'a LayerSet,
    pub(crate) userns: &'a Arc<UserNamespace>,
    pub(crate) state_dir: &'a Path,
}

impl Job {
    /// Builds the job for slot `k`, all strings formatted up front.
    pub(crate) fn prepare(variant: Variant, env: &Env<'_>, n: usize, k: usize) -> Job {
        let slot = env.set.slot(k);
        let upper_work = format!(
            "upperdir={},workdir={}",
            slot.upper.display(),
            slot.work.display()
        );
        let mut cwd = env.set.root.clone();
        let kind = match variant {
            Variant::Floor => {
                cwd = env.set.parent.clone();
                let lowerdir = LayerSet::relative_lowerdir(n);
                JobKind::Floor {
                    data: cstring(format!("lowerdir={lowerdir},{upper_work}")),
                }
            }
            Variant::Reference => {
                cwd = slot.stage.clone();
                let temps: Vec<String> = (0..n).map(|i| format!("t/{i}")).collect();
                JobKind::Reference {
                    layers: env.set.paths(n).into_iter().map(path_cstring).collect(),
                    data: cstring(format!("lowerdir={},{upper_work}", temps.join(":"))),
                    temps: temps.into_iter().map(cstring).collect(),
                    userns: env.userns.clone(),
                }
            }
            Variant::IdmapMinimum => {
                cwd = env.set.parent.clone();
                let lowerdir = LayerSet::relative_lowerdir(n);
                JobKind::IdmapMinimum {
                    parent: path_cstring(env.set.parent.clone()),
                    data: cstring(format!("lowerdir={lowerdir},{upper_work}")),
                    userns: env.userns.clone(),
                }
            }
            Variant::StagedMinimum => {
                cwd = slot.stage.clone();
                std::fs::create_dir_all(slot.stage.join(STAGED_AT))
                    .expect("create the staged-minimum mount point");
                let lowerdir: Vec<String> = LayerSet::relative_lowerdir(n)
                    .split(':')
                    .map(|layer| format!("{STAGED_AT}/{layer}"))
                    .collect();
                JobKind::StagedMinimum {
                    parent: path_cstring(env.set.parent.clone()),
                    data: cstring(format!("lowerdir={},{upper_work}", lowerdir.join(":"))),
                    userns: env.userns.clone(),
                }
            }
            _ => JobKind::Library(Box::new(library_overlay(variant, env, n, &slot))),
        };
        Job {
            variant,
            slot,
            cwd,
            kind,
            used: None,
        }
    }

    /// Moves this thread's cwd to where the job's relative names resolve
    /// (untimed). The thread must own its cwd (see `own_cwd`).
    pub(crate) fn enter(&self) {
        std::env::set_current_dir(&self.cwd).expect("chdir into the bench's own directory");
    }

    /// One timed mount + unmount, entered first; `check` verifies owners
    /// through the mount (untimed). Cleans up after a failure.
    pub(crate) fn cycle(&mut self, check: bool) -> Result<(Duration, Duration), String> {
        self.enter();
        let sibling = (self.variant == Variant::AutoSharedCwd).then(Sibling::start);
        let t0 = Instant::now();
        self.mount()?;
        let mounted = t0.elapsed();
        drop(sibling);
        if check {
            if let Err(e) = self.check_owners() {
                self.cleanup();
                return Err(e);
            }
        }
        let t1 = Instant::now();
        if let Err(e) = self.unmount() {
            self.cleanup();
            return Err(e);
        }
        Ok((mounted, t1.elapsed()))
    }

    /// Assemble and attach at the slot's target.
    pub(crate) fn mount(&mut self) -> Result<(), String> {
        match &self.kind {
            JobKind::Floor { data } => {
                overlay_mount(&self.slot.target, data).map_err(|e| format!("mount(2): {e}"))
            }
            JobKind::Reference {
                layers,
                temps,
                data,
                userns,
            } => reference_mount(layers, temps, data, userns.as_fd(), &self.slot.target),
            JobKind::IdmapMinimum {
                parent,
                data,
                userns,
            } => idmap_minimum_mount(parent, data, userns.as_fd(), &self.slot.target),
            JobKind::StagedMinimum {
                parent,
                data,
                userns,
            } => staged_minimum_mount(parent, data, userns.as_fd(), &self.slot.target),
            JobKind::Library(overlay) => {
                let mounted = overlay
                    .mount(&self.slot.target)
                    .map_err(|e| e.to_string())?;
                self.used = Some(mounted.strategy);
                Ok(())
            }
        }
    }

    /// Remove the overlay from the slot's target.
    pub(crate) fn unmount(&mut self) -> Result<(), String> {
        match &self.kind {
            JobKind::Floor { .. }
            | JobKind::Reference { .. }
            | JobKind::IdmapMinimum { .. }
            | JobKind::StagedMinimum { .. } => unmount(&self.slot.target, UnmountFlags::empty())
                .map_err(|e| format!("umount2: {e}")),
            JobKind::Library(_) => {
                unmount_overlay(&self.slot.target, false).map_err(|e| e.to_string())
            }
        }
    }

    /// After a failure: detach whatever may still sit on our target.
    pub(crate) fn cleanup(&self) {
        let _ = unmount(&self.slot.target, UnmountFlags::DETACH);
    }

    /// The mount shows on-disk 0 as the mapped root (or as 0 for the floor):
    /// a bench that measured a broken mount would be worthless.
    pub(crate) fn check_owners(&self) -> Result<(), String> {
        let file = self.slot.target.join("etc/layer-0");
        let uid = std::fs::metadata(&file)
            .map_err(|e| format!("stat {}: {e}", file.display()))?
            .uid();
        let want = if self.variant.idmapped() {
            MAPPED_ROOT
        } else {
            0
        };
        if uid == want {
            Ok(())
        } else {
            Err(format!(
                "{} shows uid {uid}, expected {want}",
                file.display()
            ))
        }
    }
}

pub(crate) fn library_overlay(variant: Variant, env: &Env<'_>, n: usize, slot: &Slot) -> Overlay {
    let base = Overlay::new()
        .lowers(env.set.paths(n))
        .upper(&slot.upper)
        .work(&slot.work)
        // A runtime has the container's user namespace already: its
        // creation is measured on its own (section "userns").
        .userns(env.userns.clone());
    match variant {
        Variant::DetachedPerLayer => base.strategy(Strategy::Detached).per_layer_clones(true),
        Variant::DetachedShared => base.strategy(Strategy::Detached),
        Variant::PrivateNs => base.strategy(Strategy::PrivateNs),
        Variant::HostStaged => base.strategy(Strategy::HostStaged).state_dir(env.state_dir),
        Variant::Auto | Variant::AutoSharedCwd => base.strategy(Strategy::Auto),
        Variant::Floor | Variant::Reference | Variant::IdmapMinimum | Variant::StagedMinimum => {
            unreachable!("not a library variant")
        }
    }
}

pub(crate) fn cstring(s: String) -> CString {
    CString::new(s).expect("no NUL in bench paths")
}

pub(crate) fn path_cstring(p: PathBuf) -> CString {
    cstring(p.into_os_string().into_string().expect("UTF-8 bench paths"))
}

pub(crate) fn overlay_mount(target: &Path, data: &CString) -> rustix::io::Result<()> {
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )
}
