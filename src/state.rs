//! The state directory: where `host-staged` stages its clones, and the only
//! place `gc` ever cleans up.
//!
//! Invariants, each kept here:
//! * **Provably idoverlay's own.** The state dir is a private tmpfs that
//!   idoverlay mounted over an empty, root-owned 0700 directory, carrying a
//!   marker file ([`MARKER`]) written into the tmpfs *before* it was
//!   attached, so an attached state tmpfs always has it. A directory that is
//!   neither empty nor such a tmpfs is refused, never covered.
//! * **Provisional until its assembly is done.** A tmpfs mounted for an
//!   assembly (host-staged's staging, private-ns' staging namespace) is
//!   attached with its marker locked (`flock`) and read-only (0400); the
//!   call that mounted it makes it final (0600) once its overlay exists,
//!   and when it fails takes it away again if it holds only what that call
//!   put there ("bad input keeps nothing"). Whoever else finds it
//!   provisional waits for that lock before it keeps anything there, and
//!   adopts (makes final) one whose maker was killed; so nothing another
//!   call keeps there is ever taken away with it.
//! * **Reached once, by fd.** The path is opened from `/` one component at
//!   a time, each relative to the one before, never through a symlink, and
//!   every directory on the way must be root's and writable by no one else
//!   (a sticky one may be, above the state dir's parent): nobody else can
//!   redirect it, then or later. Everything below is named relative to the
//!   state dir's fd.
//! * **Records first, locked, atomic.** A staging directory `<id>/` is
//!   created only after its record `<id>.json` exists; the record is
//!   written to a temporary name, locked (`flock`) and renamed into place,
//!   so it is never seen half-written or unlocked while its assembly runs,
//!   and it lists every name before that name is attached. The lock, held
//!   for the whole assembly and released by the kernel when the process
//!   dies, is what tells `gc` that a staging is live.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{display_path, Error, Result};
use crate::lock_wait;
use crate::process_local::ProcessLocal;
use crate::sys::{self, LockMode, MountAttrs};

/// Where host-staged keeps its staging directories unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/idoverlay";

/// The marker at the root of every state tmpfs idoverlay mounted.
pub(crate) const MARKER: &str = ".idoverlay-state";
/// The marker's mode once its tmpfs is final: it stays, for the boot.
const MARKER_FINAL: u32 = 0o600;
/// The marker's mode while its tmpfs is provisional (see [`Made`]).
const MARKER_PROVISIONAL: u32 = 0o400;
const MARKER_FORMAT: &str = "idoverlay-state";
const MARKER_VERSION: u32 = 1;
/// The format and version of staging records.
const RECORD_FORMAT: &str = "idoverlay-staging";
const RECORD_VERSION: u32 = 2;
/// Records and the marker are small; anything bigger is not ours.
pub(crate) const RECORD_MAX: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Marker {
    format: String,
    version: u32,
}

/// Whether a marker of this mode says its tmpfs is provisional: told by
/// the owner's write bit alone, which a umask can only take away (a
/// final marker a umask made 0400, as earlier builds could, reads as
/// provisional and is adopted: made final). The `statx` that checks the
/// marker tells it: the common path, a final tmpfs, costs nothing more.
fn is_provisional(marker_mode: u32) -> bool {
    marker_mode & 0o200 == 0
}

/// What a caller does in the state dir, which decides whether it waits
/// for the maker of a provisional tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Reads (`show`, `list`, the probe report): a provisional tmpfs is
    /// read as it is. (`list` may remove records of mounts that are gone,
    /// which a maker taking its tmpfs away never needs.)
    Read,
    /// Keeps, stages or cleans up something there: waits until the maker
    /// of a provisional tmpfs is done with it, then opens it again.
    Write,
}

/// The state dir of one operation, walked and checked when first needed
/// and then the same fd for all it keeps there: a mount reads the boot's
/// probe report and writes its record; host-staged stages. Resolved once,
/// as every input (and one walk from `/` instead of two or three).
#[derive(Debug)]
pub(crate) struct StateDirOnce {
    path: PathBuf,
    opened: std::sync::OnceLock<StateDir>,
    /// A provisional tmpfs another call is making, opened only to read
    /// ([`StateDirOnce::existing`]): never written to (to write,
    /// [`StateDirOnce::get_or_create`] waits for its maker and opens the
    /// state dir again).
    peeked: std::sync::OnceLock<StateDir>,
    /// Why opening it to write failed, once it did: a second use in the
    /// same call (the record after the probe report) fails the same way at
    /// once instead of waiting for the same lock again.
    failed: std::sync::OnceLock<Error>,
}

impl StateDirOnce {
    pub fn new(path: impl Into<PathBuf>) -> StateDirOnce {
        StateDirOnce {
            path: path.into(),
            opened: std::sync::OnceLock::new(),
            peeked: std::sync::OnceLock::new(),
            failed: std::sync::OnceLock::new(),
        }
    }

    /// The path as given (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// As [`StateDir::open_existing`], to read: `None` while there is none
    /// (nothing is made); the one opened before, if any.
    pub fn existing(&self) -> Result<Option<&StateDir>> {
        if let Some(state) = self.opened.get().or_else(|| self.peeked.get()) {
            return Ok(Some(state));
        }
        Ok(
            StateDir::open_existing(&self.path, Use::Read)?.map(|state| {
                if state.provisional {
                    self.peeked.get_or_init(|| state)
                } else {
                    self.keep(state)
                }
            }),
        )
    }

    /// As [`StateDir::open_or_create`], once, for what is kept because an
    /// overlay was made (its record, the probe report): a tmpfs mounted
    /// here is final at once.
    pub fn get_or_create(&self) -> Result<&StateDir> {
        self.open_or_create(Making::Final)
    }

    /// As [`StateDir::open_or_create`], once, for an assembly to stage in:
    /// a tmpfs mounted here is provisional until [`StateDirOnce::make_final`]
    /// or [`StateDirOnce::take_back`], which the request's end calls.
    pub fn get_or_create_for_assembly(&self) -> Result<&StateDir> {
        self.open_or_create(Making::Provisional)
    }

    fn open_or_create(&self, making: Making) -> Result<&StateDir> {
        if let Some(state) = self.opened.get() {
            return Ok(state);
        }
        if let Some(e) = self.failed.get() {
            return Err(e.again());
        }
        match StateDir::open_or_create(&self.path, making) {
            Ok(state) => Ok(self.keep(state)),
            Err(e) => Err(self.failed.get_or_init(|| e).again()),
        }
    }

    fn keep(&self, state: StateDir) -> &StateDir {
        self.opened.get_or_init(|| state)
    }

    /// The overlay of the assembly this call mounted a provisional tmpfs
    /// for exists: the tmpfs stays, final. Nothing when this call mounted
    /// none (the common case costs no syscall).
    pub fn make_final(&self) -> Result<()> {
        match self.opened.get() {
            Some(state) => state.make_final(),
            None => Ok(()),
        }
    }

    /// The assembly this call mounted a provisional tmpfs for failed: the
    /// tmpfs is taken away again if it holds only what this call put
    /// there, else made final (see [`StateDir::take_back`]).
    pub fn take_back(&self) -> Result<TakenBack> {
        match self.opened.get() {
            Some(state) => state.take_back(),
            None => Ok(TakenBack::NotMade),
        }
    }
}

/// How [`StateDir::open_or_create`] mounts a tmpfs it has to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Making {
    /// For an assembly: provisional until it is done (see [`Made`]).
    Provisional,
    /// For something kept because an overlay was made: final at once.
    Final,
}

/// What [`StateDir::take_back`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TakenBack {
    /// This call mounted no provisional tmpfs (or made it final already).
    NotMade,
    /// Detached, and the state dir removed when `dir_removed` (this call
    /// had created it).
    Detached { dir_removed: bool },
    /// Made final and kept, for this reason.
    Kept(String),
}

/// What the call that mounted a provisional state tmpfs holds until it is
/// final or taken away again.
#[derive(Debug)]
struct Made {
    /// The marker, locked (`LOCK_EX`) since before the tmpfs was attached:
    /// whoever else finds the tmpfs waits for this lock before it keeps
    /// anything there, so what the tmpfs holds is this call's alone.
    marker: sys::Locked,
    /// The state dir's parent (from the walk) and the state dir's name in
    /// it: to see that the state dir still shows this tmpfs.
    parent: OwnedFd,
    name: std::ffi::OsString,
    /// The directory the tmpfs covers.
    covered: OwnedFd,
    /// Whether this call created that directory (it is removed again,
    /// when empty, with the tmpfs).
    created: bool,
    /// The staging namespace this call bound at `staging-ns`, if it did.
    bound: Option<BoundNs>,
}

/// The bind mount of a staging namespace's nsfs file: the namespace (its
/// nsfs device and inode) and the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BoundNs {
    dev: (u32, u32),
    ino: u64,
    mount_id: Option<u64>,
}

/// An opened, checked state directory.
#[derive(Debug)]
pub(crate) struct StateDir {
    /// Its path as given (for messages).
    pub path: PathBuf,
    /// The root of the state tmpfs.
    pub fd: OwnedFd,
    /// The state tmpfs' mount id (mountinfo's), to tell its own staged
    /// mounts from anything else.
    pub mount_id: Option<u64>,
    /// Its marker said provisional when it was opened, by a call that did
    /// not make it (to read, [`Use::Read`]).
    provisional: bool,
    /// Set while the tmpfs is this call's own and provisional.
    made: std::sync::Mutex<Option<Made>>,
}

impl StateDir {
    /// Opens the state directory for `gc` (and to read): `Ok(None)` when
    /// it does not exist or is an empty plain directory (nothing was ever
    /// staged); refused when it is anything but idoverlay's own. To write,
    /// a provisional tmpfs' maker is waited for first.
    pub fn open_existing(path: &Path, usage: Use) -> Result<Option<StateDir>> {
        let deadline = lock_wait::Deadline::new();
        loop {
            let walked = walk(path)?;
            let Some(leaf) = walked.leaf else {
                return Ok(None);
            };
            let st = check_leaf(path, &leaf)?;
            if st.mount_root == Some(true) {
                // Detached meanwhile (taken away by its maker, then
                // adopted by a waiter): none there now, as the next walk
                // shows.
                let Some(state) = verify_ours(path, leaf, st.mnt_id)? else {
                    in_time(&deadline, path)?;
                    continue;
                };
                if state.provisional && usage == Use::Write {
                    wait_for_maker(&state, &deadline)?;
                    in_time(&deadline, path)?;
                    continue;
                }
                return Ok(Some(state));
            }
            // A bare directory a call created for a first assembly that
            // failed is removed by that call (under the covered lock, which
            // this read does not take): the one opened may be gone by now
            // (ENOENT), and then there is none, as the next walk shows.
            let names = match sys::dir_entries(leaf.as_fd()) {
                Err(e) if e.errno == libc::ENOENT && !deadline.passed() => continue,
                names => names.map_err(|e| Error::os("read state dir", Some(path), e))?,
            };
            return match names.first() {
                None => Ok(None),
                Some(name) => Err(not_ours(
                    path,
                    &format!("holds {name:?} but is not idoverlay's state tmpfs"),
                )),
            };
        }
    }

    /// Opens the state directory to keep or stage something there,
    /// creating it (root-owned 0700) and mounting idoverlay's private tmpfs
    /// over it when needed (see [`Making`]). A provisional tmpfs another
    /// call made is waited for, then everything is looked at again.
    pub fn open_or_create(path: &Path, making: Making) -> Result<StateDir> {
        let deadline = lock_wait::Deadline::new();
        // The directory this call created, kept open (its inode cannot be
        // another's meanwhile): a later try that mounts over it (another
        // call's tmpfs was there for a while) removes it again, too.
        let mut created_here = None;
        loop {
            if let Some(state) =
                Self::try_open_or_create(path, making, &deadline, &mut created_here)?
            {
                return Ok(state);
            }
            in_time(&deadline, path)?;
        }
    }

    /// One try of [`StateDir::open_or_create`]; `None` when the caller must
    /// start again from the walk: a provisional tmpfs' maker was waited
    /// for, or the state dir was taken away meanwhile by the call that
    /// created it (its assembly failed). Each `None` follows another
    /// call's progress; all of it, waits included, ends at `deadline`.
    fn try_open_or_create(
        path: &Path,
        making: Making,
        deadline: &lock_wait::Deadline,
        created_here: &mut Option<OwnedFd>,
    ) -> Result<Option<StateDir>> {
        let walked = walk(path)?;
        let (leaf, created) = match walked.leaf {
            Some(fd) => (fd, false),
            None => {
                let created =
                    match sys::mkdir(walked.parent.as_fd(), Path::new(&walked.name), 0o700) {
                        Ok(()) => true,
                        Err(e) if e.errno == libc::EEXIST => false,
                        Err(e) => return Err(Error::os("create state dir", Some(path), e)),
                    };
                match open_leaf(path, walked.parent.as_fd(), &walked.name)? {
                    Some(fd) => {
                        if created {
                            *created_here = sys::dup(fd.as_fd()).ok();
                        }
                        (fd, created)
                    }
                    None => return Ok(None),
                }
            }
        };
        let st = check_leaf(path, &leaf)?;
        if st.mount_root == Some(true) {
            return verify_ours(path, leaf, st.mnt_id)?
                .map_or(Ok(None), |state| ready_or_wait(state, deadline));
        }
        // Two assemblies (threads or processes) must not both mount a tmpfs
        // here: the second would cover the first one's staging. The lock is
        // on the (root-only, checked) directory the tmpfs goes over, which
        // nobody else can open to hold its lock; the check is repeated
        // under it. Nothing waits for anything else while holding it: a
        // provisional tmpfs' maker takes it to take its tmpfs away again.
        let lock = lock_covered(leaf.as_fd(), deadline, path)?;
        let Some(leaf) = open_leaf(path, walked.parent.as_fd(), &walked.name)? else {
            return Ok(None);
        };
        let locked = st;
        let st = check_leaf(path, &leaf)?;
        if st.mount_root == Some(true) {
            drop(lock);
            return verify_ours(path, leaf, st.mnt_id)?
                .map_or(Ok(None), |state| ready_or_wait(state, deadline));
        }
        // Another directory by that name than the one locked (the one
        // locked was removed and made again): its lock is another.
        if !st.same_inode(&locked) {
            return Ok(None);
        }
        let created = created
            || created_here
                .as_ref()
                .is_some_and(|dir| sys::stat_fd(dir.as_fd()).is_ok_and(|c| c.same_inode(&st)));
        // Never cover what is there: only an empty directory takes the tmpfs.
        let names = sys::dir_entries(leaf.as_fd())
            .map_err(|e| Error::os("read state dir", Some(path), e))?;
        if let Some(name) = names.first() {
            return Err(not_ours(
                path,
                &format!(
                    "is not empty (it holds {name:?}) and is not idoverlay's state tmpfs; \
                     give an empty directory or a new path"
                ),
            ));
        }
        let state = mount_state_tmpfs(path, leaf.as_fd(), making)?;
        let state = match state {
            Attached::Final(state) => state,
            Attached::Provisional(mut state, marker) => {
                state.made = std::sync::Mutex::new(Some(Made {
                    marker,
                    parent: walked.parent,
                    name: walked.name,
                    covered: leaf,
                    created,
                    bound: None,
                }));
                state
            }
        };
        drop(lock);
        Ok(Some(state))
    }

    /// The marker's lock, held to make, keep or remove the staging
    /// namespace's file: `None` when this call holds it already (it mounted
    /// the tmpfs, still provisional: nobody else uses it, and a second
    /// `flock` of this process's would wait for its own first).
    pub fn lock_marker(&self) -> Result<Option<sys::Locked>> {
        if self.made_here() {
            return Ok(None);
        }
        let op = "lock the state dir";
        let fd = sys::open_read(self.fd.as_fd(), Path::new(MARKER))
            .map_err(|e| Error::os(op, Some(&self.path), e))?;
        lock_wait::lock(fd, LockMode::Exclusive, op, Some(&self.path)).map(Some)
    }

    /// Whether this call mounted the tmpfs and it is still provisional.
    fn made_here(&self) -> bool {
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Notes the staging namespace this call just bound at `staging-ns`
    /// (`bind`: the bind mount's fd), when the tmpfs is its own and
    /// provisional: taking the tmpfs away detaches that bind, and only
    /// that one. Costs nothing otherwise.
    pub fn bound_here(&self, bind: BorrowedFd<'_>) {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(made) = made.as_mut() {
            made.bound = sys::stat_fd(bind).ok().map(|st| BoundNs {
                dev: st.dev,
                ino: st.ino,
                mount_id: st.mnt_id,
            });
        }
    }

    /// A tmpfs this call mounted, provisional: made final, and its lock
    /// given back. Nothing otherwise.
    pub fn make_final(&self) -> Result<()> {
        let made = self.made.lock().unwrap_or_else(|e| e.into_inner()).take();
        match made {
            Some(made) => sys::fchmod(made.marker.as_fd(), MARKER_FINAL)
                .map_err(|e| Error::os("make the state tmpfs final", Some(&self.path), e)),
            None => Ok(()),
        }
    }

    /// A tmpfs this call mounted, provisional, for an assembly that failed:
    /// detached again when all it holds is what this call put there (the
    /// marker, and the staging namespace this call bound at `staging-ns`,
    /// that very bind) and the state dir still shows it; the state dir
    /// removed when this call created it. Anything else (what a failed
    /// teardown left for `gc`, …) and it is made final and kept: nobody
    /// else has kept anything there (they wait for the marker's lock,
    /// held until this returns), but nothing unchecked is ever detached.
    pub fn take_back(&self) -> Result<TakenBack> {
        let made = self.made.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(made) = made else {
            return Ok(TakenBack::NotMade);
        };
        match self.take_away(&made) {
            Ok(dir_removed) => Ok(TakenBack::Detached { dir_removed }),
            Err(why) => sys::fchmod(made.marker.as_fd(), MARKER_FINAL)
                .map(|()| TakenBack::Kept(why))
                .map_err(|e| Error::os("make the state tmpfs final", Some(&self.path), e)),
        }
    }

    /// [`StateDir::take_back`]'s checks and detaching; `Err(why)` when it
    /// must stay (the staging namespace's bind may be detached by then:
    /// its file is then this namespace's unbound claim, which the next
    /// private-ns assembly here removes).
    fn take_away(&self, made: &Made) -> std::result::Result<bool, String> {
        use crate::strategy::staging_ns::FILE;
        let root = self.fd.as_fd();
        let os = |what: &'static str| move |e: sys::SysError| format!("{what}: {e}");
        // All it holds is what this call put there.
        let mut names = sys::dir_entries(root).map_err(os("reading it failed"))?;
        names.sort();
        let expected: Vec<std::ffi::OsString> = std::iter::once(MARKER)
            .chain(made.bound.map(|_| FILE))
            .map(Into::into)
            .collect();
        if names != expected {
            return Err(format!("it holds {names:?}"));
        }
        let marker = sys::stat_nofollow(root, Path::new(MARKER)).map_err(os("the marker"))?;
        let held = sys::stat_fd(made.marker.as_fd()).map_err(os("the marker"))?;
        if !marker.same_inode(&held) || marker.mount_root != Some(false) {
            return Err("its marker is not the one this call wrote".into());
        }
        // The very bind this call made, of the very namespace it bound.
        let bind = match made.bound {
            None => None,
            Some(bound) => {
                let fd =
                    sys::open_read_nonblocking(root, Path::new(FILE), false).map_err(os(FILE))?;
                let st = sys::stat_fd(fd.as_fd()).map_err(os(FILE))?;
                let same = st.dev == bound.dev
                    && st.ino == bound.ino
                    && st.mount_root == Some(true)
                    && st.mnt_id.is_some()
                    && st.mnt_id == bound.mount_id;
                if !same {
                    return Err(format!("{FILE} is not the bind this call made"));
                }
                Some(fd)
            }
        };
        // The state dir still shows this very mount (nothing over it).
        let ours = sys::stat_fd(root).map_err(os("the tmpfs"))?;
        let shown = sys::open_dir_path(made.parent.as_fd(), Path::new(&made.name))
            .and_then(|fd| sys::stat_fd(fd.as_fd()))
            .map_err(os("the state dir"))?;
        let same = shown.mount_root == Some(true)
            && self.mount_id.is_some()
            && shown.mnt_id == self.mount_id
            && shown.same_inode(&ours);
        if !same {
            return Err("the state dir shows another mount now".into());
        }
        // The covered directory's lock, as a call that found it bare
        // takes it before mounting there: that call then looks again, and
        // finds the directory as it is once this is done.
        let covered = sys::stat_fd(made.covered.as_fd()).map_err(os("the state dir"))?;
        let _lock = lock_covered(
            made.covered.as_fd(),
            &lock_wait::Deadline::new(),
            &self.path,
        )
        .map_err(|e| format!("locking it failed: {e}"))?;
        // Each through an fd of exactly what was checked: the bind (it
        // holds no mount), then the tmpfs, which then holds none either.
        if let Some(fd) = bind {
            sys::detach_root_of(fd.as_fd()).map_err(os("detaching its staging namespace"))?;
        }
        sys::detach_root_of(root).map_err(os("detaching it"))?;
        // `rmdir` removes only an empty directory; this one only when it is
        // still the one this call created.
        let dir_removed = made.created
            && sys::stat_nofollow(made.parent.as_fd(), Path::new(&made.name))
                .is_ok_and(|st| st.same_inode(&covered) && st.mount_root == Some(false))
            && sys::rmdir(made.parent.as_fd(), Path::new(&made.name)).is_ok();
        Ok(dir_removed)
    }

    /// The path of `name` inside the state dir, for messages.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

/// The lock of the directory a state tmpfs goes over (root-only, checked:
/// nobody else can open it to hold it), taken by whoever mounts a tmpfs
/// there or takes one away again.
fn lock_covered(
    dir: BorrowedFd<'_>,
    deadline: &lock_wait::Deadline,
    path: &Path,
) -> Result<sys::Locked> {
    let op = "lock the state dir";
    let fd = sys::open_dir_read(dir, Path::new(".")).map_err(|e| Error::os(op, Some(path), e))?;
    lock_wait::lock_until(fd, LockMode::Exclusive, deadline, op, Some(path))
}

/// What a try of [`StateDir::open_or_create`] does with a mounted state
/// dir it verified: uses it, or waits for the maker of a provisional one
/// and has the caller look again.
fn ready_or_wait(state: StateDir, deadline: &lock_wait::Deadline) -> Result<Option<StateDir>> {
    if !state.provisional {
        return Ok(Some(state));
    }
    wait_for_maker(&state, deadline)?;
    Ok(None)
}

/// Waits until the call that mounted this provisional tmpfs is done with
/// it: it holds the marker's lock from before it attached the tmpfs until
/// it made it final or took it away again. One still provisional after
/// that was left by a maker that was killed: adopted, made final (it stays,
/// as everything a killed assembly leaves; `gc` finishes its staging), but
/// only while the state dir still shows it: one taken away is detached by
/// then and stays provisional, so that whoever still holds an fd of it
/// reads it as nobody's. The caller opens the state dir again from `/`.
fn wait_for_maker(state: &StateDir, deadline: &lock_wait::Deadline) -> Result<()> {
    let op = "wait for the call making the state dir";
    let failed = |e| Error::os(op, Some(&state.path), e);
    let marker =
        sys::open_read_nonblocking(state.fd.as_fd(), Path::new(MARKER), false).map_err(failed)?;
    let marker = lock_wait::lock_until(marker, LockMode::Shared, deadline, op, Some(&state.path))?;
    let st = sys::stat_fd(marker.as_fd()).map_err(failed)?;
    // Exclusive, so that of several waiters one adopts it; one that finds
    // it taken finds it final when it looks again.
    // Only one the state dir still shows: one its maker took away is
    // detached by the time its lock is let go, and stays provisional, so
    // that whoever still holds an fd of it reads it as nobody's to keep.
    if is_provisional(st.mode)
        && still_shown(state)
        && sys::try_lock_exclusive(marker.as_fd()).map_err(failed)?
    {
        sys::fchmod(marker.as_fd(), MARKER_FINAL).map_err(failed)?;
    }
    Ok(())
}

/// Whether the state dir's path leads to `state`'s very tmpfs (its root,
/// the mount it was opened as).
fn still_shown(state: &StateDir) -> bool {
    let (
        Ok(Walked {
            leaf: Some(leaf), ..
        }),
        Ok(ours),
    ) = (walk(&state.path), sys::stat_fd(state.fd.as_fd()))
    else {
        return false;
    };
    sys::stat_fd(leaf.as_fd()).is_ok_and(|st| {
        st.mount_root == Some(true)
            && st.mnt_id.is_some()
            && st.mnt_id == state.mount_id
            && st.same_inode(&ours)
    })
}

fn not_ours(path: &Path, why: &str) -> Error {
    Error::invalid_path("state dir", path, why.to_string())
}

/// A state dir path opened down to its parent, and the state dir itself
/// if it exists.
struct Walked {
    parent: OwnedFd,
    name: std::ffi::OsString,
    leaf: Option<OwnedFd>,
}

/// Opens `path` from `/` one component at a time, each relative to the
/// directory before, never following a symlink; every directory on the way
/// must be root's and writable by no one else — above the parent, a
/// sticky one may be, since only root could then rename the next one.
fn walk(path: &Path) -> Result<Walked> {
    let normal = crate::path::normalize(path)
        .map_err(|r| Error::invalid_path("state dir", path, r.reason()))?;
    if crate::path::has_dotdot(&normal) {
        return Err(not_ours(
            path,
            "has a \"..\" component; give the state dir's real path",
        ));
    }
    let components: Vec<&[u8]> = normal
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let Some((last, ancestors)) = components.split_last() else {
        return Err(not_ours(path, "must be a directory below /, not / itself"));
    };
    let mut dir =
        sys::open_dir_path(sys::cwd(), Path::new("/")).map_err(|e| Error::os("open /", None, e))?;
    let mut at = PathBuf::from("/");
    for (k, c) in ancestors.iter().enumerate() {
        let is_parent = k == ancestors.len() - 1;
        check_ancestor(path, &at, dir.as_fd(), false)?;
        let name = Path::new(OsStr::from_bytes(c));
        at.push(name);
        dir = open_component(path, &at, dir.as_fd(), name)?;
        if is_parent {
            check_ancestor(path, &at, dir.as_fd(), true)?;
        }
    }
    if ancestors.is_empty() {
        check_ancestor(path, &at, dir.as_fd(), true)?;
    }
    let name = OsStr::from_bytes(last).to_os_string();
    let leaf = open_leaf(path, dir.as_fd(), &name)?;
    Ok(Walked {
        parent: dir,
        name,
        leaf,
    })
}

fn open_component(path: &Path, at: &Path, dir: BorrowedFd<'_>, name: &Path) -> Result<OwnedFd> {
    sys::open_dir_path(dir, name).map_err(|e| {
        let why = match e.errno {
            libc::ENOENT => format!("{} does not exist", display_path(at)),
            libc::ENOTDIR => match sys::stat_nofollow(dir, name) {
                Ok(st) if st.is_symlink() => format!(
                    "{} is a symlink; give the state dir's real path (no symlink on the way)",
                    display_path(at)
                ),
                _ => format!("{} is not a directory", display_path(at)),
            },
            _ => format!("{} cannot be opened ({e})", display_path(at)),
        };
        Error::from(crate::error::Repr::InvalidInput {
            what: "state dir".into(),
            input: display_path(path),
            reason: why,
            path: Some(path.to_path_buf()),
            source: Some(e),
        })
    })
}

/// The state dir itself (`None` when it does not exist).
fn open_leaf(path: &Path, parent: BorrowedFd<'_>, name: &OsStr) -> Result<Option<OwnedFd>> {
    match sys::open_dir_path(parent, Path::new(name)) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.errno == libc::ENOENT => Ok(None),
        Err(e) if e.errno == libc::ENOTDIR => Err(not_ours(
            path,
            "is not a directory (symlinks are not followed)",
        )),
        Err(e) => Err(Error::os("open state dir", Some(path), e)),
    }
}

/// A directory on the way: root's, and writable by no one else; above the
/// parent, sticky ones are allowed (only root may rename root's entries there).
fn check_ancestor(path: &Path, at: &Path, dir: BorrowedFd<'_>, is_parent: bool) -> Result<()> {
    let st = sys::stat_fd(dir).map_err(|e| Error::os("inspect", Some(at), e))?;
    let open = st.mode & 0o022 != 0;
    let sticky = st.mode & 0o1000 != 0;
    let why = if st.uid != 0 {
        "not owned by root"
    } else if open && (is_parent || !sticky) {
        if st.mode & 0o002 != 0 {
            "world-writable"
        } else {
            "writable by its group"
        }
    } else {
        return Ok(());
    };
    Err(not_ours(
        path,
        &format!(
            "sits under {}, which is {why}; staging must be under root-owned directories \
             others cannot write (the default is {DEFAULT_STATE_DIR})",
            display_path(at)
        ),
    ))
}

/// The state dir itself: root-owned, mode 0700. Its stat, for what else
/// the caller asks of it (a mount root? which mount?).
fn check_leaf(path: &Path, leaf: &OwnedFd) -> Result<sys::Stat> {
    let st =
        sys::stat_fd(leaf.as_fd()).map_err(|e| Error::os("inspect state dir", Some(path), e))?;
    if st.uid != 0 || st.mode & 0o077 != 0 {
        return Err(not_ours(
            path,
            &format!(
                "must be owned by root with mode 0700 (it is uid {} mode {:o})",
                st.uid,
                st.mode & 0o7777
            ),
        ));
    }
    Ok(st)
}

/// An error once `deadline` has passed: the state dir at `path` kept
/// changing under every try to open it.
fn in_time(deadline: &lock_wait::Deadline, path: &Path) -> Result<()> {
    if deadline.passed() {
        return Err(lock_wait::kept_changing("open it", path));
    }
    Ok(())
}

/// A mount at the state dir: idoverlay's only if it is a tmpfs with the
/// marker idoverlay put there.
/// `mount_id`: the mount's id from the stat the caller made of `root`
/// (making it private below changes its propagation, not its id).
/// `None`: a final one that is no longer mounted (a provisional tmpfs its
/// maker took away, adopted since by a waiter), which the caller opened
/// just before: there is none there now, and the caller walks again.
fn verify_ours(path: &Path, root: OwnedFd, mount_id: Option<u64>) -> Result<Option<StateDir>> {
    let fs = crate::fs_type::of_fd(root.as_fd());
    let refuse = |why: String| {
        not_ours(
            path,
            &format!(
                "is a mount idoverlay did not make ({why}); give an empty directory or a new path"
            ),
        )
    };
    if fs != "tmpfs" {
        return Err(refuse(format!("{} {fs} mount", crate::error::a_or_an(&fs))));
    }
    let marker_st = sys::stat_nofollow(root.as_fd(), Path::new(MARKER))
        .map_err(|_| refuse(format!("a tmpfs without {MARKER}")))?;
    if marker_st.uid != 0 || marker_st.mode & 0o077 != 0 {
        return Err(refuse(format!("{MARKER} is not root's alone")));
    }
    let bytes = crate::file::read_small(root.as_fd(), Path::new(MARKER), 4096, false)
        .map_err(|e| refuse(format!("{MARKER} {}", e.reason())))?;
    let marker: Marker = serde_json::from_slice(&bytes)
        .map_err(|_| refuse(format!("{MARKER} is not idoverlay's")))?;
    if marker.format != MARKER_FORMAT || marker.version != MARKER_VERSION {
        return Err(refuse(format!(
            "{MARKER} is format {:?} version {}, not {MARKER_FORMAT:?} {MARKER_VERSION}",
            marker.format, marker.version
        )));
    }
    // Attaching made it shared when its parent mount is: made private
    // right after, but a process killed in between leaves it shared, and
    // staged mounts below it would propagate. So every open of a final one
    // makes sure. A provisional one is only read or waited for (nothing is
    // staged in it but by its maker, who made it private), and its maker
    // may be detaching it this very moment: making it private then fails
    // (EINVAL, it is no longer mounted) and would fail a call that only had
    // to wait and look again. One adopted from a killed maker is final when
    // the waiter looks again, and made private then.
    let provisional = is_provisional(marker_st.mode);
    if !provisional {
        match sys::make_mount_private(root.as_fd()) {
            Ok(()) => {}
            // Not mounted (any more): EINVAL is mount_setattr's answer
            // for a detached mount.
            Err(e) if e.errno == libc::EINVAL => return Ok(None),
            Err(e) => return Err(Error::os("make state tmpfs private", Some(path), e)),
        }
    }
    Ok(Some(StateDir {
        path: path.to_path_buf(),
        fd: root,
        mount_id,
        provisional,
        made: std::sync::Mutex::new(None),
    }))
}

/// A state tmpfs [`mount_state_tmpfs`] attached.
enum Attached {
    Final(StateDir),
    /// With its marker, open and locked.
    Provisional(StateDir, sys::Locked),
}

/// Mounts a small private tmpfs (0700, nosuid, nodev, noexec) over the
/// (empty) state dir, with the marker written before it is attached. It
/// stays (it is idoverlay's), unless it is provisional and its maker takes
/// it away again: then the marker is attached locked, so that whoever finds
/// it waits for its maker. Staged mounts below it propagate nowhere, and
/// staging never shares a filesystem with data.
fn mount_state_tmpfs(path: &Path, leaf: BorrowedFd<'_>, making: Making) -> Result<Attached> {
    let ctx = sys::fsopen(c"tmpfs").map_err(|e| Error::os("open state tmpfs", None, e))?;
    let tmpfs = sys::fsconfig_set_string(ctx.as_fd(), c"source", c"idoverlay-state")
        .and_then(|()| sys::fsconfig_set_string(ctx.as_fd(), c"mode", c"0700"))
        .and_then(|()| sys::fsconfig_set_string(ctx.as_fd(), c"size", c"4m"))
        .and_then(|()| sys::fsconfig_create(ctx.as_fd()))
        .and_then(|()| {
            sys::fsmount(
                ctx.as_fd(),
                MountAttrs::NOSUID | MountAttrs::NODEV | MountAttrs::NOEXEC,
            )
        })
        .map_err(|e| Error::os("create state tmpfs", Some(path), e))?;
    let marker = serde_json::to_vec(&Marker {
        format: MARKER_FORMAT.into(),
        version: MARKER_VERSION,
    })
    .expect("serializable");
    let mode = match making {
        Making::Provisional => MARKER_PROVISIONAL,
        Making::Final => MARKER_FINAL,
    };
    let marker = sys::create_file(tmpfs.as_fd(), Path::new(MARKER), mode)
        .and_then(|fd| sys::write_all(fd.as_fd(), &marker).map(|()| fd))
        .and_then(|fd| match making {
            // Nobody else can open it yet (the tmpfs is detached).
            Making::Provisional => sys::Locked::try_new(fd, LockMode::Exclusive)
                .map(Some)
                .map_err(|(_, e)| e),
            Making::Final => Ok(None),
        })
        .map_err(|e| Error::os("write the state tmpfs' marker", Some(path), e))?;
    // Onto exactly the directory checked.
    sys::move_mount(tmpfs.as_fd(), leaf, Path::new(""))
        .map_err(|e| Error::os("mount state tmpfs on", Some(path), e))?;
    sys::make_mount_private(tmpfs.as_fd())
        .map_err(|e| Error::os("make state tmpfs private", Some(path), e))?;
    let mount_id = sys::stat_fd(tmpfs.as_fd()).ok().and_then(|st| st.mnt_id);
    let state = StateDir {
        path: path.to_path_buf(),
        fd: tmpfs,
        mount_id,
        provisional: false,
        made: std::sync::Mutex::new(None),
    };
    Ok(match marker {
        Some(marker) => Attached::Provisional(state, marker),
        None => Attached::Final(state),
    })
}

// ---------------------------------------------------------------------------
// Staging records.

/// What a staging directory's record says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Record {
    /// Always [`RECORD_FORMAT`].
    pub format: String,
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// The staging directory's name inside the state dir.
    pub id: String,
    /// The process that staged (for reports; liveness is the lock).
    pub pid: u32,
    /// Its start time (clock ticks since boot, /proc/PID/stat field 22).
    pub start_time: u64,
    /// Seconds since the epoch when it was created.
    pub created: u64,
    /// Every name inside the staging dir that may carry a staged mount,
    /// listed before it is attached.
    pub mounts: Vec<String>,
}

impl Record {
    /// The record's file name.
    pub fn file_name(id: &str) -> String {
        format!("{id}.json")
    }

    /// Parses a record read from `<id>.json`; `None` unless it is a
    /// current-format record naming `id`.
    pub fn parse(bytes: &[u8], id: &str) -> Option<Record> {
        let record: Record = serde_json::from_slice(bytes).ok()?;
        let valid = record.format == RECORD_FORMAT
            && record.version == RECORD_VERSION
            && record.id == id
            && record.mounts.iter().all(|m| is_mount_name(m));
        valid.then_some(record)
    }
}

/// Whether `name` is a staging id idoverlay makes: `<pid hex>-<random hex>`.
pub(crate) fn is_staging_id(name: &[u8]) -> bool {
    let Some(dash) = name.iter().position(|b| *b == b'-') else {
        return false;
    };
    let hex = |s: &[u8]| {
        !s.is_empty() && s.len() <= 16 && s.iter().all(|b| b"0123456789abcdef".contains(b))
    };
    hex(&name[..dash]) && hex(&name[dash + 1..])
}

/// Whether `name` is a staged mount point name idoverlay makes: a number
/// (a layer clone), `u` (the upper/work clone) or `o` (the overlay).
pub(crate) fn is_mount_name(name: &str) -> bool {
    name == "u"
        || name == "o"
        || (!name.is_empty() && name.len() <= 6 && name.bytes().all(|b| b.is_ascii_digit()))
}

/// A record being written by its assembly: locked until dropped.
#[derive(Debug)]
pub(crate) struct LiveRecord {
    /// Open and locked (`flock`) for as long as the assembly runs.
    fd: sys::Locked,
    pub record: Record,
}

impl LiveRecord {
    /// Writes, locks and publishes the record of a new staging `id`.
    pub fn create(state: &StateDir, id: &str, mounts: Vec<String>) -> Result<LiveRecord> {
        let pid = std::process::id();
        let record = Record {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            id: id.to_string(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            mounts,
        };
        let fd = publish(state, &record)?;
        Ok(LiveRecord { fd, record })
    }

    /// Makes sure the record lists `name` before it is attached.
    pub fn ensure(&mut self, state: &StateDir, name: &str) -> Result<()> {
        if self.record.mounts.iter().any(|m| m == name) {
            return Ok(());
        }
        self.record.mounts.push(name.to_string());
        // The new copy is locked before it replaces the old one, whose lock
        // is let go only then: the record is never seen unlocked.
        let fd = publish(state, &self.record)?;
        self.fd = fd;
        Ok(())
    }

    /// Removes the record (its staging is gone) and lets go of the lock.
    pub fn remove(self, state: &StateDir) -> Result<()> {
        sys::unlink(
            state.fd.as_fd(),
            Path::new(&Record::file_name(&self.record.id)),
        )
        .map_err(|e| {
            Error::from(crate::error::Repr::Cleanup {
                detail: "removing the staging record failed".into(),
                path: state.join(&self.record.id),
                source: Some(e),
            })
        })
    }
}

/// Writes `record` in place of its earlier copy, all at once; returns it
/// locked (see [`write_atomically`]).
fn publish(state: &StateDir, record: &Record) -> Result<sys::Locked> {
    let bytes = serde_json::to_vec(record).expect("serializable");
    write_atomically(state.fd.as_fd(), &Record::file_name(&record.id), &bytes)
        .map_err(|e| Error::os("write staging record in", Some(&state.path), e))
}

/// The subdirectory `name` of the state tmpfs (root-only), made when
/// missing; opened beneath the state dir, never through a symlink.
pub(crate) fn subdir(state: &StateDir, name: &str) -> sys::SysResult<OwnedFd> {
    match sys::mkdir(state.fd.as_fd(), Path::new(name), 0o700) {
        Ok(()) => {}
        Err(e) if e.errno == libc::EEXIST => {}
        Err(e) => return Err(e),
    }
    sys::open_dir_beneath(state.fd.as_fd(), Path::new(name))
}

/// Writes `bytes` as `name` in `dir` all at once, so that a reader sees the
/// old file or the new one, never half of one, and no kill leaves a file
/// that gc cannot tell from a live writer's: the file is written and
/// locked (`LOCK_EX`, returned) while it has no name (`O_TMPFILE`), then
/// linked as `name`; a `name` that exists is replaced through a temporary
/// name ([`temp_name`]) renamed over it. So every name of it is whole, and
/// a temporary one that nobody holds locked is a killed writer's.
pub(crate) fn write_atomically(
    dir: BorrowedFd<'_>,
    name: &str,
    bytes: &[u8],
) -> sys::SysResult<sys::Locked> {
    let fd = sys::create_unnamed_file(dir, 0o600)?;
    // It has no name: nobody else can hold a lock on it.
    let fd = sys::Locked::try_new(fd, LockMode::Exclusive).map_err(|(_, e)| e)?;
    sys::write_all(fd.as_fd(), bytes)?;
    match name_unnamed(fd.as_fd(), dir, Path::new(name)) {
        Err(e) if e.errno == libc::EEXIST => {}
        named => return named.map(|()| fd),
    }
    let temp = temp_name(name);
    name_unnamed(fd.as_fd(), dir, Path::new(&temp))?;
    match sys::rename(dir, Path::new(&temp), Path::new(name)) {
        Ok(()) => Ok(fd),
        Err(e) => {
            let _ = sys::unlink(dir, Path::new(&temp));
            Err(e)
        }
    }
}

/// The temporary name [`write_atomically`] gives a file that replaces
/// `name`: `.NAME.HEX.tmp`, with a random part nobody guesses.
pub(crate) fn temp_name(name: &str) -> String {
    format!(".{name}.{:x}.tmp", sys::random_u64() & 0xffff_ffff)
}

/// Links the unnamed file `fd` as `name` in `dir`: by the fd itself
/// (`AT_EMPTY_PATH`), or, where that needs a capability the caller lacks
/// (before 6.10, in a user namespace), through its magic link in a checked
/// `/proc` (never a `/proc` that is not procfs: its `thread-self/fd/N`
/// could name any file).
fn name_unnamed(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &Path) -> sys::SysResult<()> {
    match sys::link_fd(fd, dir, name) {
        Err(e) if e.errno == libc::ENOENT => match crate::procfs::open_root() {
            Ok(Some(proc)) => sys::link_proc_fd(proc.as_fd(), fd, dir, name),
            _ => Err(e),
        },
        linked => linked,
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once (each
/// time in a child forked while it was being read).
pub(crate) fn boot_id() -> Option<String> {
    static BOOT_ID: ProcessLocal<Option<Option<String>>> = ProcessLocal::new(None);
    let read = || {
        let bytes = crate::file::read_small(
            sys::cwd(),
            Path::new("/proc/sys/kernel/random/boot_id"),
            64,
            true,
        )
        .ok()?;
        let id = String::from_utf8(bytes).ok()?.trim().to_string();
        (!id.is_empty() && !id.contains(' ')).then_some(id)
    };
    match BOOT_ID.lock(|_| {}) {
        Some(mut kept) => kept.get_or_insert_with(read).clone(),
        None => read(),
    }
}

/// A process's start time (clock ticks since boot), to tell a pid's
/// current process from an earlier one in reports.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = crate::procfs::read(&format!("{pid}/stat"), 4096)?;
    let stat = String::from_utf8(stat).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// A fresh staging id: `<pid hex>-<random hex>`, never reused.
pub(crate) fn new_staging_id() -> String {
    format!(
        "{:x}-{:08x}",
        std::process::id(),
        sys::random_u64() & 0xffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_idoverlay_makes_and_nothing_else() {
        assert!(is_staging_id(b"1a2b-00ff00ff"));
        assert!(!is_staging_id(b"1a2b"));
        assert!(!is_staging_id(b"-00ff"));
        assert!(!is_staging_id(b"1A2B-00ff"));
        assert!(!is_staging_id(b"config"));
        assert!(!is_staging_id(b"1a2b-00ff.json"));
        for ok in ["0", "12", "u", "o"] {
            assert!(is_mount_name(ok), "{ok}");
        }
        for bad in ["", "x", "..", "0/1", "1234567", "U"] {
            assert!(!is_mount_name(bad), "{bad}");
        }
    }

    #[test]
    fn records_parse_only_in_the_current_format_for_their_own_id() {
        let r = Record {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            id: "1-2".into(),
            pid: 1,
            start_time: 1,
            created: 0,
            mounts: vec!["0".into(), "u".into()],
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(Record::parse(&bytes, "1-2"), Some(r.clone()));
        assert_eq!(Record::parse(&bytes, "1-3"), None);
        let old = br#"{"version":1,"dir":"1-2","pid":1,"start_time":1,"boot_id":"x","created":0}"#;
        assert_eq!(Record::parse(old, "1-2"), None);
        let mut odd = r;
        odd.mounts.push("../etc".into());
        assert_eq!(
            Record::parse(&serde_json::to_vec(&odd).unwrap(), "1-2"),
            None
        );
    }
    /// Runs `body` on a thread of its own mount namespace (everything in it
    /// private), with a fresh root-only tmpfs directory; skipped without
    /// the right to mount, unless IDOVERLAY_REQUIRE_PRIVILEGED=1.
    fn in_private_mount_ns(name: &str, body: impl FnOnce(&Path) + Send + 'static) {
        let dir =
            std::env::temp_dir().join(format!("idoverlay-unit-{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let scratch = dir.clone();
        let result = std::thread::spawn(move || {
            if let Err(e) = sys::unshare_mount_ns() {
                if std::env::var("IDOVERLAY_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                    panic!("{e}: IDOVERLAY_REQUIRE_PRIVILEGED=1 forbids skipping");
                }
                eprintln!("SKIP: {e} (run as root)");
                return;
            }
            let run = |args: &[&std::ffi::OsStr]| {
                let st = std::process::Command::new("mount").args(args).status();
                assert!(st.unwrap().success(), "mount {args:?}");
            };
            run(&["--make-rprivate".as_ref(), "/".as_ref()]);
            run(&[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "-o".as_ref(),
                "mode=0700".as_ref(),
                "unit".as_ref(),
                scratch.as_os_str(),
            ]);
            body(&scratch);
        })
        .join();
        std::fs::remove_dir(&dir).unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// A provisional tmpfs its maker took away (its assembly refused): a
    /// waiter that opened it before never adopts it (it is detached, and
    /// anyone else holding it must read it as nobody's), and a reader that
    /// opened it before and finds it final (adopted by an earlier build)
    /// finds none there rather than failing to make it private (EINVAL).
    #[test]
    fn a_taken_away_tmpfs_opened_before_is_neither_adopted_nor_an_error() {
        in_private_mount_ns("taken-away", |dir| {
            let path = dir.join("state");
            let maker = StateDir::open_or_create(&path, Making::Provisional).unwrap();
            let opened_before = || {
                let leaf = walk(&path).unwrap().leaf.unwrap();
                let st = check_leaf(&path, &leaf).unwrap();
                (leaf, st)
            };
            let (leaf, st) = opened_before();
            let waiter = verify_ours(&path, leaf, st.mnt_id).unwrap().unwrap();
            assert!(waiter.provisional);
            let (reader, reader_st) = opened_before();
            assert_eq!(
                maker.take_back().unwrap(),
                TakenBack::Detached { dir_removed: true }
            );
            wait_for_maker(&waiter, &lock_wait::Deadline::new()).unwrap();
            let marker = sys::stat_nofollow(waiter.fd.as_fd(), Path::new(MARKER)).unwrap();
            assert!(is_provisional(marker.mode), "adopted: {:o}", marker.mode);
            let fd = sys::open_read(waiter.fd.as_fd(), Path::new(MARKER)).unwrap();
            sys::fchmod(fd.as_fd(), MARKER_FINAL).unwrap();
            let read = verify_ours(&path, reader, reader_st.mnt_id);
            assert!(matches!(read, Ok(None)), "{read:?}");
            assert!(StateDir::open_existing(&path, Use::Read).unwrap().is_none());
        });
    }

    #[test]
    fn a_file_written_atomically_has_a_name_only_once_whole() {
        let dir =
            std::env::temp_dir().join(format!("idoverlay-unit-atomic-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let fd = OwnedFd::from(std::fs::File::open(&dir).unwrap());
        let names = || {
            let mut names = sys::dir_entries(fd.as_fd()).unwrap();
            names.sort();
            names
        };
        // A new name, then the same name replaced: no other name left.
        drop(write_atomically(fd.as_fd(), "r.json", b"first").unwrap());
        assert_eq!(std::fs::read(dir.join("r.json")).unwrap(), b"first");
        let kept = write_atomically(fd.as_fd(), "r.json", b"second").unwrap();
        assert_eq!(std::fs::read(dir.join("r.json")).unwrap(), b"second");
        assert_eq!(names(), ["r.json"]);
        // Returned locked, the lock taken before it had a name.
        let other = sys::open_read_nonblocking(fd.as_fd(), Path::new("r.json"), false).unwrap();
        assert_eq!(sys::try_lock_exclusive(other.as_fd()), Ok(false));
        drop(kept);
        assert_eq!(sys::try_lock_exclusive(other.as_fd()), Ok(true));
        // The way without `CAP_DAC_READ_SEARCH` (before 6.10, in a user
        // namespace): through /proc's magic link.
        let unnamed = sys::create_unnamed_file(fd.as_fd(), 0o600).unwrap();
        sys::write_all(unnamed.as_fd(), b"by proc").unwrap();
        let proc = crate::procfs::open_root().unwrap().unwrap();
        sys::link_proc_fd(proc.as_fd(), unnamed.as_fd(), fd.as_fd(), Path::new("p")).unwrap();
        assert_eq!(std::fs::read(dir.join("p")).unwrap(), b"by proc");
        let taken = sys::link_proc_fd(proc.as_fd(), unnamed.as_fd(), fd.as_fd(), Path::new("p"));
        assert_eq!(taken.map_err(|e| e.errno), Err(libc::EEXIST));
        for name in names() {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        std::fs::remove_dir(&dir).unwrap();
    }
}
