//! Shared fixtures for the privileged integration tests.
//!
//! Every privileged test body runs on its own thread that first enters a
//! private mount namespace and makes `/` recursively private there, so no
//! mount it makes is ever visible to the host. All its files live on a
//! tmpfs mounted (in that namespace only) over a fresh directory it
//! created, so nothing needs deleting afterwards: the namespace, the tmpfs
//! and every loop-mounted image die with the thread, and only the empty
//! directory is `rmdir`ed.
#![allow(dead_code)]

pub mod containerd_rc5;
pub mod mountinfo;
pub mod raw;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{chown, symlink, DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether the process may mount. Without it, privileged tests skip (with
/// a line saying why) unless IDOVERLAY_REQUIRE_PRIVILEGED=1 makes a skip a
/// failure, as in CI.
pub fn privileged(test: &str) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has_sys_admin = cap_eff & (1 << 21) != 0;
    if has_sys_admin {
        return true;
    }
    if std::env::var("IDOVERLAY_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: needs CAP_SYS_ADMIN, and IDOVERLAY_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIP {test}: needs CAP_SYS_ADMIN (run as root; set IDOVERLAY_REQUIRE_PRIVILEGED=1 to fail instead)");
    false
}

/// Runs `body` on a new thread inside a private mount namespace, with a
/// scratch directory on a private tmpfs. Returns what `body` returns;
/// panics in `body` propagate.
pub fn in_private_ns<T: Send + 'static>(
    test: &str,
    body: impl FnOnce(&Scratch) -> T + Send + 'static,
) -> Option<T> {
    if !privileged(test) {
        return None;
    }
    let name = test.to_string();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            enter_private_mount_ns();
            let scratch = Scratch::new(&name);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&scratch)));
            drop(scratch);
            match result {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
        .expect("spawn test thread");
    match handle.join() {
        Ok(v) => Some(v),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// unshare(CLONE_NEWNS) for this thread, then make everything private.
pub fn enter_private_mount_ns() {
    // SAFETY: CLONE_NEWNS (and the CLONE_FS it implies) does not touch the
    // fd table, which is what makes rustix call unshare unsafe.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .expect("unshare(CLONE_NEWNS)");
    run(Command::new("mount").args(["--make-rprivate", "/"]));
}

/// A private tmpfs over a fresh directory; dropped by lazily detaching it
/// (in this namespace) and removing the then empty directory.
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    /// A fresh scratch directory with a private tmpfs on it, in the calling
    /// thread's (private) mount namespace.
    pub fn new(test: &str) -> Self {
        let base = std::env::temp_dir();
        let tag: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let root = (0..1000)
            .map(|i| base.join(format!("idoverlay-test-{tag}-{}-{i}", std::process::id())))
            .find(|p| fs::DirBuilder::new().mode(0o700).create(p).is_ok())
            .expect("create scratch dir");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755,size=2g", "idoverlay-test"])
            .arg(&root));
        Scratch { root }
    }

    /// A path inside the scratch area.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A directory for layers on the scratch tmpfs.
    pub fn tmpfs_dir(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// A fresh ext4 filesystem (an image on the scratch tmpfs, loop
    /// mounted in this namespace) and its mount point.
    pub fn ext4_dir(&self, rel: &str) -> PathBuf {
        let image = self.root.join(format!("{rel}.img"));
        let mnt = self.root.join(rel);
        fs::create_dir_all(&mnt).unwrap();
        run(Command::new("truncate").args(["-s", "256M"]).arg(&image));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal"])
            .arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt));
        mnt
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Lazily detach the tmpfs and everything below it, in this
        // namespace only; then the directory on the host is empty again.
        let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        if let Err(e) = fs::remove_dir(&self.root) {
            eprintln!("note: could not rmdir {}: {e}", self.root.display());
        }
    }
}

/// What a thread sees inside the mount namespace of nsfs file `ns`: the
/// number of mounts there, a newline, then what `f` returns, run there.
pub fn in_mount_ns(ns: &Path, f: &(dyn Fn() -> String + Sync)) -> String {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let proc = fs::File::open("/proc").unwrap();
                let nsfd = fs::File::open(ns).unwrap();
                // SAFETY: CLONE_FS does not touch the fd table.
                unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
                    .unwrap();
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&nsfd),
                    Some(rustix::thread::LinkNameSpaceType::Mount),
                )
                .unwrap();
                let table = rustix::fs::openat(
                    &proc,
                    "thread-self/mountinfo",
                    rustix::fs::OFlags::RDONLY,
                    rustix::fs::Mode::empty(),
                )
                .map(|fd| {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut fs::File::from(fd), &mut text).unwrap();
                    text
                })
                .unwrap();
                format!("{}\n{}", table.lines().count(), f())
            })
            .join()
            .unwrap()
    })
}

/// The names in the root directory of the calling thread, sorted, joined
/// by spaces (for [`in_mount_ns`]).
pub fn root_names() -> String {
    let mut names: Vec<String> = fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.join(" ")
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Creates a directory with an owner and mode.
pub fn mkdir(path: &Path, mode: u32, uid: u32, gid: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    chown(path, Some(uid), Some(gid)).unwrap();
}

/// Creates a file with contents, owner and mode.
pub fn write_file(path: &Path, text: &str, mode: u32, uid: u32, gid: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    chown(path, Some(uid), Some(gid)).unwrap();
}

/// A small image layer set in `dir`: three layers, top-most first, with
/// files owned by 0 and by 1000, a symlink, a whiteout and an opaque dir.
pub struct Layers {
    pub dirs: Vec<PathBuf>,
}

pub fn make_layers(dir: &Path) -> Layers {
    let l1 = dir.join("l1");
    let l2 = dir.join("l2");
    let l3 = dir.join("l3");
    for l in [&l1, &l2, &l3] {
        mkdir(l, 0o755, 0, 0);
    }
    // Bottom layer.
    write_file(&l1.join("etc/hostname"), "base\n", 0o644, 0, 0);
    mkdir(&l1.join("home/app"), 0o750, 1000, 1000);
    write_file(&l1.join("home/app/notes.txt"), "v1\n", 0o640, 1000, 1000);
    write_file(
        &l1.join("home/app/deleted-later.txt"),
        "gone\n",
        0o640,
        1000,
        1000,
    );
    mkdir(&l1.join("var/cache"), 0o755, 0, 0);
    write_file(&l1.join("var/cache/old"), "old\n", 0o644, 0, 0);
    symlink("../etc/hostname", l1.join("home/hostname-link")).unwrap();
    // Middle layer: a file owned by 1000 in a root dir, a whiteout and an
    // opaque directory, as image layers carry them.
    write_file(&l2.join("bin/tool"), "#!/bin/sh\n", 0o755, 0, 0);
    write_file(&l2.join("srv/data"), "data\n", 0o600, 1000, 1000);
    mkdir(&l2.join("home/app"), 0o750, 1000, 1000);
    run(Command::new("mknod")
        .arg(l2.join("home/app/deleted-later.txt"))
        .args(["c", "0", "0"]));
    mkdir(&l2.join("var/cache"), 0o755, 0, 0);
    run(Command::new("setfattr")
        .args(["-n", "trusted.overlay.opaque", "-v", "y"])
        .arg(l2.join("var/cache")));
    write_file(&l2.join("var/cache/new"), "new\n", 0o644, 0, 0);
    // Top layer.
    mkdir(&l3.join("home/app"), 0o750, 1000, 1000);
    write_file(&l3.join("home/app/notes.txt"), "v3\n", 0o640, 1000, 1000);
    Layers {
        dirs: vec![l3, l2, l1],
    }
}

/// `(uid, gid)` of a path, not following a symlink.
pub fn owner(path: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

/// The overlay at `target` is a whole one, as `make_layers` built it under
/// the map 0:100000:65536: the top mount there, its files idmapped, the
/// top layer's contents winning.
#[allow(dead_code)]
pub fn assert_finished_overlay(target: &Path, what: &str) {
    let top = mounts()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target)
        .unwrap_or_else(|| panic!("{what}: nothing at the target"));
    assert_eq!(top.fs_type, "overlay", "{what}: {top:?}");
    assert_eq!(
        owner(&target.join("etc/hostname")),
        (100000, 100000),
        "{what}"
    );
    assert_eq!(
        fs::read_to_string(target.join("home/app/notes.txt")).unwrap(),
        "v3\n",
        "{what}"
    );
}

/// This thread's mount table (its own namespace).
pub fn mounts() -> Vec<mountinfo::MountEntry> {
    mountinfo::read_self().unwrap()
}

/// Entries in `after` that are not in `before`, by mount id.
pub fn new_mounts(
    before: &[mountinfo::MountEntry],
    after: &[mountinfo::MountEntry],
) -> Vec<mountinfo::MountEntry> {
    after
        .iter()
        .filter(|a| !before.iter().any(|b| b.mount_id == a.mount_id))
        .cloned()
        .collect()
}

/// The idoverlay binary built for these tests. It keeps no probe report
/// in the default state dir (that would create /run/idoverlay): tests of
/// that pass their own `--state-dir` and turn it back on.
pub fn idoverlay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idoverlay"));
    cmd.env("IDOVERLAY_PROBE_CACHE", "off");
    cmd
}

/// A copy of the idoverlay binary at `to`, executable, made by `cp`: a
/// copy written from this process would leave its write fd open for a
/// moment, and a child another test thread forks meanwhile inherits it,
/// making the copy's exec fail with ETXTBSY.
#[allow(dead_code)]
pub fn copy_of_the_binary(to: &Path) {
    run(Command::new("cp")
        .arg(env!("CARGO_BIN_EXE_idoverlay"))
        .arg(to));
    run(Command::new("chmod").arg("0755").arg(to));
}

/// This process's open fds, by number.
pub fn fds() -> std::collections::BTreeSet<i32> {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Children of this process (any thread), from /proc: the userns helper
/// must never be among them after a call returns.
pub fn child_processes() -> Vec<u32> {
    let me = std::process::id();
    let mut children = Vec::new();
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(list) = fs::read_to_string(task.path().join("children")) {
                children.extend(
                    list.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    children.retain(|&p| p != me);
    children
}

/// Lossy text of a command's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The path's last component as a string.
pub fn name(path: &Path) -> &str {
    path.file_name().and_then(OsStr::to_str).unwrap_or("")
}

/// Everything about one entry of a tree that "nothing changed" must cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPrint {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
    pub link_target: Option<PathBuf>,
    pub content_hash: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// A byte-for-byte fingerprint of a layer tree: every path, type, mode,
/// owner, size, device number, symlink target, content and xattr. Does not
/// follow symlinks or cross into other mounts.
pub fn fingerprint(root: &Path) -> std::collections::BTreeMap<PathBuf, EntryPrint> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = std::collections::BTreeMap::new();
    let root_dev = fs::symlink_metadata(root).unwrap().dev();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "socket"
        };
        let content_hash = if ft.is_file() {
            fnv1a(&fs::read(&path).unwrap())
        } else {
            0
        };
        let mut xattrs = Vec::new();
        let mut names = vec![0u8; 65536];
        if let Ok(n) = rustix::fs::llistxattr(&path, &mut names) {
            for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
                let name_str = String::from_utf8_lossy(name).into_owned();
                let mut value = vec![0u8; 65536];
                let len = rustix::fs::lgetxattr(&path, name, &mut value).unwrap_or(0);
                value.truncate(len);
                xattrs.push((name_str, value));
            }
        }
        xattrs.sort();
        out.insert(
            path.strip_prefix(root).unwrap().to_path_buf(),
            EntryPrint {
                kind,
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_dir() { 0 } else { m.len() },
                rdev: m.rdev(),
                link_target: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                content_hash,
                xattrs,
            },
        );
        if ft.is_dir() && m.dev() == root_dev {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The differences between two fingerprints, for assertion messages.
pub fn fingerprint_diff(
    before: &std::collections::BTreeMap<PathBuf, EntryPrint>,
    after: &std::collections::BTreeMap<PathBuf, EntryPrint>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, b) in before {
        match after.get(path) {
            None => diffs.push(format!("lost {}", path.display())),
            Some(a) if a != b => diffs.push(format!("changed {}: {b:?} -> {a:?}", path.display())),
            _ => {}
        }
    }
    for path in after.keys() {
        if !before.contains_key(path) {
            diffs.push(format!("added {}", path.display()));
        }
    }
    diffs
}

/// A richer layer set for loss tests: `make_layers` plus a FIFO, xattrs,
/// a hard link, an empty file and a larger file.
pub fn make_rich_layers(dir: &Path) -> Layers {
    let layers = make_layers(dir);
    let l1 = &layers.dirs[2];
    run(Command::new("mkfifo").arg(l1.join("home/app/fifo")));
    run(Command::new("setfattr")
        .args(["-n", "user.origin", "-v", "layer1"])
        .arg(l1.join("etc/hostname")));
    run(Command::new("setfattr")
        .args(["-n", "trusted.test", "-v", "0xdeadbeef"])
        .arg(l1.join("home/app/notes.txt")));
    fs::hard_link(l1.join("etc/hostname"), l1.join("etc/hostname.link")).unwrap();
    write_file(&l1.join("etc/empty"), "", 0o600, 0, 0);
    let big: String = (0..20000).map(|i| format!("{i}\n")).collect();
    write_file(&l1.join("var/big"), &big, 0o644, 1000, 0);
    layers
}

/// `idoverlay mount --strategy STRATEGY` of `layers` at `target` under
/// `strace -f -e inject=INJECT`. It uses a saved probe report
/// (`probe.json` next to `state`, made on first use): strace counts
/// `when=N` per thread, and the probe's own thread would otherwise take
/// the faults meant for the assembly.
#[allow(dead_code)]
pub fn cli_under_strace(
    inject: &str,
    strategy: &str,
    state: &Path,
    layers: &[PathBuf],
    target: &Path,
) -> Output {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("inject={inject}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_idoverlay"));
    cli_mount_args(&mut cmd, strategy, state, layers, target);
    cmd.output().unwrap()
}

/// The same mount as [`cli_under_strace`], without strace.
#[allow(dead_code)]
pub fn cli_mount(strategy: &str, state: &Path, layers: &[PathBuf], target: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idoverlay"));
    cli_mount_args(&mut cmd, strategy, state, layers, target);
    cmd.output().unwrap()
}

/// The environment and arguments of [`cli_under_strace`]'s mount.
fn cli_mount_args(
    cmd: &mut Command,
    strategy: &str,
    state: &Path,
    layers: &[PathBuf],
    target: &Path,
) {
    cli_mount_args_with(cmd, strategy, state, layers, &[], target);
}

/// [`cli_mount_args`] with `extra` arguments before the target (an upper
/// and work dir, `--pretend-missing`, …), for a command that runs the tool
/// some other way (`nsenter`, `unshare`).
#[allow(dead_code)]
pub fn cli_mount_args_with(
    cmd: &mut Command,
    strategy: &str,
    state: &Path,
    layers: &[PathBuf],
    extra: &[&std::ffi::OsStr],
    target: &Path,
) {
    let report = state.parent().unwrap().join("probe.json");
    if !report.exists() {
        fs::write(&report, run(idoverlay().args(["probe", "--json"])).stdout).unwrap();
    }
    // private-ns as the tool runs it: its staging namespace kept for the
    // boot, in `state` (so a kill can be looked for inside it).
    match strategy {
        "private-ns" => cmd.env_remove("IDOVERLAY_PROBE_CACHE"),
        _ => cmd.env("IDOVERLAY_PROBE_CACHE", "off"),
    };
    cmd.args(["mount", "--strategy", strategy, "--probe-report"])
        .arg(&report)
        .arg("--state-dir")
        .arg(state);
    for l in layers {
        cmd.arg("--lower").arg(l);
    }
    cmd.args(["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"])
        .args(extra)
        .arg(target);
}

/// Two entries of one directory swapped with `renameat2(RENAME_EXCHANGE)`
/// in a tight loop, on a thread of its own, as an attacker who can write
/// that directory would. It can be paused, which puts both names back
/// where they started, so a test can look at a stable tree between
/// attempts.
pub struct Swapper {
    shared: std::sync::Arc<SwapState>,
    handle: Option<std::thread::JoinHandle<()>>,
    dir: std::os::fd::OwnedFd,
    a: PathBuf,
    b: PathBuf,
}

#[derive(Default)]
struct SwapState {
    stop: std::sync::atomic::AtomicBool,
    pause: std::sync::atomic::AtomicBool,
    parked: std::sync::atomic::AtomicBool,
    swaps: std::sync::atomic::AtomicU64,
}

impl Swapper {
    /// Starts swapping `dir/a` and `dir/b`, paused.
    pub fn start(dir: &Path, a: &str, b: &str) -> Swapper {
        use std::sync::atomic::Ordering::SeqCst;
        let open = || {
            rustix::fs::open(
                dir,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap()
        };
        let shared = std::sync::Arc::new(SwapState::default());
        shared.pause.store(true, SeqCst);
        let (state, fd) = (shared.clone(), open());
        let (a, b) = (PathBuf::from(a), PathBuf::from(b));
        let (ta, tb) = (a.clone(), b.clone());
        let handle = std::thread::spawn(move || {
            // Its own working directory: the caller stays the only user of
            // the test thread's, as in a process whose attacker is elsewhere.
            // SAFETY: CLONE_FS does not touch the fd table.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }.unwrap();
            while !state.stop.load(SeqCst) {
                if state.pause.load(SeqCst) {
                    state.parked.store(true, SeqCst);
                    while state.pause.load(SeqCst) && !state.stop.load(SeqCst) {
                        std::thread::yield_now();
                    }
                    state.parked.store(false, SeqCst);
                    continue;
                }
                let swapped = rustix::fs::renameat_with(
                    &fd,
                    &ta,
                    &fd,
                    &tb,
                    rustix::fs::RenameFlags::EXCHANGE,
                );
                if swapped.is_ok() {
                    state.swaps.fetch_add(1, SeqCst);
                }
            }
        });
        let s = Swapper {
            shared,
            handle: Some(handle),
            dir: open(),
            a,
            b,
        };
        s.wait_parked();
        s
    }

    fn wait_parked(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        while !self.shared.parked.load(SeqCst) {
            std::thread::yield_now();
        }
    }

    /// Swaps from now on.
    pub fn resume(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.pause.store(false, SeqCst);
        while self.shared.parked.load(SeqCst) {
            std::thread::yield_now();
        }
    }

    /// Stops swapping and puts both names back where they started; false
    /// when that cannot be done now (one of them became a mount point, which
    /// cannot be renamed: [`Swapper::restore`] again once it is unmounted).
    pub fn pause(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.pause.store(true, SeqCst);
        self.wait_parked();
        self.restore()
    }

    /// Puts both names back where they started (paused only).
    pub fn restore(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        if self.shared.swaps.load(SeqCst) % 2 == 0 {
            return true;
        }
        let back = rustix::fs::renameat_with(
            &self.dir,
            &self.a,
            &self.dir,
            &self.b,
            rustix::fs::RenameFlags::EXCHANGE,
        );
        match back {
            Ok(()) => {
                self.shared.swaps.fetch_add(1, SeqCst);
                true
            }
            Err(rustix::io::Errno::BUSY) => false,
            Err(e) => panic!("swapping {:?} and {:?} back: {e}", self.a, self.b),
        }
    }

    /// How many exchanges it made.
    pub fn swaps(&self) -> u64 {
        self.shared.swaps.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        let _ = self.pause();
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A directory held by an fd from the start, so that what a test checks in
/// it cannot be fooled by renames: its path through that fd.
pub struct Held {
    fd: std::os::fd::OwnedFd,
}

impl Held {
    pub fn open(path: &Path) -> Held {
        let fd = rustix::fs::open(
            path,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW,
            rustix::fs::Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Held { fd }
    }

    /// A path that leads to exactly this directory (through /proc).
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}/.", self.fd.as_raw_fd()))
    }

    /// Where it is now, as the kernel names it.
    pub fn current_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        fs::read_link(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).unwrap()
    }

    /// Device and inode.
    pub fn id(&self) -> (u64, u64) {
        let st = rustix::fs::fstat(&self.fd).unwrap();
        (st.st_dev, st.st_ino)
    }
}

/// Makes `root` a directory to chroot into and run the tool as
/// `/idoverlay` (the host's /usr and a /proc bound in, the test's binary
/// bound at /idoverlay), with the directories `more` beside them.
pub fn chroot_with_the_tool(root: &Path, more: &[&str]) {
    for sub in ["usr", "proc"].iter().chain(more) {
        mkdir(&root.join(sub), 0o755, 0, 0);
    }
    run(Command::new("mount")
        .arg("--bind")
        .arg("/usr")
        .arg(root.join("usr")));
    run(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(root.join("proc")));
    for (link, to) in [
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("bin", "usr/bin"),
    ] {
        symlink(to, root.join(link)).unwrap();
    }
    fs::write(root.join("idoverlay"), "").unwrap();
    run(Command::new("mount")
        .arg("--bind")
        .arg(env!("CARGO_BIN_EXE_idoverlay"))
        .arg(root.join("idoverlay")));
}

/// A user namespace mapping 0:100000:65536, held by the test, and the path
/// (`/proc/PID/fd/N`) by which a child process's `--userns` reaches it.
pub fn userns_for_children() -> (idoverlay::UserNamespace, PathBuf) {
    let map: idoverlay::IdMap = "0:100000:65536".parse().unwrap();
    let userns = idoverlay::UserNamespace::from_maps(&map, &map).unwrap();
    let path = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&userns))
    ));
    (userns, path)
}

/// Every open of one file, seen by an inotify watch (`IN_OPEN`): the
/// kernel queues the event inside the `open` itself, so after a call
/// returns, [`OpenWatch::opens`] tells whether it opened the file.
pub struct OpenWatch {
    inotify: std::os::fd::OwnedFd,
}

impl OpenWatch {
    /// A null device node (1:3) made at `path` and watched: opening it
    /// does nothing but be seen, where a watchdog's would arm it.
    pub fn on_new_null_device(path: &Path) -> OpenWatch {
        use std::os::fd::{AsRawFd, FromRawFd};
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        // SAFETY: inotify_init1 returns a new fd or -1.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a new fd nobody else owns.
        let inotify = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid fd and a NUL-terminated path.
        let wd =
            unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), name.as_ptr(), libc::IN_OPEN) };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        let watch = OpenWatch { inotify };
        // The watch sees an open (or no test of it could fail).
        drop(fs::File::open(path).unwrap());
        assert_eq!(watch.opens(), 1, "the watch missed an open of {path:?}");
        watch
    }

    /// The opens since the last call.
    pub fn opens(&self) -> usize {
        use std::os::fd::AsRawFd;
        let mut opens = 0;
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads into a buffer we own, of its length.
            let n =
                unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return opens;
            }
            let mut at = 0;
            while at + 16 <= n as usize {
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                if mask & libc::IN_OPEN != 0 {
                    opens += 1;
                }
                at += 16 + len;
            }
        }
    }
}

/// For a test that forks (a child copies the fds of every other test
/// running in the binary, and keeps their mounts busy) or that needs the
/// process's namespaces to itself: `true` in a process of its own, where
/// the test's body runs; otherwise runs this test binary again with only
/// `name` (`--exact`), checks that it passed, and gives `false`.
#[allow(dead_code)]
pub fn alone_in_a_process(name: &str) -> bool {
    if std::env::var_os("IDOVERLAY_TEST_ALONE").is_some() {
        return true;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture"])
        .env("IDOVERLAY_TEST_ALONE", "1")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("1 passed"), "{said}");
    false
}
