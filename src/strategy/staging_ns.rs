//! The staging mount namespace of `private-ns`: nearly empty — one tmpfs
//! as its root, nothing of the host's mounts — made once and entered with
//! `setns` for every assembly. `unshare(CLONE_NEWNS)` copies the caller's
//! whole mount table (some 30 ms with 10,000 mounts, here); `setns` into a
//! namespace that holds one mount costs the same on any node.
//!
//! Besides its root it holds a /proc of its own (pids only), for the magic
//! links that name the upper and work dirs by fd.
//!
//! Made once per process, kept by an fd: it dies with the process, and
//! everything staged in it with it. With the state dir in use for the boot
//! ([`crate::Overlay::keep_probe_for_boot`], as the command line tool does),
//! it is made once per boot instead and kept as a bind mount of its nsfs
//! file in the state tmpfs (`staging-ns`), so a new process does not copy
//! the table either.
//!
//! Where the root is the initramfs itself, which `pivot_root` cannot leave,
//! no such namespace can be made: each assembly then stages in a private
//! copy of the caller's namespace that dies with its thread
//! ([`Stage::fresh`]), at the cost of the copy.
//!
//! Each assembly stages on a thread of its own, in a private copy of the
//! staging namespace (two mounts to copy) with a tmpfs of its own over its
//! root ([`Stage`]): nothing of an assembly ever lands in the staging
//! namespace itself, so there is nothing to detach or remove afterwards,
//! and a killed process leaves nothing there. Earlier builds staged in the
//! staging namespace itself, each stage beside a lock file held while it
//! lived; what a killed assembly of theirs left in a namespace kept for
//! the boot (a stage whose lock nobody holds) is removed once per process.
//! Nothing of it is ever visible in the host's mount namespace.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{Error, Result};
use crate::process_local::ProcessLocal;
use crate::state::StateDirOnce;
use crate::sys::{self, MountAttrs};

/// The name of the namespace's nsfs bind mount in the state tmpfs.
pub(crate) const FILE: &str = "staging-ns";

/// The namespace made for this process, when one was (a forked child
/// adopts its parent's: the namespace is the same for it).
static PER_PROCESS: ProcessLocal<Option<OwnedFd>> = ProcessLocal::new(None);
/// No staging namespace can be made here (the root is the initramfs).
static UNAVAILABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets go of this process's staging namespace (it goes when its last
/// assembly ends); the next private-ns assembly makes a new one. For
/// [`crate::settle`].
pub(crate) fn release() {
    if let Some(mut kept) = PER_PROCESS.lock(|_| {}) {
        kept.take();
    }
}

/// The staging namespace: per boot in `state_dir` when given, else this
/// process's. Made on first use. `None` where none can be made (a system
/// whose root is the initramfs itself, which `pivot_root` cannot leave),
/// and in a child forked while this process's was being made: then each
/// assembly stages in a private copy of the caller's namespace
/// ([`Stage::fresh`]), as before, at the cost of copying the table.
/// With where it came from, for the request's trace.
pub(crate) fn get(state_dir: Option<&StateDirOnce>) -> Result<(Option<OwnedFd>, Source)> {
    use std::sync::atomic::Ordering;
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return Ok((None, Source::NoneHere));
    }
    let mut source = Source::Process;
    if let Some(dir) = state_dir {
        match per_boot(dir)? {
            PerBoot::Kept(fd, source) => return Ok((fd, source)),
            // The boot's is bound in another mount namespace only: this
            // process's serves, unkept.
            PerBoot::Elsewhere => source = Source::ProcessBootsElsewhere,
        }
    }
    // Held while the namespace is made, so that a burst makes one. A child
    // forked meanwhile cannot have it and stages as where none can be made.
    let Some(mut kept) = PER_PROCESS.lock(|_| {}) else {
        return Ok((None, Source::NoneHere));
    };
    if let Some(fd) = kept.as_ref() {
        return sys::dup(fd.as_fd())
            .map(|fd| (Some(fd), source))
            .map_err(|e| Error::os("keep the staging namespace", None, e));
    }
    let Some((made, _)) = make()? else {
        return Ok((None, Source::NoneHere));
    };
    let copy =
        sys::dup(made.as_fd()).map_err(|e| Error::os("keep the staging namespace", None, e))?;
    *kept = Some(made);
    Ok((Some(copy), source))
}

/// Where [`get`]'s staging namespace came from (its `Display` is for the
/// trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The boot's, kept in the state dir.
    Boot,
    /// Made now and kept for the boot, at the `tries`-th try (the first
    /// made on CPU `first`, as far as it could tell).
    MadeForBoot { tries: usize, first: usize },
    /// Made now, but the kernel refused to keep each of `tries` (ELOOP):
    /// used unkept, for this call.
    NotKept { tries: usize, first: usize },
    /// This process's.
    Process,
    /// This process's: the boot's is bound in another mount namespace.
    ProcessBootsElsewhere,
    /// None: none can be made here, or this is a child forked while it
    /// was being made (a private copy of the caller's namespace serves).
    NoneHere,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Boot => f.write_str("the boot's, from the state dir"),
            Source::MadeForBoot { tries, first } => write!(
                f,
                "made and kept for the boot (try {tries}, the first on CPU {first})"
            ),
            Source::NotKept { tries, first } => write!(
                f,
                "made, not kept for the boot: refused (ELOOP) at each of {tries} tries, \
                 the first on CPU {first}"
            ),
            Source::Process => f.write_str("this process's"),
            Source::ProcessBootsElsewhere => {
                f.write_str("this process's (the boot's is bound in another mount namespace)")
            }
            Source::NoneHere => f.write_str("none (a private copy of the caller's namespace)"),
        }
    }
}

/// What the state tmpfs holds for the boot's staging namespace.
enum PerBoot {
    /// The namespace (`None`: none can be made here).
    Kept(Option<OwnedFd>, Source),
    /// A file bound, or being bound, in another mount namespace: every
    /// open of the state tmpfs makes it private, so a namespace copied
    /// before the bind sees the file beneath it.
    Elsewhere,
}

/// The boot's staging namespace, from the state tmpfs (made there when
/// missing). Before the namespace is bound over [`FILE`], the file names
/// the mount namespace that binds it ([`Claim`]): a file this namespace
/// claimed but shows unbound was left by a killed process, and is made
/// again; one another namespace claimed may be bound there (unlinking it
/// would detach that bind everywhere), so it is left alone. Anything else
/// there is refused.
fn per_boot(state: &StateDirOnce) -> Result<PerBoot> {
    let state_dir = state.path();
    // Provisional when mounted here: taken away again, with the namespace
    // bound in it, when the assembly fails (bad input keeps nothing).
    let state = state.get_or_create_for_assembly()?;
    let path = state_dir.join(FILE);
    let fd = match open_file(state) {
        Ok(fd) => fd,
        Err(e) if e.errno == libc::ENOENT => return make_and_keep(state, &path),
        Err(e) => return Err(Error::os("open the staging namespace", Some(&path), e)),
    };
    if is_mount_ns(&fd) {
        return Ok(PerBoot::Kept(Some(fd), Source::Boot));
    }
    match Claim::of(&fd) {
        Claim::Foreign => Err(not_a_mount_ns(state_dir)),
        Claim::Mine => make_and_keep(state, &path),
        Claim::Elsewhere => Ok(PerBoot::Elsewhere),
    }
}

/// [`FILE`] in the state tmpfs, opened to read (never a FIFO's open that
/// blocks, never through a symlink).
fn open_file(state: &crate::state::StateDir) -> sys::SysResult<OwnedFd> {
    sys::open_read_nonblocking(state.fd.as_fd(), Path::new(FILE), false)
}

fn is_mount_ns(fd: &OwnedFd) -> bool {
    sys::namespace_type(fd.as_fd()).is_ok_and(|t| t == libc::CLONE_NEWNS)
}

/// Whose an unbound [`FILE`] is, by what its maker wrote in it.
#[derive(PartialEq)]
enum Claim {
    /// This mount namespace's: unbound here, so left by a kill.
    Mine,
    /// Another mount namespace's, or not finished: it may be bound there.
    Elsewhere,
    /// Not a file idoverlay makes there.
    Foreign,
}

/// What a maker writes in [`FILE`] before it binds the namespace over it.
const CLAIM_PREFIX: &str = "idoverlay-staging-ns mnt:";

impl Claim {
    fn of(fd: &OwnedFd) -> Claim {
        let Ok(st) = sys::stat_fd(fd.as_fd()) else {
            return Claim::Foreign;
        };
        if st.mode != libc::S_IFREG | 0o600 || st.uid != 0 || st.mount_root == Some(true) {
            return Claim::Foreign;
        }
        let Ok(text) = sys::read_at_most(fd.as_fd(), 64) else {
            return Claim::Foreign;
        };
        match std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.strip_prefix(CLAIM_PREFIX)?.strip_suffix('\n'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(ns) if Some(ns) == this_mount_ns() => Claim::Mine,
            Some(_) => Claim::Elsewhere,
            // Killed between creating it and writing in it, or an earlier
            // build's (which wrote nothing): possibly bound elsewhere.
            None if text.is_empty() => Claim::Elsewhere,
            None => Claim::Foreign,
        }
    }
}

/// The inode of the calling thread's mount namespace.
fn this_mount_ns() -> Option<u64> {
    let fd = open_home().ok()?;
    sys::stat_fd(fd.as_fd()).ok().map(|st| st.ino)
}

fn not_a_mount_ns(state_dir: &Path) -> Error {
    Error::invalid_path(
        "state dir",
        state_dir,
        format!("holds a {FILE} that is not a mount namespace; idoverlay did not put it there"),
    )
}

/// Makes the namespace and keeps it in the state tmpfs, under the lock of
/// its marker (root's alone), so one assembly at a time: another may have
/// kept one meanwhile, which is taken instead. A file this namespace
/// claimed and a killed process left unbound is removed first. In a
/// provisional tmpfs this call mounted, the bind is noted, so that taking
/// the tmpfs away again detaches that very bind.
fn make_and_keep(state: &crate::state::StateDir, path: &Path) -> Result<PerBoot> {
    let marker = state.lock_marker()?;
    match clear_unbound(state, path)? {
        Found::Namespace(fd) => return Ok(PerBoot::Kept(Some(fd), Source::Boot)),
        Found::Elsewhere => return Ok(PerBoot::Elsewhere),
        Found::Nothing | Found::Removed => {}
    }
    let Some(ns) = this_mount_ns() else {
        return Ok(PerBoot::Elsewhere);
    };
    // Claimed before it is bound; removed again when the bind fails.
    let keep = |made: &OwnedFd| {
        let bind = sys::clone_mount(made.as_fd(), Path::new(""))?;
        let file = sys::create_file(state.fd.as_fd(), Path::new(FILE), 0o600)?;
        sys::write_all(file.as_fd(), format!("{CLAIM_PREFIX}{ns}\n").as_bytes())
            .and_then(|()| sys::move_mount(bind.as_fd(), state.fd.as_fd(), Path::new(FILE)))
            .inspect_err(|_| {
                let _ = sys::unlink(state.fd.as_fd(), Path::new(FILE));
            })?;
        state.bound_here(bind.as_fd());
        Ok::<(), sys::SysError>(())
    };
    let Some((mut made, cpu)) = make()? else {
        return Ok(PerBoot::Kept(None, Source::NoneHere));
    };
    // The kernel refuses (ELOOP) to attach a namespace's file in a
    // namespace whose id is not lower than its own (its guard against
    // loops). Namespace ids come from per-CPU batches (of 4,096), so one
    // made on a CPU whose batch is behind carries a lower id than the
    // namespace this process runs in, when that one is young too (a
    // test's, a service's private mounts; never the init namespace): on
    // this 2-CPU machine, from a fresh namespace, one CPU's were all
    // refused (0 of 10), the other's all taken (10 of 10). The CPU the
    // caller's namespace was made on is never behind it, but which one
    // that was nobody says. So the namespace is made again on each CPU
    // in turn, as a copy of the one just made ([`again_on`]: two mounts to
    // copy, not the caller's table; at most MAX_TRIES in all); failing
    // that, this process's namespace serves without being kept. The CPU
    // it was made on comes last, not never: that is a guess (the thread
    // may move between its `unshare` and asking where it runs), and a
    // wrong one ruled out the only CPU ahead (1 mount of 32 in the full
    // suite kept none).
    const MAX_TRIES: usize = 64;
    let mut cpus = sys::allowed_cpus().unwrap_or_default();
    cpus.sort_by_key(|&other| other == cpu);
    let mut others = cpus.into_iter().take(MAX_TRIES - 1);
    let mut tries = 1;
    loop {
        match keep(&made) {
            Ok(()) => break,
            Err(e) if e.errno != libc::ELOOP => {
                return Err(Error::os("keep the staging namespace in", Some(path), e));
            }
            Err(_) => {
                let Some(other) = others.next() else {
                    return Ok(PerBoot::Kept(
                        Some(made),
                        Source::NotKept { tries, first: cpu },
                    ));
                };
                made = again_on(other, &made)?;
                tries += 1;
            }
        }
    }
    drop(marker);
    Ok(PerBoot::Kept(
        Some(made),
        Source::MadeForBoot { tries, first: cpu },
    ))
}

/// What [`FILE`] is, under the marker's lock.
enum Found {
    Namespace(OwnedFd),
    Nothing,
    /// A file this namespace claimed, unbound: removed.
    Removed,
    /// A file another namespace claimed (or an unfinished one): kept.
    Elsewhere,
}

/// With the marker locked: the namespace kept in [`FILE`], or nothing
/// there once a file this namespace claimed and a killed process left
/// unbound is removed (the state tmpfs is root-only and the lock held:
/// nobody else is making one here). Anything idoverlay does not make there
/// is refused.
fn clear_unbound(state: &crate::state::StateDir, path: &Path) -> Result<Found> {
    let Ok(fd) = open_file(state) else {
        return Ok(Found::Nothing);
    };
    if is_mount_ns(&fd) {
        return Ok(Found::Namespace(fd));
    }
    match Claim::of(&fd) {
        Claim::Mine => {
            sys::unlink(state.fd.as_fd(), Path::new(FILE)).map_err(|e| {
                Error::os("remove the unbound staging namespace file", Some(path), e)
            })?;
            Ok(Found::Removed)
        }
        Claim::Elsewhere => Ok(Found::Elsewhere),
        Claim::Foreign => Err(not_a_mount_ns(path.parent().unwrap_or(path))),
    }
}

/// For `gc`: removes the file a process of this mount namespace, killed
/// between creating it and binding the boot's staging namespace over it,
/// left; true when it did.
pub(crate) fn remove_unbound(state: &crate::state::StateDir) -> Result<bool> {
    let unbound_mine =
        open_file(state).is_ok_and(|fd| !is_mount_ns(&fd) && Claim::of(&fd) == Claim::Mine);
    if !unbound_mine {
        return Ok(false);
    }
    let path = state.join(FILE);
    let _marker = state.lock_marker()?;
    Ok(matches!(clear_unbound(state, &path)?, Found::Removed))
}

/// Makes the namespace, on a thread that ends with it made: unshare (one
/// copy of the table, once), everything private, a fresh tmpfs made the
/// root (`pivot_root(".", ".")`), the old root detached. `None` when the
/// root cannot be replaced (`pivot_root` refuses to leave the initramfs).
/// With the CPU it was made on.
fn make() -> Result<Option<(OwnedFd, usize)>> {
    crate::threads::run_on_thread("staging-ns", || {
        let failed = |what: &str| {
            let what = what.to_string();
            move |e| {
                Error::os(what.clone(), None, e)
                    .with_hint("a seccomp policy may forbid unshare")
                    .with_advice(crate::Advice::UseHostStaged)
            }
        };
        sys::unshare_mount_ns().map_err(failed("give the staging namespace its own mounts"))?;
        // The id was given on the CPU the thread ran on here (or a moment
        // before: only a guess to tell the next try where to go last).
        let made_on = sys::current_cpu();
        let ns = sys::open_read(sys::cwd(), Path::new("/proc/thread-self/ns/mnt"))
            .map_err(failed("open the staging namespace"))?;
        // Entering it puts root and working directory at the namespace's
        // root. A chrooted caller's root is a directory somewhere in it:
        // `pivot_root` there would replace only the mount at that place and
        // leave the rest of the host's table, a copy kept for the boot
        // (pinning filesystems unmounted on the host meanwhile).
        sys::set_mount_ns(ns.as_fd()).map_err(failed("enter the staging namespace's root"))?;
        sys::make_private_recursive(Path::new("/"))
            .map_err(failed("make the staging namespace's mounts private"))?;
        let root = tmpfs("idoverlay-staging-root", "64k").map_err(failed("create its root"))?;
        sys::move_mount(root.as_fd(), sys::cwd(), Path::new("/"))
            .and_then(|()| sys::fchdir(root.as_fd()))
            .map_err(failed("make a tmpfs the staging namespace's root"))?;
        match sys::pivot_root_here() {
            Ok(()) => {}
            Err(e) if e.errno == libc::EINVAL => {
                UNAVAILABLE.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(failed("make a tmpfs the staging namespace's root")(e)),
        }
        sys::unmount(Path::new("."), true)
            .map_err(failed("detach the staging namespace's old root"))?;
        // A /proc of its own (pids only): the upper and work dirs, and a
        // layer by fd, are named by their fds' magic links
        // (/proc/thread-self/fd/N), which need one.
        proc_pids()
            .and_then(|proc| {
                sys::mkdir(sys::cwd(), Path::new("proc"), 0o555)?;
                sys::move_mount(proc.as_fd(), sys::cwd(), Path::new("proc"))
            })
            .map_err(failed("mount a /proc in the staging namespace"))?;
        Ok(Some((ns, made_on)))
    })
}

/// The staging namespace `made` made again on `cpu` (its id from that
/// CPU's batch): a private copy of it, made from inside it, so the copy
/// holds its two mounts (its tmpfs root and /proc) and nothing of the
/// caller's table, which [`make`] copied once already.
fn again_on(cpu: usize, made: &OwnedFd) -> Result<OwnedFd> {
    crate::threads::run_on_thread("staging-ns", || {
        // A CPU this process may no longer use: made where it runs.
        let _ = sys::run_only_on_cpu(cpu);
        let failed = |e| Error::os("make the staging namespace again", None, e);
        sys::enter_mount_ns(made.as_fd()).map_err(failed)?;
        sys::unshare_mount_ns().map_err(failed)?;
        sys::open_read(sys::cwd(), Path::new("/proc/thread-self/ns/mnt")).map_err(failed)
    })
}

/// A procfs showing only processes (`subset=pid`), detached.
fn proc_pids() -> sys::SysResult<OwnedFd> {
    let ctx = sys::fsopen(c"proc")?;
    sys::fsconfig_set_string(ctx.as_fd(), c"subset", c"pid")?;
    sys::fsconfig_create(ctx.as_fd())?;
    sys::fsmount(
        ctx.as_fd(),
        MountAttrs::NOSUID | MountAttrs::NODEV | MountAttrs::NOEXEC,
    )
}

/// A fresh tmpfs (0700), detached.
fn tmpfs(source: &str, size: &str) -> sys::SysResult<OwnedFd> {
    let ctx = sys::fsopen(c"tmpfs")?;
    let source = std::ffi::CString::new(source).expect("no NUL");
    let size = std::ffi::CString::new(size).expect("no NUL");
    sys::fsconfig_set_string(ctx.as_fd(), c"source", &source)?;
    sys::fsconfig_set_string(ctx.as_fd(), c"mode", c"0700")?;
    sys::fsconfig_set_string(ctx.as_fd(), c"size", &size)?;
    sys::fsconfig_create(ctx.as_fd())?;
    sys::fsmount(
        ctx.as_fd(),
        MountAttrs::NOSUID | MountAttrs::NODEV | MountAttrs::NOEXEC,
    )
}

/// One assembly's stage: the calling thread (one of idoverlay's, ending
/// afterwards) in a mount namespace of its own, whose root a tmpfs of its
/// own covers; its working directory is that tmpfs.
///
/// The namespace is a private copy (`unshare`) of the staging namespace,
/// which holds two mounts, so it costs the same on any node. Nothing of an
/// assembly ever lands in the staging namespace itself: the copy, with
/// every clone staged in it, goes when the thread ends, and with the
/// process when it is killed. The kernel wakes whoever waits for a thread
/// (`exit_mm`) before it drops the thread's namespaces, so that teardown —
/// an RCU grace period — is not on the caller's path.
pub(crate) struct Stage {
    /// The stage tmpfs' root.
    pub dir: OwnedFd,
    /// The caller's mount namespace and root directory, to open and clone
    /// there what only they show: `setns` puts a thread at the
    /// namespace's root, which for a chrooted caller is not its own.
    home: Home,
}

/// Where a caller's paths resolve: its mount namespace and its root.
struct Home {
    ns: OwnedFd,
    root: OwnedFd,
}

impl Home {
    /// The calling thread's, before it leaves them.
    fn here() -> Result<Home> {
        let root = sys::open_dir_path(sys::cwd(), Path::new("/"))
            .map_err(|e| Error::os("open the caller's root directory", None, e))?;
        Ok(Home {
            ns: open_home()?,
            root,
        })
    }

    /// Back into the caller's mount namespace, under its root.
    fn go_back(&self) -> Result<()> {
        sys::set_mount_ns(self.ns.as_fd())
            .and_then(|()| sys::fchdir(self.root.as_fd()))
            .and_then(|()| sys::chroot_here())
            .map_err(|e| Error::os("go back to the caller's mount namespace", None, e))
    }
}

impl Stage {
    /// Enters `ns` from the calling thread and makes a stage in a private
    /// copy of it. `for_boot`: `ns` is the boot's, where killed assemblies
    /// of earlier builds may have left stages; they are removed, once per
    /// process (this process's own namespace never held one).
    pub fn enter(ns: OwnedFd, for_boot: bool) -> Result<Stage> {
        let home = Home::here()?;
        sys::enter_mount_ns(ns.as_fd())
            .map_err(|e| Error::os("enter the staging namespace", None, e))?;
        // Its /proc is its maker's pid namespace's: where this thread has
        // no /proc/thread-self there (a caller in another pid namespace, a
        // container sharing the state dir), which names the upper and work
        // dirs by fd and the way back home, it stages in a copy of the
        // caller's namespace instead.
        if sys::stat_nofollow(sys::cwd(), Path::new("proc/thread-self/ns")).is_err() {
            sys::set_mount_ns(home.ns.as_fd())
                .map_err(|e| Error::os("go back to the caller's mount namespace", None, e))?;
            return Stage::in_private_copy(home, "a private copy of the caller's namespace");
        }
        if for_boot && !SWEPT.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // The working directory is the root here (setns put it there).
            let root = sys::open_dir_path(sys::cwd(), Path::new("/"))
                .map_err(|e| Error::os("open the staging namespace's root", None, e))?;
            sweep(root.as_fd());
        }
        Stage::in_private_copy(home, "a copy of the staging namespace")
    }

    /// A stage in a private copy of the caller's mount namespace, at the
    /// cost of copying its table: where no staging namespace can be made.
    pub fn fresh() -> Result<Stage> {
        let home = Home::here()?;
        sys::enter_mount_ns(home.ns.as_fd())
            .map_err(|e| Error::os("enter the caller's mount namespace's root", None, e))?;
        Stage::in_private_copy(home, "a private copy of the caller's namespace")
    }

    /// Gives the calling thread a private copy of the namespace it is in
    /// (`/` made recursively private first: nothing staged propagates
    /// back), covers its root with a fresh tmpfs and moves there. The
    /// thread is at the namespace's root (`setns` put it there): a chrooted
    /// caller's root need not be a mount, which `/` must be here.
    fn in_private_copy(home: Home, copy: &str) -> Result<Stage> {
        // The messages are made only on failure: this runs per assembly.
        let failed = |what: &'static str| {
            move |e| {
                Error::os(format!("{what} {copy}"), None, e)
                    .with_hint("a seccomp policy may forbid unshare")
                    .with_advice(crate::Advice::UseHostStaged)
            }
        };
        sys::unshare_mount_ns().map_err(failed("give a helper thread"))?;
        sys::make_private_recursive(Path::new("/"))
            .map_err(failed("make private the mounts of"))?;
        let dir =
            tmpfs("idoverlay-staging", "64k").map_err(failed("create a staging tmpfs for"))?;
        sys::move_mount(dir.as_fd(), sys::cwd(), Path::new("/"))
            .and_then(|()| sys::fchdir(dir.as_fd()))
            .map_err(failed("attach the staging tmpfs in"))?;
        Ok(Stage { dir, home })
    }

    /// Runs `f` in the caller's mount namespace, under the caller's root
    /// (to open and clone what only they show), then comes back into the
    /// stage.
    pub fn at_home<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let here = open_home()?;
        self.home.go_back()?;
        let result = f();
        sys::set_mount_ns(here.as_fd())
            .and_then(|()| sys::fchdir(self.dir.as_fd()))
            .map_err(|e| Error::os("enter the staging namespace", None, e))?;
        result
    }
}

/// The calling thread's mount namespace, by an fd (the caller's, before
/// the thread leaves it; the stage's, to come back to it).
fn open_home() -> Result<OwnedFd> {
    sys::open_read(sys::cwd(), Path::new("/proc/thread-self/ns/mnt"))
        .map_err(|e| Error::os("open this thread's mount namespace", None, e))
}

/// Whether this process has looked for what earlier builds left in the
/// boot's staging namespace.
static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Detaches stage `name` (with every clone staged on it) and removes its
/// names, the lock file last. `umount2` takes a path: the stage is named
/// relative to the working directory, which must be `root` (only
/// idoverlay's threads ever enter this namespace).
fn remove_stage(root: BorrowedFd<'_>, name: &str) {
    let mounted = sys::stat_nofollow(root, Path::new(name))
        .ok()
        .and_then(|st| st.mount_root)
        == Some(true);
    if mounted {
        let _ = sys::unmount(Path::new(name), true);
    }
    let _ = sys::rmdir(root, Path::new(name));
    let _ = sys::unlink(root, Path::new(&format!("{name}.lock")));
}

/// Removes the stages of assemblies that are gone: their lock is free.
fn sweep(root: BorrowedFd<'_>) {
    let Ok(names) = sys::dir_entries(root) else {
        return;
    };
    for name in names {
        let Some(stage) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let Ok(lock) = sys::open_read(root, Path::new(&name)) else {
            continue;
        };
        if sys::try_lock_exclusive(lock.as_fd()) == Ok(true) {
            remove_stage(root, stage);
        }
    }
}
