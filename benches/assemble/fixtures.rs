//! The private mount namespace, the scratch filesystems, and the layers and slots measured on them.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------
// Private mount namespace and scratch filesystems
// ---------------------------------------------------------------------------

/// Moves the whole process into its own mount namespace and stops
/// propagation both ways. Must run before any thread is spawned: unshare
/// of a mount namespace implies CLONE_FS, which a multi-threaded process
/// cannot unshare for all threads at once, and threads spawned later
/// inherit the namespace.
pub(crate) fn enter_private_mount_ns() {
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
pub(crate) fn own_cwd(dir: &Path) {
    // SAFETY: CLONE_FS does not touch the fd table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .expect("unshare(CLONE_FS)");
    std::env::set_current_dir(dir).expect("chdir into the bench's own directory");
}

/// A tmpfs over a fresh directory under /tmp (in the private namespace),
/// and an ext4 image on it, loop-mounted. Dropping detaches both lazily and
/// removes the directory, which is empty once the tmpfs is gone.
pub(crate) struct Scratch {
    pub(crate) root: PathBuf,
    pub(crate) ext4: PathBuf,
    pub(crate) ext4_mounted: bool,
}

impl Scratch {
    pub(crate) fn create() -> Scratch {
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

    pub(crate) fn mount_ext4(&mut self) {
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

    pub(crate) fn fs_root(&self, fs: &str) -> PathBuf {
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

pub(crate) fn run(cmd: &mut Command) {
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
pub(crate) struct LayerSet {
    pub(crate) fs: &'static str,
    pub(crate) root: PathBuf,
    pub(crate) parent: PathBuf,
}

/// Directories one measuring thread owns.
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) upper: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) target: PathBuf,
    pub(crate) stage: PathBuf,
}

impl LayerSet {
    pub(crate) fn build(fs: &'static str, root: PathBuf) -> LayerSet {
        let parent = root.join("l");
        std::fs::create_dir(&parent).expect("create the layers' parent");
        for i in 0..MAX_LAYERS {
            make_layer(&parent.join(i.to_string()), i);
        }
        for k in 0..MAX_THREADS {
            for prefix in ["u", "w", "m", "s"] {
                std::fs::create_dir(root.join(format!("{prefix}{k}"))).expect("create slot dir");
            }
            // The upper owned by container root's host ids, as a correct
            // call has it (no warning).
            chown(root.join(format!("u{k}")), Some(100000), Some(100000)).expect("chown upper");
        }
        LayerSet { fs, root, parent }
    }

    /// Top-most first, as `lowerdir=` and `Overlay::lowers` take them.
    pub(crate) fn paths(&self, n: usize) -> Vec<PathBuf> {
        (0..n).map(|i| self.parent.join(i.to_string())).collect()
    }

    /// `0:1:…:n-1`, valid from inside the parent: 500 absolute paths would
    /// not fit in mount(2)'s one page of options, short relative names do.
    pub(crate) fn relative_lowerdir(n: usize) -> String {
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(":")
    }

    pub(crate) fn slot(&self, k: usize) -> Slot {
        Slot {
            upper: self.root.join(format!("u{k}")),
            work: self.root.join(format!("w{k}")),
            target: self.root.join(format!("m{k}")),
            stage: self.root.join(format!("s{k}")),
        }
    }
}

/// A layer like a real image's: a file owned by root, one by user 1000.
pub(crate) fn make_layer(dir: &Path, i: usize) {
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
