//! User namespaces: the object an idmapped mount takes its mapping from.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use crate::error::{Error, Result};
use crate::idmap::IdMap;
use crate::process_local::ProcessLocal;
use crate::sys;

/// What to do without `CAP_SYS_ADMIN`.
pub(crate) const CAP_SYS_ADMIN_HINT: &str = "run as root; the layers of a host filesystem can be \
     idmapped only with CAP_SYS_ADMIN in the initial user namespace (in a user namespace, only \
     filesystems that namespace mounted itself)";

/// Whether the calling thread is in the initial user namespace (the
/// kernel gives that one a fixed inode number, `PROC_USER_INIT_INO`).
pub(crate) fn in_initial_user_namespace() -> bool {
    const PROC_USER_INIT_INO: u64 = 0xEFFF_FFFD;
    sys::open_read(sys::cwd(), Path::new("/proc/thread-self/ns/user"))
        .and_then(|fd| sys::stat_fd(fd.as_fd()))
        .map_or(true, |st| st.ino == PROC_USER_INIT_INO)
}

/// A user namespace held open by an fd; the fd alone keeps it alive.
///
/// Made from a pair of maps (a short-lived helper process is cloned into a
/// new user namespace, its maps are written, its namespace opened, and the
/// helper is killed and reaped before this returns, on every path), or
/// opened from a namespace file such as `/proc/PID/ns/user`.
///
/// ```no_run
/// use idoverlay::{IdMap, UserNamespace};
/// let map: IdMap = "0:100000:65536".parse()?;
/// let ns = UserNamespace::from_maps(&map, &map)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct UserNamespace {
    fd: OwnedFd,
    origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Maps {
        uid: IdMap,
        gid: IdMap,
    },
    /// Opened from a file; its maps when they could be read (a
    /// `/proc/PID/ns/user` whose process's maps name this namespace).
    File {
        path: PathBuf,
        maps: Option<(IdMap, IdMap)>,
    },
}

impl UserNamespace {
    /// A new user namespace with these maps (on-disk id → host id).
    pub fn from_maps(uid_map: &IdMap, gid_map: &IdMap) -> Result<Self> {
        let child = sys::spawn_userns_child().map_err(|e| {
            let hint = if e.errno == libc::EPERM || e.errno == libc::ENOSPC {
                "creating a user namespace needs CAP_SYS_ADMIN (or unprivileged user namespaces) and user.max_user_namespaces > 0"
            } else {
                "the kernel refused to create a user namespace"
            };
            Error::os("create a user namespace", None, e).with_hint(hint)
        })?;
        // `child` is killed and reaped when dropped, whichever way we leave.
        let pid = child
            .pid_in_proc()
            .map_err(|e| Error::os("find the user namespace helper in /proc", None, e))?
            .ok_or_else(|| {
                Error::os(
                    "find the user namespace helper in /proc",
                    Some(Path::new("/proc")),
                    sys::SysError {
                        syscall: "open",
                        args: "/proc/PID of the helper (not in this /proc)".into(),
                        errno: libc::ESRCH,
                    },
                )
                .with_hint(
                    "this /proc belongs to another pid namespace and does not show this \
                     process's children: mount a /proc of this pid namespace, or give an \
                     existing user namespace",
                )
            })?;
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        write_map(&proc_dir.join("uid_map"), uid_map, "uid map")?;
        write_map(&proc_dir.join("gid_map"), gid_map, "gid map")?;
        let ns_path = proc_dir.join("ns/user");
        let fd = sys::open_read(sys::cwd(), &ns_path)
            .map_err(|e| Error::os("open the new user namespace", Some(&ns_path), e))?;
        drop(child);
        Ok(UserNamespace {
            fd,
            origin: Origin::Maps {
                uid: uid_map.clone(),
                gid: gid_map.clone(),
            },
        })
    }

    /// A user namespace with these maps, shared with every other caller
    /// that holds one for the same maps.
    ///
    /// Creating a namespace costs a helper process (about 0.15 ms); a
    /// burst of assemblies with one container's maps needs only one. The
    /// process-wide cache holds namespaces weakly: a namespace
    /// lives while someone holds the returned `Arc` (or an overlay being
    /// assembled with it) and is dropped with the last holder, so nothing is
    /// pinned for a map no one uses any more. Mounts already made keep their
    /// own kernel reference and do not need it.
    ///
    /// ```no_run
    /// use idoverlay::{IdMap, UserNamespace};
    /// let map: IdMap = "0:100000:65536".parse()?;
    /// let a = UserNamespace::shared(&map, &map)?;
    /// let b = UserNamespace::shared(&map, &map)?; // the same namespace, no new process
    /// assert!(std::sync::Arc::ptr_eq(&a, &b));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shared(uid_map: &IdMap, gid_map: &IdMap) -> Result<Arc<Self>> {
        type Cache = BTreeMap<(String, String), Weak<UserNamespace>>;
        static CACHE: ProcessLocal<Cache> = ProcessLocal::new(BTreeMap::new());
        let key = (uid_map.to_string(), gid_map.to_string());
        // The lock is held while a namespace is made so that a burst of
        // threads asking for the same maps makes exactly one. A child forked
        // meanwhile cannot take it: it makes its own namespace, unshared.
        let Some(mut cache) = CACHE.lock(|_| {}) else {
            return Self::from_maps(uid_map, gid_map).map(Arc::new);
        };
        if let Some(ns) = cache.get(&key).and_then(Weak::upgrade) {
            return Ok(ns);
        }
        cache.retain(|_, ns| ns.strong_count() > 0);
        let ns = Arc::new(Self::from_maps(uid_map, gid_map)?);
        cache.insert(key, Arc::downgrade(&ns));
        Ok(ns)
    }

    /// The user namespace behind a namespace file, e.g. `/proc/PID/ns/user`
    /// or a bind-mounted namespace.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let opened =
            crate::file::open_checked(sys::cwd(), path, true, crate::file::Kind::Namespace);
        let fd = opened.map(|(fd, _)| fd).map_err(|e| {
            let e = match e {
                crate::file::Unreadable::Os(e) => e,
                other => {
                    return Error::invalid_path(
                        "user namespace",
                        path,
                        format!(
                            "{}; give /proc/PID/ns/user",
                            other.reason_wanting("a namespace file")
                        ),
                    )
                }
            };
            if matches!(e.errno, libc::EACCES | libc::EPERM) {
                return Error::from(crate::error::Repr::Permission {
                    what: format!(
                        "opening user namespace {}",
                        crate::error::display_path(path)
                    ),
                    needs: "read access to it".into(),
                    hint: "run as root".into(),
                    path: Some(path.to_path_buf()),
                    source: Some(e),
                });
            }
            let reason = match e.errno {
                libc::ENOENT => "does not exist".to_string(),
                _ => format!("cannot be opened: {e}"),
            };
            Error::from(crate::error::Repr::InvalidInput {
                what: "user namespace".into(),
                input: crate::error::display_path(path),
                reason: format!("{reason}; give /proc/PID/ns/user of a process in the namespace"),
                path: Some(path.to_path_buf()),
                source: Some(e),
            })
        })?;
        match sys::namespace_type(fd.as_fd()) {
            Ok(t) if t == sys::CLONE_NEWUSER => {}
            Ok(_) => {
                return Err(Error::invalid_path(
                    "user namespace",
                    path,
                    "is a namespace, but not a user namespace; give /proc/PID/ns/user",
                ))
            }
            Err(e) => {
                return Err(Error::from(crate::error::Repr::InvalidInput {
                    what: "user namespace".into(),
                    input: crate::error::display_path(path),
                    reason: "is not a namespace file; give /proc/PID/ns/user".into(),
                    path: Some(path.to_path_buf()),
                    source: Some(e),
                }))
            }
        }
        // The caller's own user namespace maps every id to itself: an
        // idmapped mount through it is refused by the kernel and would mean
        // nothing anyway.
        let own = sys::open_read(sys::cwd(), Path::new("/proc/thread-self/ns/user"))
            .and_then(|own| sys::stat_fd(own.as_fd()));
        let this = sys::stat_fd(fd.as_fd());
        if let (Ok(own), Ok(this)) = (own, this) {
            if own.same_inode(&this) {
                return Err(Error::invalid_path(
                    "user namespace",
                    path,
                    "is this process's own user namespace, which maps nothing;",
                )
                .with_advice(crate::Advice::GiveContainerUserns));
            }
        }
        let maps = maps_of_proc_ns_file(path, fd.as_fd());
        Ok(UserNamespace {
            fd,
            origin: Origin::File {
                path: path.to_path_buf(),
                maps,
            },
        })
    }

    /// The user namespace of a running process.
    pub fn from_pid(pid: u32) -> Result<Self> {
        let ns = Self::open(format!("/proc/{pid}/ns/user"))?;
        // A namespace whose maps are not both written yet cannot idmap
        // anything (an unmapped gid shows as the overflow gid, and writes
        // fail). Opening read them already, bounded, and checked that they
        // are this namespace's.
        if ns.uid_map().is_none() {
            return Err(Error::invalid(
                "user namespace",
                format!("/proc/{pid}/ns/user"),
                "has no uid and gid maps (yet), or its process exited; write both maps first",
            )
            .with_advice(crate::Advice::GiveIdMapsInstead));
        }
        Ok(ns)
    }

    /// The uid map, when known: made from maps, or opened as
    /// `/proc/PID/ns/user` of a process whose maps could be read.
    pub fn uid_map(&self) -> Option<&IdMap> {
        match &self.origin {
            Origin::Maps { uid, .. } => Some(uid),
            Origin::File { maps, .. } => maps.as_ref().map(|(uid, _)| uid),
        }
    }

    /// The gid map, when known (see [`Self::uid_map`]).
    pub fn gid_map(&self) -> Option<&IdMap> {
        match &self.origin {
            Origin::Maps { gid, .. } => Some(gid),
            Origin::File { maps, .. } => maps.as_ref().map(|(_, gid)| gid),
        }
    }

    /// The namespace file it was opened from, when it was.
    pub fn file(&self) -> Option<&Path> {
        match &self.origin {
            Origin::File { path, .. } => Some(path),
            Origin::Maps { .. } => None,
        }
    }

    /// A short description: the maps, or the file it was opened from.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::Maps { uid, gid } => format!("uidmap {uid}, gidmap {gid}"),
            Origin::File { path, .. } => format!("user namespace {}", path.display()),
        }
    }
}

impl AsFd for UserNamespace {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The maps of the namespace `ns` opened from `path`, when `path` is
/// `/proc/PID/ns/user` and that process's maps are of this very namespace
/// (checked by inode after reading them: a process that exits meanwhile,
/// its pid taken by another, reads as unknown).
fn maps_of_proc_ns_file(path: &Path, ns: BorrowedFd<'_>) -> Option<(IdMap, IdMap)> {
    let pid = path
        .to_str()?
        .strip_prefix("/proc/")?
        .strip_suffix("/ns/user")?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let read = |name: &str| -> Option<IdMap> {
        let bytes = crate::file::read_small(
            sys::cwd(),
            Path::new(&format!("/proc/{pid}/{name}")),
            64 * 1024,
            true,
        )
        .ok()?;
        parse_proc_map(std::str::from_utf8(&bytes).ok()?)
    };
    let maps = (read("uid_map")?, read("gid_map")?);
    let same = crate::file::open_checked(sys::cwd(), path, true, crate::file::Kind::Namespace)
        .ok()
        .zip(sys::stat_fd(ns).ok())
        .is_some_and(|((_, again), ns)| again.same_inode(&ns));
    same.then_some(maps)
}

/// `/proc/PID/uid_map` text (`inside outside count` lines) as a map.
fn parse_proc_map(text: &str) -> Option<IdMap> {
    let mut ranges = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_ascii_whitespace().map(str::parse::<u32>);
        let (Some(Ok(container)), Some(Ok(host)), Some(Ok(size)), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        ranges.push(crate::idmap::IdRange {
            container,
            host,
            size,
        });
    }
    IdMap::new(ranges).ok()
}

fn write_map(file: &Path, map: &IdMap, what: &str) -> Result<()> {
    let fd = sys::open_write(file).map_err(|e| Error::os("open", Some(file), e))?;
    sys::write_all(fd.as_fd(), map.to_proc_format().as_bytes()).map_err(|e| {
        if e.errno == libc::EPERM {
            let hint = if in_initial_user_namespace() {
                "run as root"
            } else {
                "this process runs in a user namespace: every host id the map names must be \
                 mapped in it (see /proc/self/uid_map), or run as root on the host"
            };
            return Error::from(crate::error::Repr::Permission {
                what: format!("writing the {what} {map}"),
                needs: "CAP_SETUID and CAP_SETGID over every host id it names".into(),
                hint: hint.into(),
                path: Some(file.to_path_buf()),
                source: Some(e),
            });
        }
        Error::from(crate::error::Repr::InvalidInput {
            what: what.into(),
            input: map.to_string(),
            reason: format!("the kernel refused the map ({e})"),
            path: None,
            source: Some(e),
        })
    })
}
