//! Assemble overlayfs mounts from idmapped layers, without a temporary
//! mount ever entering a mount tree.
//!
//! A container runtime that runs a container in a user namespace must show
//! the image's layers (files owned by 0, 1000, … on disk) as owned by the
//! container's host ids (100000, 101000, …). idoverlay clones each layer
//! with `open_tree(OPEN_TREE_CLONE)`, idmaps the clone with
//! `mount_setattr(MOUNT_ATTR_IDMAP)` and names the layers to overlayfs
//! inside that detached clone (a layer that shares none is handed over as
//! a file descriptor, `fsconfig(FSCONFIG_SET_FD, "lowerdir+")`). On kernels
//! without detached layers it falls back to strategies that still never
//! put a layer at risk (see [`Strategy`]).
//!
//! ```no_run
//! use idoverlay::{IdMap, Overlay};
//!
//! let map: IdMap = "0:100000:65536".parse()?;
//! let mount = Overlay::new()
//!     .lower("/var/lib/images/app/layers/3") // top-most first, like lowerdir=
//!     .lower("/var/lib/images/app/layers/2")
//!     .lower("/var/lib/images/app/layers/1")
//!     .upper("/var/lib/containers/c1/upper")
//!     .work("/var/lib/containers/c1/work")
//!     .idmap(map.clone(), map)
//!     .assemble()?;                          // a detached overlay: nothing attached yet
//! mount.attach("/run/containers/c1/rootfs")?; // or keep mount's fd and attach it elsewhere
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Threads
//!
//! idoverlay may start short-lived threads of its own, all named
//! `idoverlay-…`, and none outlives its use by more than about a second:
//!
//! * a single-threaded caller (or a thread that unshared `CLONE_FS`) that
//!   mounts with the detached strategy stays single-threaded: the layers
//!   are named from its own working directory, lent for one `mount(2)`
//!   with every signal blocked, and given back;
//! * a thread that shares its working directory with others mounts from
//!   a thread of idoverlay's (`idoverlay-mount`, `idoverlay-assemble`),
//!   and the layer clones are closed afterwards by `idoverlay-reap`, which
//!   ends after 1 s without work (closing one waits for an RCU grace
//!   period the caller need not wait for: at 500 layers the mount's median
//!   was 1.11–1.19x a plain overlay's with it, 1.26–1.41x without);
//! * the staged strategies and [`probe::probe`] work on a thread of their
//!   own that ends with the call; private-ns keeps one fd open from its
//!   first assembly on: its staging mount namespace, made once per process
//!   (copying the mount table once, not per mount).
//!
//! Call [`settle`] before anything that needs a single-threaded process
//! again (`unshare(CLONE_NEWUSER)`); it also closes that fd.
#![deny(missing_docs)]
// Unsafe code lives in the syscall module alone (`sys`), which is allowed it.
#![deny(unsafe_code)]
mod choose;
mod creds;
mod cwd;
mod error;
mod file;
mod fs_type;
pub mod gc;
pub mod idmap;
mod layer;
mod lock_wait;
mod mistakes;
mod mountinfo;
mod options;
mod overlayfs;
mod path;
pub mod probe;
mod probe_cache;
mod process_local;
mod procfs;
mod reaper;
pub mod records;
mod report;
mod state;
mod strategy;
#[allow(unsafe_code)]
mod sys;
mod threads;
mod userns;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::{Advice, Error, ErrorKind, Result};
pub use idmap::{IdMap, IdRange};
pub use kernel_compat::{Feature, KernelVersion};
pub use options::{MountOptions, OverlayParam};
pub use reaper::settle;
pub use strategy::{Strategy, Trace};
pub use sys::MountAttrs;
pub use userns::UserNamespace;

use layer::MAX_LAYERS;
use strategy::Request;

/// An idmapped overlay to assemble: layers, upper and work, options, the
/// user namespace whose maps the layers get, and the strategy.
///
/// Built with chained calls, then [`Overlay::assemble`] (a detached mount)
/// or [`Overlay::mount`] (assembled and attached in one go). Holds no fds
/// until assembled; one `Overlay` may be assembled many times, from many
/// threads.
#[derive(Clone, Default)]
pub struct Overlay {
    lowers: Vec<PathBuf>,
    data_lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    idmap_upper: bool,
    params: Vec<OverlayParam>,
    attrs: MountAttrs,
    userns: Option<Arc<UserNamespace>>,
    maps: Option<(IdMap, IdMap)>,
    strategy: Strategy,
    trace: Option<Trace>,
    pretend_missing: Vec<Feature>,
    state_dir: Option<PathBuf>,
    per_layer_clones: bool,
    probe_report: Option<Arc<probe::ProbeReport>>,
    probe_for_boot: bool,
    chown_upper: bool,
    keep_record: bool,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("lowers", &self.lowers)
            .field("data_lowers", &self.data_lowers)
            .field("upper", &self.upper)
            .field("work", &self.work)
            .field("idmap_upper", &self.idmap_upper)
            .field("params", &self.params)
            .field("attrs", &self.attrs)
            .field("userns", &self.userns)
            .field("maps", &self.maps)
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

impl Overlay {
    /// An empty description; add at least one lower layer and a user namespace.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a lower layer below those already added (the first one added is
    /// the top-most, as in overlay's `lowerdir=`). Paths must be absolute.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn lower(mut self, path: impl Into<PathBuf>) -> Self {
        self.lowers.push(path.into());
        self
    }

    /// Adds several lower layers, top-most first.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn lowers<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.lowers.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Adds a data-only lower layer (`datadir+`, kernel 6.7+; needs
    /// `metacopy=on` and redirects in the regular layers).
    #[must_use = "the builder returns the changed Overlay"]
    pub fn data_lower(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_lowers.push(path.into());
        self
    }

    /// The upper layer, where writes land. Needs [`Overlay::work`] too.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn upper(mut self, path: impl Into<PathBuf>) -> Self {
        self.upper = Some(path.into());
        self
    }

    /// The work directory: empty, on the same mount as the upper layer.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn work(mut self, path: impl Into<PathBuf>) -> Self {
        self.work = Some(path.into());
        self
    }

    /// Also idmap the upper and work directories (through one clone of a
    /// directory above both), so that writes land on disk in container ids.
    /// Off by default: the upper layer is used as it is.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn idmap_upper(mut self, on: bool) -> Self {
        self.idmap_upper = on;
        self
    }

    /// Gives an empty upper dir's root to container root (the host ids
    /// container root maps to, or on-disk 0 with [`Overlay::idmap_upper`])
    /// before the overlay is made, as containerd's snapshotter does: else
    /// an upper made by host root shows as nobody inside the container,
    /// where even root cannot create a file in `/`. An upper owned so
    /// already is left as it is; one that holds anything is refused rather
    /// than changed. Off by default; when off, such an upper gets a
    /// warning ([`Mounted::warnings`]).
    #[must_use = "the builder returns the changed Overlay"]
    pub fn chown_upper(mut self, on: bool) -> Self {
        self.chown_upper = on;
        self
    }

    /// Keeps a record of the mount in the state dir once it is attached
    /// (see [`records`]), for `idoverlay show` and `idoverlay list`: the
    /// real paths of its layers, upper and work, its maps and strategy,
    /// keyed by the kernel's id for the mount. Creates the state dir's
    /// tmpfs when needed. Off by default; the command line tool turns it on.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn keep_record(mut self, on: bool) -> Self {
        self.keep_record = on;
        self
    }

    /// Adds an overlay parameter passed to the kernel as is
    /// (`index`, `redirect_dir`, `metacopy`, `userxattr`, `xino`, `volatile`, …).
    /// Layer keys (`lowerdir+`, `upperdir`, `workdir`, …), map keys and
    /// `source` are refused when the overlay is assembled: layers come from
    /// [`Overlay::lower`] and the like, so each is checked and idmapped.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn param(mut self, key: impl Into<String>, value: Option<&str>) -> Self {
        self.params.push(OverlayParam {
            key: key.into(),
            value: value.map(str::to_string),
        });
        self
    }

    /// Adds options from a mount-style string: mount flags (`ro`, `nosuid`,
    /// `nodev`, `noexec`, `noatime`, …) become mount attributes, the rest
    /// are overlay parameters. Layer and map keys are refused here.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn options(mut self, options: &str) -> Result<Self> {
        let (params, attrs) = options::parse_overlay_options(options)?;
        self.params.extend(params);
        self.attrs |= attrs;
        Ok(self)
    }

    /// Sets the overlay mount's attributes (read-only, nosuid, …).
    #[must_use = "the builder returns the changed Overlay"]
    pub fn mount_attrs(mut self, attrs: MountAttrs) -> Self {
        self.attrs = attrs;
        self
    }

    /// Makes the overlay read-only (superblock and mount).
    #[must_use = "the builder returns the changed Overlay"]
    pub fn read_only(mut self, on: bool) -> Self {
        self.attrs.set(MountAttrs::READ_ONLY, on);
        self
    }

    /// Idmaps the layers through this user namespace.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn userns(mut self, userns: impl Into<Arc<UserNamespace>>) -> Self {
        self.userns = Some(userns.into());
        self.maps = None;
        self
    }

    /// Idmaps the layers through a user namespace with these maps (on-disk
    /// id → host id), made when the overlay is assembled, or shared with
    /// assemblies running at the same time with the same maps (see
    /// [`UserNamespace::shared`]).
    #[must_use = "the builder returns the changed Overlay"]
    pub fn idmap(mut self, uid_map: IdMap, gid_map: IdMap) -> Self {
        self.maps = Some((uid_map, gid_map));
        self.userns = None;
        self
    }

    /// Chooses the strategy; [`Strategy::Auto`] (the default) asks the kernel.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Where `host-staged` keeps its staging (default `/run/idoverlay`):
    /// created root-owned 0700 if missing, never under a world-writable
    /// directory. Also where the mount's record and the boot's probe
    /// report are kept ([`Overlay::keep_record`],
    /// [`Overlay::keep_probe_for_boot`]). One given here that idoverlay
    /// cannot use is refused before anything is made, whatever the
    /// strategy; the default one only costs the record (a warning).
    #[must_use = "the builder returns the changed Overlay"]
    pub fn state_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(path.into());
        self
    }

    /// Clones every layer on its own instead of sharing one clone of a
    /// common parent directory among layers on one mount. Slower with many
    /// layers; for comparison and benchmarks.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn per_layer_clones(mut self, on: bool) -> Self {
        self.per_layer_clones = on;
        self
    }

    /// Chooses and checks the strategy against this report (e.g. one saved
    /// with `idoverlay probe --json` and [`probe::ProbeReport::load`]) instead
    /// of probing: for callers that probe once and mount many times.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn probe_report(mut self, report: Arc<probe::ProbeReport>) -> Self {
        self.probe_report = Some(report);
        self
    }

    /// Keeps the probe's report in the state dir for the rest of the boot
    /// (see [`Overlay::state_dir`]), and uses the one kept there: for a
    /// program that is a new process for every mount, as the command line
    /// tool is (in one process, the report is kept anyway). The first
    /// successful assembly of a boot probes and writes it, creating the
    /// state dir's tmpfs; a report of another kernel or boot, or one that
    /// does not parse whole, is probed again. A report given with
    /// [`Overlay::probe_report`] is used instead of the kept one. The
    /// staging namespace of [`Strategy::PrivateNs`] is then kept for the
    /// boot too (in either case), so that a new process does not copy the
    /// node's mount table to make one.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn keep_probe_for_boot(mut self, on: bool) -> Self {
        self.probe_for_boot = on;
        self
    }

    /// Treats `feature` as missing even if the kernel has it: forces the
    /// code paths of older kernels (as libpathrs forces ENOSYS), for tests
    /// and for comparing strategies on one machine.
    #[must_use = "the builder returns the changed Overlay"]
    pub fn pretend_missing(mut self, feature: Feature) -> Self {
        self.pretend_missing.push(feature);
        self
    }

    /// Receives one line per step taken (strategy, groups, syscalls), for `-v`.
    ///
    /// It is called in the middle of an assembly: on the calling thread or
    /// on one of idoverlay's own, possibly with every signal blocked, and
    /// for [`Strategy::PrivateNs`] from inside its staging mount namespace,
    /// where the caller's paths do not exist. Hand the line to something
    /// already open (a buffer, a channel, an fd); do not open paths or
    /// block in it.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    /// let sink = lines.clone();
    /// let overlay = idoverlay::Overlay::new()
    ///     .trace(Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_string())));
    /// # let _ = overlay;
    /// ```
    #[must_use = "the builder returns the changed Overlay"]
    pub fn trace(mut self, trace: Trace) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The lower layers, top-most first, then the data-only layers.
    pub fn layers(&self) -> impl Iterator<Item = &Path> {
        self.lowers
            .iter()
            .chain(&self.data_lowers)
            .map(PathBuf::as_path)
    }

    /// Checks the description's shape before anything is opened.
    fn check_shape(&self) -> Result<()> {
        for p in &self.params {
            let shown = match &p.value {
                Some(v) => format!("{}={v}", p.key),
                None => p.key.clone(),
            };
            options::check_param(&p.key, p.value.as_deref(), &shown)?;
        }
        if self.lowers.is_empty() {
            return Err(Error::invalid(
                "layers",
                "(none)",
                "overlay needs at least one lower layer",
            )
            .with_advice(Advice::AddLowerLayer));
        }
        if self.lowers.len() < 2 && self.upper.is_none() {
            // A layer that is no directory at all is what is wrong, not
            // their number: said first (the one open is only for the
            // message; nothing is assembled from it).
            layer::open_dir(&self.lowers[0], layer::Role::Lower)?;
            return Err(Error::invalid(
                "layers",
                self.lowers
                    .iter()
                    .map(|p| p.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(":"),
                "overlay needs at least two lower layers when there is no upper dir; \
                 add a layer, or an upper and work dir",
            )
            .with_advice(Advice::AddUpperAndWork));
        }
        let count = self.lowers.len() + self.data_lowers.len();
        if count > MAX_LAYERS {
            return Err(Error::invalid(
                "layers",
                format!("{count} layers"),
                format!(
                    "overlayfs stacks at most {MAX_LAYERS} lower and data layers (OVL_MAX_STACK); \
                     squash some layers or split the image"
                ),
            ));
        }
        match (&self.upper, &self.work) {
            (Some(_), None) => {
                return Err(Error::invalid(
                    "upper dir",
                    self.upper
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    "needs a work dir too",
                )
                .with_advice(Advice::AddWorkDir))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "work dir",
                    self.work
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    "is only used with an upper dir",
                )
                .with_advice(Advice::AddUpperDir))
            }
            _ => {}
        }
        if self.idmap_upper && self.upper.is_none() {
            return Err(
                Error::invalid("upper idmap", "on", "needs an upper and a work dir")
                    .with_advice(Advice::IdmapUpperNeedsUpperAndWork),
            );
        }
        if self.userns.is_none() && self.maps.is_none() {
            return Err(Error::invalid("id map", "(none)", "").with_advice(Advice::GiveIdMaps));
        }
        Ok(())
    }

    /// Assembles the overlay and returns it detached: it is in no mount
    /// tree until [`DetachedMount::attach`] (or the caller's own
    /// `move_mount`) puts it somewhere. Nothing is changed on disk or in
    /// any mount table when this fails.
    pub fn assemble(&self) -> Result<DetachedMount> {
        self.with_request(None, |req, chosen| self.assemble_with(req, chosen))
    }

    /// Everything before the strategy runs: shape, privilege, user
    /// namespace, probe, choice. Then `run` with the request and strategy.
    fn with_request<T>(
        &self,
        target: Option<&layer::OpenedDir>,
        run: impl FnOnce(&Request<'_>, Strategy) -> Result<T>,
    ) -> Result<T> {
        self.check_shape()?;
        if !crate::creds::has_cap_sys_admin() {
            return Err(Error::permission(
                "assembling an idmapped overlay",
                "CAP_SYS_ADMIN",
                userns::CAP_SYS_ADMIN_HINT,
            ));
        }
        procfs::check()?;
        let kept = std::sync::Mutex::new(strategy::Kept::default());
        let shared_userns;
        let userns: &UserNamespace = match (&self.userns, &self.maps) {
            (Some(ns), _) => ns,
            (None, Some((uid, gid))) => {
                shared_userns = UserNamespace::shared(uid, gid)?;
                &shared_userns
            }
            (None, None) => unreachable!("checked by check_shape"),
        };
        if self.idmap_upper {
            strategy::mounter_ids(userns)?;
        }
        let first_layer = &self.lowers[0];
        let layer_fs = fs_type::of_path(first_layer).unwrap_or_default();
        let state = state::StateDirOnce::new(self.state_dir_or_default());
        // A state dir given that idoverlay will use (for the probe report,
        // the record) but cannot is bad input, refused before anything is
        // made; the default one, which nobody asked for, only warns later.
        // The walk is the one the probe report's read would make.
        if self.state_dir.is_some() && (self.probe_for_boot || self.keep_record) {
            state.existing()?;
        }
        let for_boot = (self.probe_for_boot && self.probe_report.is_none())
            .then(|| probe_cache::load(&state, &layer_fs))
            .flatten();
        let keep_after = self.probe_for_boot && self.probe_report.is_none() && for_boot.is_none();
        let report = match (&self.probe_report, for_boot) {
            (Some(report), _) => report.clone(),
            (None, Some(kept)) => {
                req_trace(self.trace.as_ref(), || {
                    format!("probe report of this boot, from the state dir ({layer_fs})")
                });
                Arc::new(kept)
            }
            (None, None) => probe::cached(first_layer, &layer_fs, Some(userns)),
        };
        let to_keep = keep_after.then(|| report.clone());
        let report = if self.pretend_missing.is_empty() {
            report
        } else {
            Arc::new(choose::with_missing(&report, &self.pretend_missing))
        };
        let chosen = choose::for_request(self.strategy, &report, first_layer, &layer_fs, userns)?;
        let req = Request {
            lowers: &self.lowers,
            data_lowers: &self.data_lowers,
            upper: self.upper.as_deref(),
            work: self.work.as_deref(),
            idmap_upper: self.idmap_upper,
            chown_upper: self.chown_upper,
            per_layer_clones: self.per_layer_clones,
            params: &self.params,
            attrs: self.attrs,
            userns,
            trace: self.trace.as_ref(),
            caps: &report,
            target,
            kept: &kept,
            state: &state,
        };
        req.trace(|| {
            format!(
                "strategy {chosen} (asked: {}; kernel {})",
                self.strategy, report.kernel
            )
        });
        let result = run(&req, chosen).inspect_err(|_| {
            strategy::undo_chown(&req);
            // A state tmpfs this request mounted for its assembly goes
            // again with it: bad input keeps nothing, the state dir
            // included (unless it holds anything else, e.g. staging a
            // failed teardown left for gc).
            let done = match state.take_back() {
                Ok(state::TakenBack::NotMade) => return,
                Ok(state::TakenBack::Detached { dir_removed: true }) => {
                    "detached again, and the state dir it created removed".to_string()
                }
                Ok(state::TakenBack::Detached { dir_removed: false }) => {
                    "detached again".to_string()
                }
                Ok(state::TakenBack::Kept(why)) => format!("kept, final ({why})"),
                Err(e) => format!("kept ({e})"),
            };
            req.trace(|| format!("the state tmpfs this request mounted: {done}"));
        })?;
        // Kept once something was mounted with it: bad input changes
        // nothing, the state dir included.
        if let Some(report) = to_keep {
            if let Err(e) = probe_cache::store(&state, &report) {
                req.trace(|| format!("probe report not kept: {e}"));
            }
        }
        // (Final already, from `assemble_with`; a fast path that staged in
        // it, if ever there is one, is covered too.)
        if let Err(e) = state.make_final() {
            req.trace(|| format!("{e}"));
        }
        Ok(result)
    }

    fn assemble_with(&self, req: &Request<'_>, chosen: Strategy) -> Result<DetachedMount> {
        let mut warnings = Vec::new();
        let fd = match chosen {
            Strategy::Detached => strategy::detached::assemble(req)?,
            Strategy::PrivateNs => strategy::private_ns::assemble(req, self.probe_for_boot)?,
            Strategy::HostStaged => {
                let (fd, left) = strategy::host_staged::assemble(req)?;
                warnings = left;
                fd
            }
            Strategy::Auto => unreachable!("choose::for_request resolves auto"),
        };
        // The overlay exists: a state tmpfs this request mounted for it
        // stays, final, before anything (the attach's record) opens it
        // again.
        if let Err(e) = req.state.make_final() {
            req.trace(|| format!("{e}"));
        }
        let kept = req.take_kept();
        let mut all_warnings = kept.warnings;
        all_warnings.extend(warnings);
        Ok(DetachedMount {
            fd,
            strategy: chosen,
            warnings: all_warnings,
            footprint: kept.footprint,
            pair: kept.pair,
            upper_owner: kept.upper_owner,
            state_dir: self.state_dir_or_default().to_path_buf(),
            description: self.describe(req, &kept.paths, chosen),
            keep_record: self.keep_record,
        })
    }

    /// Assembles the overlay and attaches it at `target` (an existing
    /// directory, not a symlink). The target is checked before anything is
    /// assembled. With the detached strategy the overlay is mounted straight
    /// at the target (one mount(2) naming the layers inside their clones),
    /// which costs about what a plain overlay mount does.
    pub fn mount(&self, target: impl AsRef<Path>) -> Result<Mounted> {
        let target = target.as_ref();
        let opened = open_target(target)?;
        self.check_target_outside_state_dir(&opened)?;
        self.with_request(Some(&opened), |req, chosen| {
            if chosen == Strategy::Detached && !self.per_layer_clones {
                if let Some((mut warnings, checked_root)) =
                    strategy::detached::mount_at(req, opened.fd.as_fd(), target)?
                {
                    let kept = req.take_kept();
                    let mut all = kept.warnings;
                    all.append(&mut warnings);
                    let mut description = self.describe(req, &kept.paths, chosen);
                    description.target = target_path_of(&opened);
                    let mut mounted = Mounted {
                        target: target.to_path_buf(),
                        strategy: chosen,
                        warnings: all,
                        description,
                    };
                    // The overlay just made, as the check after mounting
                    // found it (with an upper), or found now when a record
                    // is to be kept; else its id stays unknown.
                    let root = checked_root.or_else(|| {
                        self.keep_record
                            .then(|| {
                                sys::open_dir_path(sys::cwd(), &mounted.description.target).ok()
                            })
                            .flatten()
                            .filter(|root| {
                                strategy::detached::is_the_overlay_just_mounted(
                                    root.as_fd(),
                                    opened.fd.as_fd(),
                                )
                            })
                    });
                    if let Some(root) = root {
                        record_mount(self.keep_record, req.state, root.as_fd(), &mut mounted);
                    } else if self.keep_record {
                        mounted.warnings.push(format!(
                            "no record of the mount was kept: {} no longer leads to it",
                            error::display_path(target)
                        ));
                    }
                    return Ok(mounted);
                }
            }
            self.assemble_with(req, chosen)?.attach_to_fd(
                opened.fd.as_fd(),
                target,
                strategy::in_use::this_mount_ns_id,
            )
        })
    }

    /// The description of an overlay this request assembled (the target
    /// and mount id are filled in when it is attached).
    fn describe(
        &self,
        req: &Request<'_>,
        paths: &layer::RealPaths,
        chosen: Strategy,
    ) -> records::MountDescription {
        let of = |role| {
            paths
                .layers
                .iter()
                .filter(move |(r, _)| *r == role)
                .map(|(_, p)| p.clone())
                .collect()
        };
        records::MountDescription {
            target: PathBuf::new(),
            layers: of(layer::Role::Lower),
            data_layers: of(layer::Role::Data),
            upper: paths.upper.clone(),
            work: paths.work.clone(),
            uidmap: req.userns.uid_map().cloned(),
            gidmap: req.userns.gid_map().cloned(),
            userns: req.userns.file().map(Path::to_path_buf),
            idmap_upper: self.idmap_upper,
            strategy: chosen,
            mount_id: None,
            unique_mount_id: false,
        }
    }

    /// The state dir host-staged uses and `gc` cleans.
    fn state_dir_or_default(&self) -> &Path {
        self.state_dir
            .as_deref()
            .unwrap_or(Path::new(gc::DEFAULT_STATE_DIR))
    }

    fn check_target_outside_state_dir(&self, target: &layer::OpenedDir) -> Result<()> {
        check_target_outside_state_dir(self.state_dir_or_default(), target)
    }
}

/// One trace line, when the caller asked for a trace.
fn req_trace(trace: Option<&Trace>, line: impl FnOnce() -> String) {
    if let Some(trace) = trace {
        trace(&line());
    }
}

/// A target inside the state dir could be taken for staging by `gc`, and
/// would put the overlay where only idoverlay's own mounts belong.
fn check_target_outside_state_dir(state_dir: &Path, target: &layer::OpenedDir) -> Result<()> {
    match target
        .canonical
        .clone()
        .or_else(|| sys::fd_path(target.fd.as_fd()))
    {
        Some(at) => check_target_path_outside_state_dir(state_dir, &target.path, &at),
        None => Ok(()),
    }
}

/// [`check_target_outside_state_dir`] for a target (given as `shown`)
/// whose real path is `at`.
fn check_target_path_outside_state_dir(state_dir: &Path, shown: &Path, at: &Path) -> Result<()> {
    let Ok(state_dir) = path::normalize(state_dir) else {
        return Ok(());
    };
    // `/` is no state dir at all (refused where one is used).
    if state_dir.as_ref() != Path::new("/") && at.starts_with(&state_dir) {
        return Err(Error::invalid_path(
            "target",
            shown,
            format!(
                "lies inside the state dir {}, which holds only idoverlay's own staging; \
                 mount the overlay elsewhere",
                error::display_path(&state_dir)
            ),
        ));
    }
    Ok(())
}

/// The mount id of the overlay whose root `root` is, into the description;
/// then its record when `keep` (one that cannot be written is a warning).
fn record_mount(
    keep: bool,
    state: &state::StateDirOnce,
    root: BorrowedFd<'_>,
    mounted: &mut Mounted,
) {
    if let Some((id, unique)) = records::mount_id_of(root) {
        mounted.description.mount_id = Some(id);
        mounted.description.unique_mount_id = unique;
    }
    if keep {
        if let Err(e) = records::write(state, &mounted.description) {
            mounted
                .warnings
                .push(format!("no record of the mount was kept: {e}"));
        }
    }
}

/// Where a target really is: its canonical path when reached without a
/// symlink, else the kernel's name for it.
fn target_path_of(target: &layer::OpenedDir) -> PathBuf {
    target
        .canonical
        .clone()
        .or_else(|| sys::fd_path(target.fd.as_fd()))
        .unwrap_or_else(|| target.path.clone())
}

/// An overlay attached at its target. Holds no fd: the mount stays until
/// unmounted (see [`unmount_overlay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// Where it is attached, as given.
    pub target: PathBuf,
    /// The strategy that assembled it (never [`Strategy::Auto`]).
    pub strategy: Strategy,
    /// See [`DetachedMount::warnings`].
    pub warnings: Vec<String>,
    /// What it is made of, with real paths and the kernel's id for the
    /// mount: what `idoverlay show` reports.
    pub description: records::MountDescription,
}

/// An assembled overlay, held by its mount fd.
///
/// Until attached it lives in an anonymous mount namespace: dropping it
/// unmounts it. Once attached, dropping only closes the fd.
#[derive(Debug)]
pub struct DetachedMount {
    fd: OwnedFd,
    strategy: Strategy,
    warnings: Vec<String>,
    /// What it is made of, to refuse a target among its own directories.
    footprint: Option<layer::Footprint>,
    /// Its upper and work dirs, claimed once it is attached.
    pair: Option<(layer::OpenedDir, layer::OpenedDir)>,
    /// The owner `--chown-upper` gives the upper, made sure of when the pair
    /// is claimed.
    upper_owner: Option<(u32, u32)>,
    state_dir: PathBuf,
    /// What it is made of (the target and mount id once attached).
    description: records::MountDescription,
    keep_record: bool,
}

impl DetachedMount {
    /// An overlay received as a mount fd (e.g. over a unix socket, from the
    /// process that assembled it), checked to be the root of a whole
    /// overlay mount that is attached nowhere in this mount namespace.
    /// What it is made of is not known here, so [`DetachedMount::attach`]
    /// cannot refuse a target among its layers as it does for an overlay
    /// this process assembled; its strategy reads [`Strategy::Auto`].
    pub fn from_fd(fd: OwnedFd) -> Result<DetachedMount> {
        let refuse = |why: String| Error::invalid("mount fd", fd.as_raw_fd().to_string(), why);
        let stat =
            sys::stat_fd(fd.as_fd()).map_err(|e| Error::os("inspect the mount fd", None, e))?;
        let fs = fs_type::of_fd(fd.as_fd());
        if fs != "overlay" {
            return Err(refuse(format!("is of a {fs} filesystem, not an overlay")));
        }
        if stat.mount_root != Some(true)
            || mount_root_within_fs(fd.as_fd()).is_some_and(|r| r != Path::new("/"))
        {
            return Err(refuse(
                "is not the root of a whole overlay mount (a directory inside one, or a bind \
                 mount of one); give the fd fsmount or open_tree returned"
                    .into(),
            ));
        }
        let attached_here = match sys::stat_fd_unique_mnt_id(fd.as_fd()) {
            Some(id) => sys::statmount(id).is_some(),
            // Unknown counts as attached: moving an attached mount would
            // take it from where it is.
            None => sys::open_dir_path(sys::cwd(), Path::new("/proc"))
                .and_then(|proc| mountinfo::read_via(proc.as_fd()))
                .map_or(true, |table| {
                    table.iter().any(|m| Some(m.mount_id) == stat.mnt_id)
                }),
        };
        if attached_here {
            return Err(refuse(
                "is a mount attached in this mount namespace, not a detached one; give a \
                 detached overlay (from assemble or fsmount)"
                    .into(),
            ));
        }
        Ok(DetachedMount {
            fd,
            strategy: Strategy::Auto,
            warnings: Vec::new(),
            footprint: None,
            pair: None,
            upper_owner: None,
            state_dir: PathBuf::from(gc::DEFAULT_STATE_DIR),
            description: records::MountDescription::default(),
            keep_record: false,
        })
    }

    /// The strategy that assembled it (never [`Strategy::Auto`], except for
    /// an overlay received with [`DetachedMount::from_fd`]).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Moves the overlay onto `target`, an existing directory (a symlink is
    /// refused rather than followed), with `move_mount`, and closes the
    /// mount fd (an open fd would keep the mount busy). When attaching
    /// fails, the overlay is dropped, which unmounts it.
    ///
    /// The target is refused, as [`Overlay::mount`] refuses it, when it is
    /// one of the overlay's layers, its upper or work dir, or inside one
    /// (where they were when it was assembled), or inside the state dir.
    pub fn attach(self, target: impl AsRef<Path>) -> Result<Mounted> {
        let target = target.as_ref();
        let opened = open_target(target)?;
        check_target_outside_state_dir(&self.state_dir, &opened)?;
        if let Some(footprint) = &self.footprint {
            footprint.check_target(&opened)?;
        }
        self.attach_to_fd(
            opened.fd.as_fd(),
            target,
            strategy::in_use::this_mount_ns_id,
        )
    }

    /// Attaches the overlay at `target` inside another mount namespace (a
    /// file such as `/proc/PID/ns/mnt`), as `mount -N` does: a short-lived
    /// thread enters that namespace, resolves `target` there and attaches.
    ///
    /// No record is kept of a mount in another namespace (see
    /// [`Overlay::keep_record`]): the state dir is this namespace's, whose
    /// `idoverlay list` cannot see that mount.
    pub fn attach_in_namespace(
        mut self,
        mount_ns: impl AsRef<Path>,
        target: impl AsRef<Path>,
    ) -> Result<Mounted> {
        let (mount_ns, target) = (mount_ns.as_ref(), target.as_ref());
        self.keep_record = false;
        let ns = open_mount_namespace(mount_ns)?;
        // Read here, where /proc shows this process, for the pair's claim
        // made there: a namespace whose /proc is another pid namespace's
        // has no `thread-self` for the attaching thread, and a claim
        // without the boot id is no claim (a second overlay then mounted
        // on the pair in use).
        let _ = state::boot_id();
        // The claim names the namespace the overlay is attached in, so that
        // the check before an overlay is made, here, finds it there.
        let ns_id = sys::mount_namespace_id(ns.as_fd());
        // The overlay's directories located here, by device and path on
        // their filesystem, which mean the same in every mount namespace;
        // the target located there, through a /proc that shows this
        // thread (that namespace's own /proc may be another pid
        // namespace's, or none).
        let proc = sys::open_dir_path(sys::cwd(), Path::new("/proc"))
            .map_err(|e| Error::os("open /proc", None, e))?;
        let here = mountinfo::read_via(proc.as_fd())
            .map_err(|e| Error::os("read the mount table", None, e))?;
        let members = self
            .footprint
            .as_ref()
            .map(|f| f.locate_all(&here))
            .unwrap_or_default();
        threads::run_on_thread("attach", || {
            sys::enter_mount_ns(ns.as_fd())
                .map_err(|e| Error::os("enter mount namespace", Some(mount_ns), e))?;
            let opened = open_target(target)?;
            let cannot = |why: String| {
                Error::invalid_path(
                    "target",
                    target,
                    format!(
                        "cannot be checked in mount namespace {} ({why}); nothing was attached",
                        error::display_path(mount_ns)
                    ),
                )
            };
            let table = mountinfo::read_via(proc.as_fd())
                .map_err(|e| cannot(format!("its mount table: {e}")))?;
            let canonical = opened
                .canonical
                .clone()
                .or_else(|| sys::fd_path_via(proc.as_fd(), Path::new(""), opened.fd.as_fd()))
                .ok_or_else(|| cannot("where the target is".into()))?;
            let at = opened
                .stat
                .mnt_id
                .ok_or_else(|| cannot("no mount id from statx".into()))
                .and_then(|id| {
                    layer::FsLocation::on_mount(&canonical, id, &table)
                        .map_err(|_| layer::not_in_table(layer::Role::Target, target))
                })?;
            check_target_path_outside_state_dir(&self.state_dir, target, &canonical)?;
            layer::refuse_inside(target, &at, &members)?;
            // As directories too, walked up from the target's fd: the
            // names located above were true when each was opened, and
            // directories renamed since (an exchange above a layer and
            // the target) put the target inside a layer they do not show.
            if let Some(footprint) = &self.footprint {
                let via_proc =
                    |fd: BorrowedFd<'_>| sys::fd_path_via(proc.as_fd(), Path::new(""), fd);
                footprint.check_target_walk(&opened, &via_proc)?;
            }
            self.attach_to_fd(opened.fd.as_fd(), target, || ns_id)
        })
    }

    /// Attaches at `target_fd`, in the mount namespace whose id `mount_ns`
    /// tells (asked only for a pair's claim).
    fn attach_to_fd(
        self,
        target_fd: BorrowedFd<'_>,
        target: &Path,
        mount_ns: impl FnOnce() -> Option<u64>,
    ) -> Result<Mounted> {
        let attach = || {
            sys::move_mount(self.fd.as_fd(), target_fd, "".as_ref())
                .map_err(|e| Error::os("attach the overlay at", Some(target), e))
        };
        match &self.pair {
            // Attached only once the pair is claimed for it: another
            // overlay that took the pair meanwhile refuses this one.
            Some((upper, work)) => strategy::in_use::claim(
                upper,
                work,
                self.fd.as_fd(),
                self.upper_owner,
                mount_ns(),
                attach,
            )?,
            None => attach()?,
        }
        let mut description = self.description;
        description.target = sys::fd_path(target_fd).unwrap_or_else(|| target.to_path_buf());
        let mut mounted = Mounted {
            target: target.to_path_buf(),
            strategy: self.strategy,
            warnings: self.warnings,
            description,
        };
        record_mount(
            self.keep_record,
            &state::StateDirOnce::new(&self.state_dir),
            self.fd.as_fd(),
            &mut mounted,
        );
        Ok(mounted)
    }

    /// Things that went wrong without spoiling the overlay, e.g. host-staged
    /// leftovers that `idoverlay gc` will remove.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Gives up ownership of the mount fd, e.g. to `move_mount` it into
    /// another process's mount namespace.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for DetachedMount {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens a mount namespace file (`/proc/PID/ns/mnt`), checked to be one.
fn open_mount_namespace(mount_ns: &Path) -> Result<OwnedFd> {
    let opened = file::open_checked(sys::cwd(), mount_ns, true, file::Kind::Namespace);
    let ns = opened.map(|(fd, _)| fd).map_err(|e| match e {
        file::Unreadable::Os(e) => Error::from(crate::error::Repr::InvalidInput {
            what: "mount namespace".into(),
            input: error::display_path(mount_ns),
            reason: format!("cannot be opened ({e}); give /proc/PID/ns/mnt"),
            path: Some(mount_ns.to_path_buf()),
            source: Some(e),
        }),
        other => Error::invalid_path(
            "mount namespace",
            mount_ns,
            format!(
                "{}; give /proc/PID/ns/mnt",
                other.reason_wanting("a mount namespace")
            ),
        ),
    })?;
    match sys::namespace_type(ns.as_fd()) {
        Ok(t) if t == libc::CLONE_NEWNS => {}
        _ => {
            return Err(Error::invalid_path(
                "mount namespace",
                mount_ns,
                "is not a mount namespace; give /proc/PID/ns/mnt",
            ))
        }
    }
    Ok(ns)
}

/// Opens a mount target: absolute, normalized (a trailing `/` cannot make
/// a symlink be followed), an existing directory, not a symlink.
fn open_target(target: &Path) -> Result<layer::OpenedDir> {
    let normal =
        path::normalize(target).map_err(|r| Error::invalid_path("target", target, r.reason()))?;
    // Reached without any symlink, the normalized path is the canonical one.
    let lexical = (!path::has_dotdot(&normal))
        .then(|| sys::open_dir_no_symlinks(&normal, false).ok())
        .flatten();
    let (fd, canonical) = match lexical {
        Some(fd) => (fd, Some(normal.to_path_buf())),
        None => (
            sys::open_dir_path(sys::cwd(), &normal)
                .map_err(|e| explain_target(target, &normal, e))?,
            None,
        ),
    };
    let stat = sys::stat_fd(fd.as_fd()).map_err(|e| Error::os("inspect", Some(target), e))?;
    Ok(layer::OpenedDir {
        path: target.to_path_buf(),
        role: layer::Role::Target,
        fd,
        stat,
        canonical,
    })
}

/// A target that could not be opened, explained.
fn explain_target(target: &Path, normal: &Path, e: sys::SysError) -> Error {
    let reason = match e.errno {
        libc::ENOENT => "does not exist; create the directory first".to_string(),
        libc::ENOTDIR => match sys::stat_nofollow(sys::cwd(), normal) {
            Ok(st) if st.is_symlink() => {
                "is a symlink; give the directory it points to".to_string()
            }
            Ok(st) => format!("is {}, not a directory", st.kind()),
            Err(_) => "has a component that is not a directory".to_string(),
        },
        _ => format!("cannot be opened ({e})"),
    };
    Error::from(crate::error::Repr::InvalidInput {
        what: "target".into(),
        input: error::display_path(target),
        reason,
        path: Some(target.to_path_buf()),
        source: Some(e),
    })
}

/// Unmounts the overlay mounted at `target`, and refuses anything else:
/// `target` must be the root of an overlay mount (not a bind mount of a
/// directory inside one). With `lazy`, a busy mount is detached now and
/// freed by the kernel when its last user goes.
///
/// Exactly the mount that was checked is unmounted: `target`'s parent is
/// opened once and the mount is reached through that fd from then on (a
/// lazy unmount goes through the checked mount's own fd; a plain one,
/// which must not hold the mount busy itself, names it in the opened
/// parent, where its mount point cannot be renamed from this namespace),
/// so renaming directories on the way cannot bring another mount there.
pub fn unmount_overlay(target: impl AsRef<Path>, lazy: bool) -> Result<()> {
    let target = target.as_ref();
    may_unmount(target)?;
    unmount_checked(target, lazy, Naming::Proc)
}

/// Unmounts the overlay mounted at `target` inside another mount namespace
/// (a file such as `/proc/PID/ns/mnt`), with the checks and guarantees of
/// [`unmount_overlay`]: a short-lived thread enters that namespace and
/// reaches the mount through fds it opened there (its working directory,
/// not `/proc`, which that namespace may not have, or have of another pid
/// namespace).
pub fn unmount_overlay_in_namespace(
    mount_ns: impl AsRef<Path>,
    target: impl AsRef<Path>,
    lazy: bool,
) -> Result<()> {
    let (mount_ns, target) = (mount_ns.as_ref(), target.as_ref());
    may_unmount(target)?;
    let ns = open_mount_namespace(mount_ns)?;
    threads::run_on_thread("unmount", || {
        sys::enter_mount_ns(ns.as_fd())
            .map_err(|e| Error::os("enter mount namespace", Some(mount_ns), e))?;
        unmount_checked(target, lazy, Naming::OwnCwd)
    })
}

fn may_unmount(target: &Path) -> Result<()> {
    if !crate::creds::has_cap_sys_admin() {
        return Err(Error::permission(
            format!("unmounting {}", error::display_path(target)),
            "CAP_SYS_ADMIN",
            userns::CAP_SYS_ADMIN_HINT,
        ));
    }
    Ok(())
}

/// How umount(2), which takes a path, is pointed at a mount held by fd.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// `/proc/thread-self/fd/N[/NAME]`: from any thread.
    Proc,
    /// Relative to the working directory, moved there with `fchdir`: only
    /// on a thread with an fs struct of its own.
    OwnCwd,
}

fn unmount_checked(target: &Path, lazy: bool, naming: Naming) -> Result<()> {
    procfs::check()?;
    let normal =
        path::normalize(target).map_err(|r| Error::invalid_path("target", target, r.reason()))?;
    let Some((parent, name)) = path::split_last(&normal) else {
        return Err(Error::invalid_path(
            "target",
            target,
            "is /; idoverlay only unmounts overlays",
        ));
    };
    let parent_fd = sys::open_dir_path_follow(sys::cwd(), parent)
        .map_err(|e| explain_target(target, &normal, e))?;
    let name = Path::new(name);
    let checked = check_overlay_root(parent_fd.as_fd(), name, target, &normal)?;
    if !lazy {
        if let Some(who) = others_can_rename_in(parent_fd.as_fd(), name) {
            return Err(Error::invalid_path(
                "target",
                target,
                format!(
                    "is in a directory {who}: umount(2) names the mount by path, so they could \
                     put another mount there between the last check and the unmount; nothing \
                     was unmounted;"
                ),
            )
            .with_advice(Advice::UnmountLazily));
        }
    }
    // Through the parent's fd: `/proc/thread-self/fd/P/NAME`, the last
    // component not followed.
    let in_parent = PathBuf::from(format!(
        "/proc/thread-self/fd/{}/{}",
        parent_fd.as_raw_fd(),
        name.display()
    ));
    // A plain unmount must not hold the mount itself: the fd is let go
    // right before, after a last look that the name still leads to it.
    let mut checked = Some(checked);
    let mut attempt = || -> Result<std::result::Result<(), sys::SysError>> {
        let fd = match checked.take() {
            Some(fd) => fd,
            None => check_overlay_root(parent_fd.as_fd(), name, target, &normal)?,
        };
        if lazy {
            // The checked mount itself, through its own fd.
            return Ok(match naming {
                Naming::Proc => sys::detach_root_of(fd.as_fd()),
                Naming::OwnCwd => sys::fchdir(fd.as_fd())
                    .and_then(|()| sys::unmount(Path::new("."), true))
                    .and_then(|()| sys::fchdir(parent_fd.as_fd())),
            });
        }
        // The mount by its id, and the id by what it is: a reused id (one
        // freed by a mount taken down meanwhile) names another filesystem.
        let id = sys::stat_fd(fd.as_fd()).ok().and_then(|st| {
            let unique = sys::stat_fd_unique_mnt_id(fd.as_fd());
            st.mnt_id.map(|id| (id, unique, st.dev, st.ino))
        });
        drop(fd);
        let at_name = || {
            sys::stat_nofollow(parent_fd.as_fd(), name)
                .ok()
                .and_then(|st| {
                    let unique = sys::stat_unique_mnt_id_nofollow(parent_fd.as_fd(), name);
                    st.mnt_id.map(|id| (id, unique, st.dev, st.ino))
                })
        };
        if id.is_none() || at_name() != id {
            return Err(Error::invalid_path(
                "target",
                target,
                "changed while it was being unmounted (another mount is there now); nothing \
                 was unmounted",
            ));
        }
        let unmounted = match naming {
            Naming::Proc => sys::unmount(&in_parent, false),
            Naming::OwnCwd => {
                sys::fchdir(parent_fd.as_fd()).and_then(|()| sys::unmount(name, false))
            }
        };
        // umount(2) takes the top mount at the name: one mounted on the
        // overlay after the last look went instead, and the overlay is
        // still there.
        if unmounted.is_ok() && at_name() == id {
            return Err(Error::invalid_path(
                "target",
                target,
                "had another mount put on it while it was being unmounted: that one was \
                 unmounted instead, and the overlay is still mounted there; find who mounts \
                 there, then",
            )
            .with_advice(Advice::UnmountLazily));
        }
        Ok(unmounted)
    };
    // EBUSY can be transient: a fork elsewhere in this process briefly holds
    // a copy of every fd (until its exec closes them), pinning the mount.
    let mut result = attempt()?;
    for delay_ms in [1, 2, 5, 10, 20, 50] {
        match &result {
            Err(e) if e.errno == libc::EBUSY => {
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
                result = attempt()?;
            }
            _ => break,
        }
    }
    result.map_err(|e| {
        let err = Error::os("unmount", Some(target), e.clone());
        if e.errno == libc::EBUSY {
            err.with_hint(
                "it is busy (a process has files open or its working directory there); \
                 stop them, or",
            )
            .with_advice(Advice::UnmountLazily)
        } else {
            err
        }
    })
}

/// The working directory's absolute name, to join relative paths with:
/// only when that name leads to the working directory itself and nobody
/// but root can rename a directory on its way from `/` (see
/// [`Overlay::lower`]: every path is resolved by name once, as given).
/// The kernel resolves a relative name from the working directory's
/// inode; a name joined with another process's renames in between would
/// lead to that process's directories instead.
///
/// ```no_run
/// let cwd = idoverlay::working_dir_name()?;
/// let layer = cwd.join("layers/base");
/// # Ok::<(), idoverlay::Error>(())
/// ```
pub fn working_dir_name() -> Result<PathBuf> {
    let here = sys::open_dir_path(sys::cwd(), Path::new("."))
        .and_then(|fd| sys::stat_fd(fd.as_fd()))
        .map_err(|e| Error::os("open", Some(Path::new(".")), e))?;
    let name = std::env::current_dir().map_err(|e| {
        Error::invalid_input("working directory", ".", format!("has no name ({e})"))
            .with_advice(Advice::GiveAbsolutePaths)
    })?;
    if !name.is_absolute() {
        return Err(Error::invalid_path(
            "working directory",
            &name,
            "is not reachable from / (outside this root)",
        )
        .with_advice(Advice::GiveAbsolutePaths));
    }
    let mut dir = sys::open_dir_path(sys::cwd(), Path::new("/"))
        .map_err(|e| Error::os("open", Some(Path::new("/")), e))?;
    let mut at = PathBuf::from("/");
    for part in name.components() {
        let std::path::Component::Normal(part) = part else {
            continue;
        };
        if let Some(who) = others_can_rename_in(dir.as_fd(), Path::new(part)) {
            return Err(Error::invalid_path(
                "working directory",
                &name,
                format!(
                    "lies under {}, {who}: others could rename {part:?} there, so this name \
                     could lead elsewhere",
                    error::display_path(&at)
                ),
            )
            .with_advice(Advice::GiveAbsolutePaths));
        }
        at.push(part);
        dir = sys::open_dir_path(dir.as_fd(), Path::new(part))
            .map_err(|e| Error::os("open", Some(&at), e))?;
    }
    let there = sys::stat_fd(dir.as_fd()).map_err(|e| Error::os("inspect", Some(&name), e))?;
    if !there.same_inode(&here) {
        return Err(Error::invalid_path(
            "working directory",
            &name,
            "no longer leads to the working directory (renamed meanwhile?)",
        )
        .with_advice(Advice::GiveAbsolutePaths));
    }
    Ok(name)
}

/// Who besides root could rename `name` in `parent` (and so put another
/// mount under that name), or `None` when nobody can: `parent` is owned by
/// root and writable by nobody else, or sticky with `name` itself owned by
/// root (in a sticky directory only an entry's owner may rename it); and
/// not seen through an idmapped mount (whose owners are not the ones on
/// disk). Unknown counts as someone.
fn others_can_rename_in(parent: BorrowedFd<'_>, name: &Path) -> Option<String> {
    let Ok(st) = sys::stat_fd(parent) else {
        return Some("that cannot be inspected".into());
    };
    let idmapped = match sys::stat_fd_unique_mnt_id(parent).and_then(sys::statmount) {
        Some(status) => Some(status.attr & sys::MOUNT_ATTR_IDMAP != 0),
        None => mountinfo::read_self().ok().and_then(|table| {
            table
                .iter()
                .find(|m| Some(m.mount_id) == st.mnt_id)
                .map(|m| m.mount_options.split(',').any(|o| o == "idmapped"))
        }),
    };
    match idmapped {
        Some(true) => {
            return Some("seen through an idmapped mount (its owners on disk are not known)".into())
        }
        // statmount and the mount table show only mounts beneath this
        // process's root: a chroot's parent mount is neither.
        None => {
            return Some(
                "on a mount this process cannot inspect (outside its root, as in a chroot), \
                 so whether it is idmapped is not known"
                    .into(),
            )
        }
        Some(false) => {}
    }
    if st.uid != 0 {
        return Some(format!("owned by uid {}", st.uid));
    }
    let open_to_others = st.mode & 0o022 != 0;
    if !open_to_others {
        return None;
    }
    if st.mode & 0o1000 == 0 {
        return Some(format!("others can write to (mode {:o})", st.mode & 0o7777));
    }
    // Sticky: who owns the directory the mount covers? Seen beneath the
    // mount, in a clone of the parent's mount alone.
    let owner = sys::clone_mount(parent, Path::new("."))
        .and_then(|clone| sys::stat_nofollow(clone.as_fd(), name))
        .map(|covered| covered.uid);
    match owner {
        Ok(0) => None,
        Ok(uid) => Some(format!(
            "others can write to (mode {:o}), and the directory under the mount is owned by uid \
             {uid}, who may rename it",
            st.mode & 0o7777
        )),
        Err(_) => Some(format!("others can write to (mode {:o})", st.mode & 0o7777)),
    }
}

/// Opens `name` in `parent` (not following a symlink) and checks that it
/// is the root of an overlay mount, and of the whole overlay (not a bind
/// mount of a directory inside one).
fn check_overlay_root(
    parent: BorrowedFd<'_>,
    name: &Path,
    target: &Path,
    normal: &Path,
) -> Result<OwnedFd> {
    let fd = sys::open_dir_path(parent, name).map_err(|e| explain_target(target, normal, e))?;
    let stat = sys::stat_fd(fd.as_fd()).map_err(|e| Error::os("inspect", Some(target), e))?;
    if stat.mount_root == Some(false) {
        return Err(Error::invalid_path(
            "target",
            target,
            "is not a mount point; nothing to unmount",
        ));
    }
    let fs = fs_type::of_fd(fd.as_fd());
    if fs != "overlay" {
        return Err(Error::invalid_path(
            "target",
            target,
            format!(
                "is {} {fs} mount, not an overlay; idoverlay only unmounts overlays",
                error::a_or_an(&fs)
            ),
        ));
    }
    if mount_root_within_fs(fd.as_fd()).is_some_and(|root| root != Path::new("/")) {
        return Err(Error::invalid_path(
            "target",
            target,
            "is a bind mount of a directory inside an overlay, not the overlay itself; \
             unmount the overlay where it is mounted",
        ));
    }
    Ok(fd)
}

/// Which directory of its filesystem a mount shows at its root (`/` for a
/// whole filesystem, the subdirectory for a bind mount of one), for the
/// mount `fd` is the root of: from `statmount` (6.8+), else the mount
/// table. `None` when neither tells.
fn mount_root_within_fs(fd: BorrowedFd<'_>) -> Option<PathBuf> {
    if let Some(status) = sys::stat_fd_unique_mnt_id(fd).and_then(sys::statmount) {
        return Some(status.root);
    }
    let id = sys::stat_fd(fd).ok()?.mnt_id?;
    let table = mountinfo::read_self().ok()?;
    table.into_iter().find(|m| m.mount_id == id).map(|m| m.root)
}

/// Raises this process's soft limit on open files to its hard limit. The
/// CLI calls it once; a runtime embedding the library decides for itself.
/// 500 layers need a few hundred fds at once.
pub fn raise_fd_limit() {
    sys::raise_fd_limit();
}
