//! `cargo bench --bench assemble`: how fast idoverlay assembles idmapped
//! overlays, next to a plain overlay (the floor) and containerd's
//! attach-a-temporary-mount-per-layer algorithm (the reference), on the same
//! layers, on ext4 and tmpfs. See docs/performance.md for how to read it.
//!
//! Safety: the process first moves into a private mount namespace (before
//! any thread exists, so every later thread and child process inherits it)
//! and makes `/` recursively private there. Every mount it makes sits on a
//! fresh tmpfs over a fresh directory under /tmp that it created; at exit
//! that tmpfs is detached lazily and the (then empty) directory removed.
//! Nothing outside it is mounted, unmounted or deleted.
//!
//! Environment (all optional):
//! * `IDOVERLAY_BENCH_QUICK=1` (or `-- --quick`): few iterations, a smoke run.
//! * `IDOVERLAY_BENCH_SECTIONS=serial,concurrent,userns,probe,cli`
//! * `IDOVERLAY_BENCH_FS=ext4,tmpfs`, `IDOVERLAY_BENCH_LAYERS=1,8,...`,
//!   `IDOVERLAY_BENCH_VARIANTS=floor,auto,...`: run a subset (for strace/perf).
//! * `IDOVERLAY_BENCH_ITERATIONS=N`: N timed iterations per serial row
//!   (longer profiles).

use std::ffi::CString;
use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use idoverlay::{unmount_overlay, IdMap, Overlay, Strategy, UserNamespace};
use rustix::mount::{
    move_mount, open_tree, unmount, MountFlags, MountPropagationFlags, MoveMountFlags,
    OpenTreeFlags, UnmountFlags,
};
use serde::Serialize;

/// Every layer set holds this many layers; smaller runs use the first N.
const MAX_LAYERS: usize = 500;
/// Concurrency slots (upper, work, target, staging dir) per filesystem.
const MAX_THREADS: usize = 16;
/// The map every idmapped variant uses: on-disk 0 shows as 100000.
const MAP: &str = "0:100000:65536";
/// Host uid of on-disk 0 through the map; checked once per variant.
const MAPPED_ROOT: u32 = 100_000;

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// What to run and how often; `quick` cuts every count for a smoke run.
struct Config {
    quick: bool,
    sections: Filter,
    filesystems: Filter,
    layers: Filter,
    variants: Filter,
    iterations: Option<usize>,
}

/// A comma-separated allow-list from the environment; unset allows all.
struct Filter(Option<Vec<String>>);

impl Filter {
    fn from_env(var: &str) -> Filter {
        Filter(std::env::var(var).ok().map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        }))
    }

    fn allows(&self, name: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

impl Config {
    fn from_env_and_args() -> Config {
        let quick = std::env::var("IDOVERLAY_BENCH_QUICK").is_ok_and(|v| v != "0")
            || std::env::args().any(|a| a == "--quick");
        Config {
            quick,
            sections: Filter::from_env("IDOVERLAY_BENCH_SECTIONS"),
            filesystems: Filter::from_env("IDOVERLAY_BENCH_FS"),
            layers: Filter::from_env("IDOVERLAY_BENCH_LAYERS"),
            variants: Filter::from_env("IDOVERLAY_BENCH_VARIANTS"),
            iterations: std::env::var("IDOVERLAY_BENCH_ITERATIONS")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    fn sizes(&self) -> Vec<usize> {
        [1, 8, 32, 128, MAX_LAYERS]
            .into_iter()
            .filter(|n| self.layers.allows(&n.to_string()))
            .collect()
    }

    /// Timed iterations per (variant, size): enough for a stable median
    /// and a meaningful p99. At 500 layers the medians of auto and the floor
    /// differ by ~0.1 ms and each moves by as much from run to run on this
    /// shared machine: 200 samples there too (the per-layer variants make
    /// that ~40 s).
    fn iterations(&self, layers: usize) -> usize {
        if let Some(n) = self.iterations {
            return n;
        }
        match (self.quick, layers) {
            (true, n) if n <= 32 => 20,
            (true, _) => 5,
            (false, n) if n <= 32 => 200,
            (false, n) if n <= 128 => 100,
            (false, _) => 200,
        }
    }

    /// Untimed runs first: the probe cache, page cache and dentries warm up.
    fn warmup(&self) -> usize {
        if self.quick {
            1
        } else {
            3
        }
    }

    /// Concurrency: the layer counts tried and how long each point runs.
    fn concurrent_sizes(&self) -> Vec<usize> {
        let sizes: &[usize] = if self.quick {
            &[MAX_LAYERS]
        } else {
            &[8, MAX_LAYERS]
        };
        sizes
            .iter()
            .copied()
            .filter(|n| self.layers.allows(&n.to_string()))
            .collect()
    }

    /// Rounds per (size, threads), and the length of each variant's run in
    /// a round: 4 x 0.5 s = 2 s per point in a full run.
    fn concurrent_rounds(&self) -> (usize, Duration) {
        if self.quick {
            (1, Duration::from_millis(250))
        } else {
            (4, Duration::from_millis(500))
        }
    }

    fn single_iterations(&self, full: usize) -> usize {
        if self.quick {
            10
        } else {
            full
        }
    }
}

// ---------------------------------------------------------------------------
// Private mount namespace and scratch filesystems
// ---------------------------------------------------------------------------

/// Moves the whole process into its own mount namespace and stops
/// propagation both ways. Must run before any thread is spawned: unshare
/// of a mount namespace implies CLONE_FS, which a multi-threaded process
/// cannot unshare for all threads at once, and threads spawned later
/// inherit the namespace.
fn enter_private_mount_ns() {
    // SAFETY: NEWNS (and the CLONE_FS it implies) does not touch the fd
    // table, which is the reason rustix marks unshare unsafe.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .expect("unshare(CLONE_NEWNS): the bench needs root (CAP_SYS_ADMIN)");
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .expect("make / recursively private in the bench's namespace");
}

/// Gives the calling thread its own cwd (unshare CLONE_FS) so that it can
/// chdir for relative `lowerdir=` names without moving other threads.
fn own_cwd(dir: &Path) {
    // SAFETY: CLONE_FS does not touch the fd table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .expect("unshare(CLONE_FS)");
    std::env::set_current_dir(dir).expect("chdir into the bench's own directory");
}

/// A tmpfs over a fresh directory under /tmp (in the private namespace),
/// and an ext4 image on it, loop-mounted. Dropping detaches both lazily and
/// removes the directory, which is empty once the tmpfs is gone.
struct Scratch {
    root: PathBuf,
    ext4: PathBuf,
    ext4_mounted: bool,
}

impl Scratch {
    fn create() -> Scratch {
        let root = PathBuf::from(format!("/tmp/idoverlay-bench-{}", std::process::id()));
        // create_dir (not _all) fails if it exists: never reuse what we did not make.
        std::fs::create_dir(&root).expect("create the scratch dir under /tmp");
        let data = CString::new("mode=0755,size=2g").unwrap();
        rustix::mount::mount(
            "idoverlay-bench",
            &root,
            "tmpfs",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .expect("mount the scratch tmpfs");
        let mut scratch = Scratch {
            ext4: root.join("ext4"),
            root,
            ext4_mounted: false,
        };
        scratch.mount_ext4();
        scratch
    }

    fn mount_ext4(&mut self) {
        let image = self.root.join("ext4.img");
        run(Command::new("truncate").args(["-s", "512M"]).arg(&image));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&image));
        std::fs::create_dir(&self.ext4).expect("create the ext4 mount point");
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&self.ext4));
        self.ext4_mounted = true;
    }

    fn fs_root(&self, fs: &str) -> PathBuf {
        match fs {
            "ext4" => self.ext4.clone(),
            _ => {
                let dir = self.root.join("tmpfs");
                let _ = std::fs::create_dir(&dir);
                dir
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Lazy: a leftover overlay or staging mount below must not keep the
        // scratch area (or the loop device) alive; MNT_DETACH takes the
        // whole subtree. Everything here is ours, in our namespace only.
        if self.ext4_mounted {
            let _ = unmount(&self.ext4, UnmountFlags::DETACH);
        }
        let _ = unmount(&self.root, UnmountFlags::DETACH);
        if let Err(e) = std::fs::remove_dir(&self.root) {
            eprintln!("bench: could not remove {}: {e}", self.root.display());
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn a setup command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Layers: 500 small image-like layers per filesystem, plus per-thread slots
// ---------------------------------------------------------------------------

/// One filesystem's layer set: `l/0` … `l/499` below one parent, and for
/// each concurrency slot its own upper (`u<k>`), work (`w<k>`), target
/// (`m<k>`) and reference staging dir (`s<k>`).
struct LayerSet {
    fs: &'static str,
    root: PathBuf,
    parent: PathBuf,
}

/// Directories one measuring thread owns.
#[derive(Clone)]
struct Slot {
    upper: PathBuf,
    work: PathBuf,
    target: PathBuf,
    stage: PathBuf,
}

impl LayerSet {
    fn build(fs: &'static str, root: PathBuf) -> LayerSet {
        let parent = root.join("l");
        std::fs::create_dir(&parent).expect("create the layers' parent");
        for i in 0..MAX_LAYERS {
            make_layer(&parent.join(i.to_string()), i);
        }
        for k in 0..MAX_THREADS {
            for prefix in ["u", "w", "m", "s"] {
                std::fs::create_dir(root.join(format!("{prefix}{k}"))).expect("create slot dir");
            }
        }
        LayerSet { fs, root, parent }
    }

    /// Top-most first, as `lowerdir=` and `Overlay::lowers` take them.
    fn paths(&self, n: usize) -> Vec<PathBuf> {
        (0..n).map(|i| self.parent.join(i.to_string())).collect()
    }

    /// `0:1:…:n-1`, valid from inside the parent: 500 absolute paths would
    /// not fit in mount(2)'s one page of options, short relative names do.
    fn relative_lowerdir(n: usize) -> String {
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(":")
    }

    fn slot(&self, k: usize) -> Slot {
        Slot {
            upper: self.root.join(format!("u{k}")),
            work: self.root.join(format!("w{k}")),
            target: self.root.join(format!("m{k}")),
            stage: self.root.join(format!("s{k}")),
        }
    }
}

/// A layer like a real image's: a file owned by root, one by user 1000.
fn make_layer(dir: &Path, i: usize) {
    let user_home = dir.join("home/user");
    std::fs::create_dir_all(dir.join("etc")).expect("create layer");
    std::fs::create_dir_all(&user_home).expect("create layer");
    let root_file = dir.join(format!("etc/layer-{i}"));
    std::fs::write(&root_file, format!("layer {i}\n")).expect("write layer file");
    let user_file = user_home.join(format!("notes-{i}"));
    std::fs::write(&user_file, "notes\n").expect("write layer file");
    chown(&root_file, Some(0), Some(0)).expect("chown");
    chown(&user_home, Some(1000), Some(1000)).expect("chown");
    chown(&user_file, Some(1000), Some(1000)).expect("chown");
}

// ---------------------------------------------------------------------------
// Variants: what is measured
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    /// Plain overlay without idmap: mount(2), relative lowerdir=.
    Floor,
    /// containerd ≤ 2.1: one attached temporary idmapped mount per layer.
    Reference,
    /// The least work the kernel can be asked for: one idmapped clone of
    /// the layers' parent, the floor's mount(2) from inside it, the clone
    /// closed — no checks, no threads (bench code only).
    IdmapMinimum,
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
    const ALL: [Variant; 9] = [
        Variant::Floor,
        Variant::Reference,
        Variant::IdmapMinimum,
        Variant::DetachedPerLayer,
        Variant::DetachedShared,
        Variant::PrivateNs,
        Variant::HostStaged,
        Variant::Auto,
        Variant::AutoSharedCwd,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Floor => "floor",
            Variant::Reference => "reference",
            Variant::IdmapMinimum => "idmap-minimum",
            Variant::DetachedPerLayer => "detached-per-layer",
            Variant::DetachedShared => "detached-shared",
            Variant::PrivateNs => "private-ns",
            Variant::HostStaged => "host-staged",
            Variant::Auto => "auto",
            Variant::AutoSharedCwd => "auto-shared-cwd",
        }
    }

    fn idmapped(self) -> bool {
        self != Variant::Floor
    }
}

/// A thread that shares the measuring thread's working directory (it is
/// started from it, and threads share their fs struct) and waits, while
/// `auto-shared-cwd` mounts. Started and ended outside the timed part.
struct Sibling {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sibling {
    fn start() -> Sibling {
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
struct Job {
    variant: Variant,
    slot: Slot,
    /// Where this job's relative names resolve; entered before each cycle.
    cwd: PathBuf,
    kind: JobKind,
    /// The strategy idoverlay reported on the last mount (for `auto`).
    used: Option<Strategy>,
}

enum JobKind {
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
    Library(Box<Overlay>),
}

/// Shared inputs for building jobs.
struct Env<'a> {
    set: &'a LayerSet,
    userns: &'a Arc<UserNamespace>,
    state_dir: &'a Path,
}

impl Job {
    /// Builds the job for slot `k`, all strings formatted up front.
    fn prepare(variant: Variant, env: &Env<'_>, n: usize, k: usize) -> Job {
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
    fn enter(&self) {
        std::env::set_current_dir(&self.cwd).expect("chdir into the bench's own directory");
    }

    /// One timed mount + unmount, entered first; `check` verifies owners
    /// through the mount (untimed). Cleans up after a failure.
    fn cycle(&mut self, check: bool) -> Result<(Duration, Duration), String> {
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
    fn mount(&mut self) -> Result<(), String> {
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
    fn unmount(&mut self) -> Result<(), String> {
        match &self.kind {
            JobKind::Floor { .. } | JobKind::Reference { .. } | JobKind::IdmapMinimum { .. } => {
                unmount(&self.slot.target, UnmountFlags::empty())
                    .map_err(|e| format!("umount2: {e}"))
            }
            JobKind::Library(_) => {
                unmount_overlay(&self.slot.target, false).map_err(|e| e.to_string())
            }
        }
    }

    /// After a failure: detach whatever may still sit on our target.
    fn cleanup(&self) {
        let _ = unmount(&self.slot.target, UnmountFlags::DETACH);
    }

    /// The mount shows on-disk 0 as the mapped root (or as 0 for the floor):
    /// a bench that measured a broken mount would be worthless.
    fn check_owners(&self) -> Result<(), String> {
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

fn library_overlay(variant: Variant, env: &Env<'_>, n: usize, slot: &Slot) -> Overlay {
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
        Variant::Floor | Variant::Reference | Variant::IdmapMinimum => {
            unreachable!("not a library variant")
        }
    }
}

fn cstring(s: String) -> CString {
    CString::new(s).expect("no NUL in bench paths")
}

fn path_cstring(p: PathBuf) -> CString {
    cstring(p.into_os_string().into_string().expect("UTF-8 bench paths"))
}

fn overlay_mount(target: &Path, data: &CString) -> rustix::io::Result<()> {
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )
}

// ---------------------------------------------------------------------------
// The containerd-style reference (bench code only)
// ---------------------------------------------------------------------------

/// containerd 2.0-rc's algorithm: per layer, a temp dir and an attached
/// idmapped clone on it; the overlay by those paths; then every temp mount
/// detached and every temp dir removed (the fixed rc.6 cleanup: MNT_DETACH,
/// rmdir only). Names are relative to the cwd (the slot's staging dir).
fn reference_mount(
    layers: &[CString],
    temps: &[CString],
    data: &CString,
    userns: BorrowedFd<'_>,
    target: &Path,
) -> Result<(), String> {
    std::fs::create_dir("t").map_err(|e| format!("mkdir t: {e}"))?;
    let mut attached = 0;
    let mut made = 0;
    let mut result = Ok(());
    for (layer, temp) in layers.iter().zip(temps) {
        if let Err(e) = rustix::fs::mkdir(temp.as_c_str(), 0o700.into()) {
            result = Err(format!("mkdir {temp:?}: {e}"));
            break;
        }
        made += 1;
        if let Err(e) = attach_idmapped(layer, temp, userns) {
            result = Err(e);
            break;
        }
        attached += 1;
    }
    if result.is_ok() {
        result = overlay_mount(target, data).map_err(|e| format!("mount(2) overlay: {e}"));
    }
    let cleanup = reference_cleanup(&temps[..made], attached);
    result.and(cleanup)
}

/// open_tree(CLONE) + mount_setattr(IDMAP) + move_mount onto `temp`.
fn attach_idmapped(layer: &CString, temp: &CString, userns: BorrowedFd<'_>) -> Result<(), String> {
    let clone = open_tree(
        rustix::fs::CWD,
        layer.as_c_str(),
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| format!("open_tree {layer:?}: {e}"))?;
    set_idmap(clone.as_fd(), userns).map_err(|e| format!("mount_setattr {layer:?}: {e}"))?;
    move_mount(
        clone.as_fd(),
        c"",
        rustix::fs::CWD,
        temp.as_c_str(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("move_mount to {temp:?}: {e}"))
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {MOUNT_ATTR_IDMAP, userns})`;
/// rustix has no wrapper for it.
fn set_idmap(mount: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> std::io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the path is a NUL-terminated literal, `attr` is a live and
    // correctly sized `struct mount_attr` that the kernel only reads.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The kernel's share of an idmapped overlay: `open_tree(OPEN_TREE_CLONE)`
/// of the layers' parent, `mount_setattr(IDMAP)`, the floor's mount(2)
/// with the cwd inside the clone, back to the parent, and the clone closed
/// (which dissolves it). The cwd is the layers' parent on entry.
fn idmap_minimum_mount(
    parent: &CString,
    data: &CString,
    userns: BorrowedFd<'_>,
    target: &Path,
) -> Result<(), String> {
    let clone = open_tree(
        rustix::fs::CWD,
        parent.as_c_str(),
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| format!("open_tree {parent:?}: {e}"))?;
    set_idmap(clone.as_fd(), userns).map_err(|e| format!("mount_setattr {parent:?}: {e}"))?;
    rustix::process::fchdir(clone.as_fd()).map_err(|e| format!("fchdir into the clone: {e}"))?;
    let mounted = overlay_mount(target, data).map_err(|e| format!("mount(2): {e}"));
    rustix::process::chdir(parent.as_c_str()).map_err(|e| format!("chdir back: {e}"))?;
    drop(clone);
    mounted
}

/// Detach the first `attached` temp mounts, then rmdir the `temps` made
/// and `t`; like containerd's fix, remove nothing after a failed unmount.
fn reference_cleanup(temps: &[CString], attached: usize) -> Result<(), String> {
    for temp in &temps[..attached] {
        unmount(temp.as_c_str(), UnmountFlags::DETACH)
            .map_err(|e| format!("umount2 {temp:?}: {e}; temp dirs left in place"))?;
    }
    for temp in temps {
        rustix::fs::rmdir(temp.as_c_str()).map_err(|e| format!("rmdir {temp:?}: {e}"))?;
    }
    rustix::fs::rmdir("t").map_err(|e| format!("rmdir t: {e}"))
}

// ---------------------------------------------------------------------------
// Statistics and results
// ---------------------------------------------------------------------------

/// Median, p99 and mean of one column, in milliseconds.
#[derive(Serialize, Clone, Copy, Default)]
struct Stats {
    median_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let len = ms.len();
        let median = if len % 2 == 1 {
            ms[len / 2]
        } else {
            (ms[len / 2 - 1] + ms[len / 2]) / 2.0
        };
        // Nearest-rank p99: with fewer than 100 samples it is the maximum.
        let rank = ((len as f64) * 0.99).ceil() as usize;
        Stats {
            median_ms: median,
            p99_ms: ms[rank.clamp(1, len) - 1],
            mean_ms: ms.iter().sum::<f64>() / len as f64,
        }
    }
}

/// One variant at one size on one filesystem, one thread.
#[derive(Serialize)]
struct SerialResult {
    fs: &'static str,
    layers: usize,
    variant: &'static str,
    /// The strategy idoverlay used (differs from the variant only for auto).
    strategy_used: Option<String>,
    iterations: usize,
    /// Assemble + attach (for the reference: including its temp mounts'
    /// creation and cleanup, which containerd does before returning).
    mount: Stats,
    /// Unmounting the overlay.
    unmount: Stats,
    /// mount + unmount of each iteration.
    total: Stats,
    /// Medians over the floor's in the same run.
    mount_ratio: Option<f64>,
    total_ratio: Option<f64>,
    error: Option<String>,
}

/// Many threads assembling and tearing down at once, each on its own target.
#[derive(Serialize)]
struct ConcurrentResult {
    fs: &'static str,
    layers: usize,
    variant: &'static str,
    threads: usize,
    /// mount + unmount cycles completed by all threads together.
    cycles: u64,
    seconds: f64,
    per_second: f64,
    /// Over the floor's aggregate rate at the same thread count.
    ratio: Option<f64>,
    error: Option<String>,
}

/// A single operation measured on its own (userns creation, the probe).
#[derive(Serialize)]
struct SingleResult {
    name: &'static str,
    iterations: usize,
    stats: Stats,
    error: Option<String>,
}

/// A command-line tool end to end: spawn + mount, spawn + umount.
#[derive(Serialize)]
struct CliResult {
    fs: &'static str,
    layers: usize,
    tool: &'static str,
    iterations: usize,
    mount: Stats,
    unmount: Stats,
    total: Stats,
    /// Total median over util-linux's.
    ratio: Option<f64>,
    error: Option<String>,
}

#[derive(Serialize)]
struct TargetResult {
    name: String,
    measured: String,
    ok: Option<bool>,
}

#[derive(Serialize)]
struct Machine {
    cpu: String,
    cpus: usize,
    kernel: String,
    util_linux: String,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    /// `git describe --always --dirty` of the measured tree.
    source: String,
    quick: bool,
    seconds: f64,
    serial: Vec<SerialResult>,
    concurrent: Vec<ConcurrentResult>,
    single: Vec<SingleResult>,
    cli: Vec<CliResult>,
    targets: Vec<TargetResult>,
}

// ---------------------------------------------------------------------------
// Serial measurements
// ---------------------------------------------------------------------------

/// Runs `f` on a fresh thread that owns its cwd, starting in `dir`.
fn on_own_thread<T: Send>(dir: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            own_cwd(dir);
            f()
        })
        .join()
        .expect("measuring thread panicked")
    })
}

/// A tiny xorshift generator: shuffles the order of variants per round so
/// that load from other processes, and deferred kernel work one variant
/// leaves behind (RCU callbacks freeing its mounts), land on every variant
/// alike instead of always on the same successor.
struct Shuffle(u64);

impl Shuffle {
    fn order(&mut self, len: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..len).collect();
        for i in (1..len).rev() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            order.swap(i, (self.0 % (i as u64 + 1)) as usize);
        }
        order
    }
}

/// One variant's samples while its rounds run.
struct Row {
    job: Job,
    mount: Vec<Duration>,
    unmount: Vec<Duration>,
    total: Vec<Duration>,
    error: Option<String>,
}

impl Row {
    fn into_result(self, fs: &'static str, layers: usize) -> SerialResult {
        SerialResult {
            fs,
            layers,
            variant: self.job.variant.name(),
            strategy_used: self.job.used.map(|s| s.name().to_string()),
            iterations: self.mount.len(),
            mount: Stats::of(&self.mount),
            unmount: Stats::of(&self.unmount),
            total: Stats::of(&self.total),
            mount_ratio: None,
            total_ratio: None,
            error: self.error,
        }
    }
}

/// All variants at one size, interleaved: each round runs one mount +
/// unmount of every variant in a shuffled order, so that the ratios to the
/// floor compare samples taken under the same conditions. The first
/// rounds are warm-up (probe cache, dentries) and not kept; the first
/// checks the owners seen through each mount.
fn run_serial(cfg: &Config, env: &Env<'_>, n: usize, variants: &[Variant]) -> Vec<SerialResult> {
    let iterations = cfg.iterations(n);
    let warmup = cfg.warmup();
    on_own_thread(&env.set.root, || {
        let mut rows: Vec<Row> = variants
            .iter()
            .map(|&v| Row {
                job: Job::prepare(v, env, n, 0),
                mount: Vec::with_capacity(iterations),
                unmount: Vec::with_capacity(iterations),
                total: Vec::with_capacity(iterations),
                error: None,
            })
            .collect();
        let mut shuffle = Shuffle(0x9e37_79b9_7f4a_7c15 ^ n as u64);
        for round in 0..warmup + iterations {
            for i in shuffle.order(rows.len()) {
                let row = &mut rows[i];
                if row.error.is_some() {
                    continue;
                }
                match row.job.cycle(round == 0) {
                    Ok((m, u)) if round >= warmup => {
                        row.mount.push(m);
                        row.unmount.push(u);
                        row.total.push(m + u);
                    }
                    Ok(_) => {}
                    Err(e) => row.error = Some(e),
                }
            }
        }
        rows.into_iter()
            .map(|r| r.into_result(env.set.fs, n))
            .collect()
    })
}

/// Ratios of each row's medians to the floor row of the same fs and size.
fn fill_serial_ratios(rows: &mut [SerialResult]) {
    let floors: Vec<(&'static str, usize, Stats, Stats)> = rows
        .iter()
        .filter(|r| r.variant == "floor" && r.error.is_none())
        .map(|r| (r.fs, r.layers, r.mount, r.total))
        .collect();
    for row in rows.iter_mut().filter(|r| r.error.is_none()) {
        if let Some((_, _, mount, total)) = floors
            .iter()
            .find(|(fs, n, _, _)| *fs == row.fs && *n == row.layers)
        {
            row.mount_ratio = Some(row.mount.median_ms / mount.median_ms);
            row.total_ratio = Some(row.total.median_ms / total.median_ms);
        }
    }
}

// ---------------------------------------------------------------------------
// Concurrent measurements
// ---------------------------------------------------------------------------

/// `threads` threads, each with its own slot and cwd, cycle mount+unmount
/// until `duration` has passed; returns all cycles and the wall time until
/// the last thread finished its last cycle.
fn run_concurrent_once(
    env: &Env<'_>,
    n: usize,
    variant: Variant,
    threads: usize,
    duration: Duration,
) -> Result<(u64, f64), String> {
    let barrier = Barrier::new(threads + 1);
    let (outcomes, seconds) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let barrier = &barrier;
                s.spawn(move || {
                    own_cwd(&env.set.root);
                    let mut job = Job::prepare(variant, env, n, k);
                    barrier.wait();
                    cycle_until(&mut job, Instant::now() + duration)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let outcomes: Vec<Result<u64, String>> = handles
            .into_iter()
            .map(|h| h.join().expect("concurrent thread panicked"))
            .collect();
        (outcomes, start.elapsed().as_secs_f64())
    });
    let mut cycles = 0;
    for outcome in outcomes {
        cycles += outcome?;
    }
    Ok((cycles, seconds))
}

fn cycle_until(job: &mut Job, deadline: Instant) -> Result<u64, String> {
    let mut cycles = 0;
    while Instant::now() < deadline {
        job.cycle(false)?;
        cycles += 1;
    }
    Ok(cycles)
}

/// Every variant at one size and thread count, in `rounds` short runs
/// each, the variants shuffled per round (as in `run_serial`); the rate is
/// all cycles over all the runs' wall time.
fn run_concurrent(
    cfg: &Config,
    env: &Env<'_>,
    n: usize,
    threads: usize,
    variants: &[Variant],
) -> Vec<ConcurrentResult> {
    let (rounds, duration) = cfg.concurrent_rounds();
    let mut totals: Vec<Result<(u64, f64), String>> = vec![Ok((0, 0.0)); variants.len()];
    let mut shuffle = Shuffle(0x2545_f491_4f6c_dd1d ^ (n * threads) as u64);
    for _ in 0..rounds {
        for i in shuffle.order(variants.len()) {
            if let Ok((cycles, seconds)) = &totals[i] {
                totals[i] = run_concurrent_once(env, n, variants[i], threads, duration)
                    .map(|(c, s)| (cycles + c, seconds + s));
            }
        }
    }
    variants
        .iter()
        .zip(totals)
        .map(|(v, total)| {
            let (cycles, seconds, error) = match total {
                Ok((c, s)) => (c, s, None),
                Err(e) => (0, 0.0, Some(e)),
            };
            ConcurrentResult {
                fs: env.set.fs,
                layers: n,
                variant: v.name(),
                threads,
                cycles,
                seconds,
                per_second: if error.is_none() {
                    cycles as f64 / seconds
                } else {
                    0.0
                },
                ratio: None,
                error,
            }
        })
        .collect()
}

fn fill_concurrent_ratios(rows: &mut [ConcurrentResult]) {
    let floors: Vec<(&'static str, usize, usize, f64)> = rows
        .iter()
        .filter(|r| r.variant == "floor" && r.error.is_none())
        .map(|r| (r.fs, r.layers, r.threads, r.per_second))
        .collect();
    for row in rows.iter_mut().filter(|r| r.error.is_none()) {
        if let Some((.., rate)) = floors
            .iter()
            .find(|(fs, n, t, _)| *fs == row.fs && *n == row.layers && *t == row.threads)
        {
            row.ratio = Some(row.per_second / rate);
        }
    }
}

// ---------------------------------------------------------------------------
// Single operations: user namespace from maps, the full probe
// ---------------------------------------------------------------------------

fn run_single(
    name: &'static str,
    iterations: usize,
    mut op: impl FnMut() -> Result<(), String>,
) -> SingleResult {
    let mut samples = Vec::with_capacity(iterations);
    let mut error = None;
    for _ in 0..iterations + 1 {
        let t0 = Instant::now();
        if let Err(e) = op() {
            error = Some(e);
            break;
        }
        samples.push(t0.elapsed());
    }
    if !samples.is_empty() {
        samples.remove(0); // the first run is warm-up
    }
    SingleResult {
        name,
        iterations: samples.len(),
        stats: Stats::of(&samples),
        error,
    }
}

fn run_userns(cfg: &Config, map: &IdMap) -> SingleResult {
    run_single("userns from maps", cfg.single_iterations(200), || {
        UserNamespace::from_maps(map, map)
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

fn run_probe(cfg: &Config) -> SingleResult {
    run_single("probe(&[], None)", cfg.single_iterations(50), || {
        let report = idoverlay::probe::probe(&[], None);
        report
            .strategy
            .map(drop)
            .ok_or_else(|| format!("probe chose no strategy: {}", report.reason))
    })
}

// ---------------------------------------------------------------------------
// Command line end to end
// ---------------------------------------------------------------------------

/// The release binary cargo built for this bench.
const IDOVERLAY_BIN: &str = env!("CARGO_BIN_EXE_idoverlay");

/// One tool's samples while the CLI rounds run.
struct CliRow {
    tool: &'static str,
    commands: (Argv, Argv),
    mount: Vec<Duration>,
    unmount: Vec<Duration>,
    total: Vec<Duration>,
    error: Option<String>,
}

/// util-linux and idoverlay alternately (interleaved, as in `run_serial`):
/// spawn + mount, then spawn + umount, each timed to the child's exit.
fn run_cli(cfg: &Config, set: &LayerSet, n: usize) -> Vec<CliResult> {
    let slot = set.slot(0);
    let iterations = cfg.single_iterations(if n <= 8 { 100 } else { 50 });
    let mut rows: Vec<CliRow> = ["util-linux", "idoverlay"]
        .into_iter()
        .map(|tool| CliRow {
            tool,
            commands: cli_commands(set, &slot, n, tool),
            mount: Vec::new(),
            unmount: Vec::new(),
            total: Vec::new(),
            error: None,
        })
        .collect();
    for i in 0..iterations + cfg.warmup() {
        for row in rows.iter_mut().filter(|r| r.error.is_none()) {
            match cli_cycle(&row.commands, &slot.target) {
                Ok((m, u)) if i >= cfg.warmup() => {
                    row.mount.push(m);
                    row.unmount.push(u);
                    row.total.push(m + u);
                }
                Ok(_) => {}
                Err(e) => row.error = Some(e),
            }
        }
    }
    rows.into_iter()
        .map(|r| CliResult {
            fs: set.fs,
            layers: n,
            tool: r.tool,
            iterations: r.mount.len(),
            mount: Stats::of(&r.mount),
            unmount: Stats::of(&r.unmount),
            total: Stats::of(&r.total),
            ratio: None,
            error: r.error,
        })
        .collect()
}

fn cli_cycle(
    (mount_cmd, umount_cmd): &(Argv, Argv),
    target: &Path,
) -> Result<(Duration, Duration), String> {
    let t0 = Instant::now();
    spawn_ok(mount_cmd)?;
    let t1 = Instant::now();
    if let Err(e) = spawn_ok(umount_cmd) {
        let _ = unmount(target, UnmountFlags::DETACH);
        return Err(e);
    }
    Ok((t1 - t0, t1.elapsed()))
}

/// The argv of the mount and the umount command, as `(program, args, cwd)`.
type Argv = (String, Vec<String>, PathBuf);

fn cli_commands(set: &LayerSet, slot: &Slot, n: usize, tool: &str) -> (Argv, Argv) {
    let target = slot.target.display().to_string();
    let upper = slot.upper.display().to_string();
    let work = slot.work.display().to_string();
    let cwd = set.parent.clone();
    if tool == "util-linux" {
        // Relative lowerdir from the layers' parent: util-linux 2.38 uses
        // mount(2), whose options are cut at one page.
        let opts = format!(
            "lowerdir={},upperdir={upper},workdir={work}",
            LayerSet::relative_lowerdir(n)
        );
        let args = ["-t", "overlay", "overlay", "-o", &opts, &target];
        (
            ("mount".into(), args.map(String::from).to_vec(), cwd.clone()),
            ("umount".into(), vec![target.clone()], cwd),
        )
    } else {
        let mut args = vec!["mount".to_string()];
        for p in set.paths(n) {
            args.push("--lower".into());
            args.push(p.display().to_string());
        }
        for a in [
            "--upper", &upper, "--work", &work, "--uidmap", MAP, "--gidmap", MAP, &target,
        ] {
            args.push(a.to_string());
        }
        (
            (IDOVERLAY_BIN.into(), args, cwd.clone()),
            (IDOVERLAY_BIN.into(), vec!["umount".into(), target], cwd),
        )
    }
}

fn spawn_ok((program, args, cwd): &Argv) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| format!("spawn {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.first().map(String::as_str).unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn fill_cli_ratios(rows: &mut [CliResult]) {
    let base: Vec<(&'static str, usize, f64)> = rows
        .iter()
        .filter(|r| r.tool == "util-linux" && r.error.is_none())
        .map(|r| (r.fs, r.layers, r.total.median_ms))
        .collect();
    for row in rows.iter_mut().filter(|r| r.error.is_none()) {
        if let Some((.., median)) = base
            .iter()
            .find(|(fs, n, _)| *fs == row.fs && *n == row.layers)
        {
            row.ratio = Some(row.total.median_ms / median);
        }
    }
}

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

fn serial_row<'a>(r: &'a Report, variant: &str) -> Option<&'a SerialResult> {
    r.serial
        .iter()
        .find(|x| x.fs == "ext4" && x.layers == MAX_LAYERS && x.variant == variant)
        .filter(|x| x.error.is_none())
}

/// A pass/fail line; `None` when the rows it needs were not measured.
fn target(name: &str, value: Option<(f64, String)>, ok: impl Fn(f64) -> bool) -> TargetResult {
    match value {
        Some((v, measured)) => TargetResult {
            name: name.to_string(),
            measured,
            ok: Some(ok(v)),
        },
        None => TargetResult {
            name: name.to_string(),
            measured: "not measured".into(),
            ok: None,
        },
    }
}

/// The targets (ext4, 500 layers unless said). Ratios are of the
/// assemble+attach medians; the ratio with the unmount is shown beside.
fn evaluate_targets(r: &Report) -> Vec<TargetResult> {
    vec![
        target(
            "auto median <= 1.15x floor (ext4, 500 layers, assemble+attach)",
            vs_floor(r, "auto"),
            |x| x <= 1.15,
        ),
        target(
            "auto >= 50x faster than containerd-style reference (ext4, 500)",
            speedup_over_reference(r),
            |x| x >= 50.0,
        ),
        target(
            "16 threads: auto aggregate >= 0.8x floor's (ext4, 500)",
            concurrent_vs_floor(r),
            |x| x >= 0.8,
        ),
        target(
            "private-ns median <= 3x floor (ext4, 500, assemble+attach)",
            vs_floor(r, "private-ns"),
            |x| x <= 3.0,
        ),
        target(
            "CLI mount+umount <= 1.3x util-linux (ext4, 8 layers)",
            cli_vs_util_linux(r),
            |x| x <= 1.3,
        ),
        target("probe median < 20 ms", probe_median(r), |x| x < 20.0),
    ]
}

/// A target's value and a line saying what was measured.
type Measured = Option<(f64, String)>;

fn vs_floor(r: &Report, variant: &str) -> Measured {
    let row = serial_row(r, variant)?;
    let floor = serial_row(r, "floor")?;
    let (x, with_unmount) = (row.mount_ratio?, row.total_ratio?);
    Some((
        x,
        format!(
            "{x:.2}x ({:.3} vs floor {:.3} ms; with unmount {with_unmount:.2}x)",
            row.mount.median_ms, floor.mount.median_ms
        ),
    ))
}

fn speedup_over_reference(r: &Report) -> Measured {
    let auto = serial_row(r, "auto")?;
    let reference = serial_row(r, "reference")?;
    let x = reference.mount.median_ms / auto.mount.median_ms;
    let with_unmount = reference.total.median_ms / auto.total.median_ms;
    Some((
        x,
        format!(
            "reference {:.2} ms / auto {:.3} ms = {x:.1}x (with unmount {with_unmount:.1}x)",
            reference.mount.median_ms, auto.mount.median_ms
        ),
    ))
}

fn concurrent_vs_floor(r: &Report) -> Measured {
    let row = |variant: &str| {
        r.concurrent
            .iter()
            .find(|c| {
                c.fs == "ext4"
                    && c.layers == MAX_LAYERS
                    && c.threads == MAX_THREADS
                    && c.variant == variant
            })
            .filter(|c| c.error.is_none())
    };
    let (auto, floor) = (row("auto")?, row("floor")?);
    let x = auto.ratio?;
    Some((
        x,
        format!(
            "{:.1}/s vs floor {:.1}/s = {x:.2}x",
            auto.per_second, floor.per_second
        ),
    ))
}

fn cli_vs_util_linux(r: &Report) -> Measured {
    let row = r
        .cli
        .iter()
        .find(|c| c.fs == "ext4" && c.layers == 8 && c.tool == "idoverlay")?;
    let x = row.ratio?;
    Some((
        x,
        format!("{:.2} ms = {x:.2}x util-linux", row.total.median_ms),
    ))
}

fn probe_median(r: &Report) -> Measured {
    let row = r
        .single
        .iter()
        .find(|s| s.name.starts_with("probe") && s.error.is_none())?;
    Some((
        row.stats.median_ms,
        format!(
            "median {:.2} ms over {} runs",
            row.stats.median_ms, row.iterations
        ),
    ))
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn ratio(r: Option<f64>) -> String {
    r.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into())
}

fn print_report(r: &Report) {
    let m = &r.machine;
    println!(
        "\nidoverlay assemble benchmark{}: {} ({} cpus), kernel {}, {}, source {}",
        if r.quick { " (QUICK)" } else { "" },
        m.cpu,
        m.cpus,
        m.kernel,
        m.util_linux,
        r.source
    );
    println!("{}", serial_table(&r.serial));
    println!("{}", concurrent_table(&r.concurrent));
    println!("{}", single_table(&r.single));
    println!("{}", cli_table(&r.cli));
    for t in &r.targets {
        let verdict = match t.ok {
            Some(true) => "TARGET ok    ",
            Some(false) => "TARGET MISSED",
            None => "TARGET n/a   ",
        };
        println!("{verdict} {}: {}", t.name, t.measured);
    }
    println!("\ntotal bench time {:.0} s", r.seconds);
}

/// Markdown tables, so that docs/performance.md can take them verbatim.
fn serial_table(rows: &[SerialResult]) -> String {
    let mut s = String::from(
        "\nOne thread; ms; mount = assemble+attach, umount = unmount of the overlay, \
         total = both; ratios of medians to the floor's\n\n\
         | fs | layers | variant | iters | mount median | mount p99 | mount / floor | umount median | umount p99 | total median | total p99 | total / floor |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(
                s,
                "| {} | {} | {} | error: {e} |",
                r.fs, r.layers, r.variant
            );
            continue;
        }
        let name = match (&r.strategy_used, r.variant) {
            (Some(used), "auto") => format!("auto ({used})"),
            _ => r.variant.to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {name} | {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            r.fs,
            r.layers,
            r.iterations,
            r.mount.median_ms,
            r.mount.p99_ms,
            ratio(r.mount_ratio),
            r.unmount.median_ms,
            r.unmount.p99_ms,
            r.total.median_ms,
            r.total.p99_ms,
            ratio(r.total_ratio),
        );
    }
    s
}

fn concurrent_table(rows: &[ConcurrentResult]) -> String {
    let mut s = String::from(
        "\nConcurrent mount+unmount cycles, each thread its own target; aggregate per second\n\n\
         | fs | layers | variant | threads | cycles | cycles/s | / floor |\n\
         |---|---:|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | error: {e} |",
                r.fs, r.layers, r.variant, r.threads
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} | {} |",
            r.fs,
            r.layers,
            r.variant,
            r.threads,
            r.cycles,
            r.per_second,
            ratio(r.ratio)
        );
    }
    s
}

fn single_table(rows: &[SingleResult]) -> String {
    let mut s = String::from(
        "\nOn their own; ms\n\n| operation | iters | median | p99 | mean |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(s, "| {} | error: {e} |", r.name);
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {:.3} |",
            r.name, r.iterations, r.stats.median_ms, r.stats.p99_ms, r.stats.mean_ms
        );
    }
    s
}

fn cli_table(rows: &[CliResult]) -> String {
    let mut s = String::from(
        "\nCommand line end to end (process spawn included); ms; ratio of total medians\n\n\
         | fs | layers | tool | iters | mount median | mount p99 | umount median | total median | total p99 | / util-linux |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(s, "| {} | {} | {} | error: {e} |", r.fs, r.layers, r.tool);
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            r.fs,
            r.layers,
            r.tool,
            r.iterations,
            r.mount.median_ms,
            r.mount.p99_ms,
            r.unmount.median_ms,
            r.total.median_ms,
            r.total.p99_ms,
            ratio(r.ratio)
        );
    }
    s
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let util_linux = Command::new("mount")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(" (")
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    Machine {
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        util_linux,
    }
}

fn git_describe() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn results_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-results.json")
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

/// A root-owned 0755 directory for host-staged's state dir (which it
/// creates 0700 and covers with its own tmpfs).
fn host_staged_state_dir(scratch: &Scratch) -> PathBuf {
    let parent = scratch.root.join("hs");
    std::fs::create_dir(&parent).expect("create host-staged parent");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755))
        .expect("chmod host-staged parent");
    parent.join("state")
}

fn run_all(cfg: &Config, scratch: &Scratch, report: &mut Report) {
    let map: IdMap = MAP.parse().expect("valid map");
    let userns = Arc::new(UserNamespace::from_maps(&map, &map).expect("create user namespace"));
    let state_dir = host_staged_state_dir(scratch);
    let variants: Vec<Variant> = Variant::ALL
        .into_iter()
        .filter(|v| cfg.variants.allows(v.name()))
        .collect();
    for fs in ["ext4", "tmpfs"] {
        if !cfg.filesystems.allows(fs) {
            continue;
        }
        eprintln!("bench: building {MAX_LAYERS} layers on {fs}");
        let set = LayerSet::build(fs, scratch.fs_root(fs));
        let env = Env {
            set: &set,
            userns: &userns,
            state_dir: &state_dir,
        };
        if cfg.sections.allows("serial") {
            for n in cfg.sizes() {
                eprintln!("bench: {fs} {n} layers, one thread");
                report.serial.extend(run_serial(cfg, &env, n, &variants));
            }
        }
        if cfg.sections.allows("concurrent") {
            // Each concurrent thread has its own working directory (the
            // floor needs one); the shared-cwd case is a serial row only.
            let variants: Vec<Variant> = variants
                .iter()
                .copied()
                .filter(|v| *v != Variant::AutoSharedCwd)
                .collect();
            for n in cfg.concurrent_sizes() {
                for threads in [1, 4, MAX_THREADS] {
                    eprintln!("bench: {fs} {n} layers, {threads} threads");
                    report
                        .concurrent
                        .extend(run_concurrent(cfg, &env, n, threads, &variants));
                }
            }
        }
        if cfg.sections.allows("cli") {
            for n in [8, 128] {
                eprintln!("bench: {fs} {n} layers, command line");
                report.cli.extend(run_cli(cfg, &set, n));
            }
        }
    }
    if cfg.sections.allows("userns") {
        eprintln!("bench: userns from maps");
        report.single.push(run_userns(cfg, &map));
    }
    if cfg.sections.allows("probe") {
        eprintln!("bench: probe");
        report.single.push(run_probe(cfg));
    }
}

fn main() {
    // `cargo test --benches` runs this binary without `--bench`: do nothing
    // there, the bench mounts hundreds of overlays and takes minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("assemble bench: run it with `cargo bench --bench assemble`");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("assemble bench: needs root (it mounts overlays in a private mount namespace)");
        std::process::exit(1);
    }
    let started = Instant::now();
    let cfg = Config::from_env_and_args();
    enter_private_mount_ns();
    // 16 threads x 500 layers x (layer fd + clone fd) is ~16000 fds.
    idoverlay::raise_fd_limit();
    let mut report = Report {
        machine: machine(),
        source: git_describe(),
        quick: cfg.quick,
        seconds: 0.0,
        serial: vec![],
        concurrent: vec![],
        single: vec![],
        cli: vec![],
        targets: vec![],
    };
    {
        let scratch = Scratch::create();
        run_all(&cfg, &scratch, &mut report);
    } // scratch detached and removed here
    fill_serial_ratios(&mut report.serial);
    fill_concurrent_ratios(&mut report.concurrent);
    fill_cli_ratios(&mut report.cli);
    report.targets = evaluate_targets(&report);
    report.seconds = started.elapsed().as_secs_f64();
    print_report(&report);
    let path = results_path();
    match serde_json::to_string_pretty(&report) {
        Ok(json) => match std::fs::write(&path, json + "\n") {
            Ok(()) => println!("results written to {}", path.display()),
            Err(e) => eprintln!("bench: could not write {}: {e}", path.display()),
        },
        Err(e) => eprintln!("bench: could not serialize results: {e}"),
    }
}
