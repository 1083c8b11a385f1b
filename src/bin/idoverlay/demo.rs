//! `idoverlay demo`: the whole idea in one command, needing nothing from the
//! user. Builds three small layers in a fresh private directory, mounts them
//! idmapped with 0:100000:65536, shows owners on disk beside owners seen
//! through the mount, writes one file, unmounts, and removes exactly what it
//! created (file by file, directory by directory; never recursively).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{chown, DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use idoverlay::{IdMap, Overlay};

use crate::output::{stderr_trace, BadInput, Output};

/// What the demo created, in order, so it can remove exactly that.
#[derive(Default)]
struct Created {
    entries: Vec<(PathBuf, bool)>, // (path, is_dir)
}

impl Created {
    fn dir(&mut self, path: &Path, mode: u32, owner: (u32, u32)) -> Result<()> {
        fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .with_context(|| format!("create directory {}", path.display()))?;
        self.entries.push((path.to_path_buf(), true));
        chown(path, Some(owner.0), Some(owner.1))
            .with_context(|| format!("chown {}", path.display()))?;
        Ok(())
    }

    fn file(&mut self, path: &Path, text: &str, mode: u32, owner: (u32, u32)) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("create file {}", path.display()))?;
        self.entries.push((path.to_path_buf(), false));
        f.write_all(text.as_bytes())?;
        chown(path, Some(owner.0), Some(owner.1))
            .with_context(|| format!("chown {}", path.display()))?;
        Ok(())
    }

    /// Records something the overlay created on the demo's behalf.
    fn adopt(&mut self, path: &Path, is_dir: bool) {
        self.entries.push((path.to_path_buf(), is_dir));
    }

    /// Removes, newest first, everything recorded; returns what could not go.
    fn remove_all(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        while let Some((path, is_dir)) = self.entries.pop() {
            let result = if is_dir {
                fs::remove_dir(&path) // rmdir: only if empty
            } else {
                fs::remove_file(&path)
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => left.push(format!("{}: {e}", path.display())),
            }
        }
        left
    }
}

const MAP: &str = "0:100000:65536";

pub fn run(base: Option<PathBuf>, json: bool, verbose: bool) -> Result<()> {
    let base = base.unwrap_or_else(std::env::temp_dir);
    let mut created = Created::default();
    let root = create_private_dir(&base, &mut created)?;
    let result = demo_in(&root, &mut created, json, verbose);
    let left = created.remove_all();
    match (result, left.is_empty()) {
        (result, true) => result,
        (Ok(()), false) => bail!("demo finished but left these behind: {}", left.join("; ")),
        (Err(e), false) => bail!("{e:#}; and it left these behind: {}", left.join("; ")),
    }
}

/// A fresh 0700 directory in `base`, by a name nobody but root can
/// redirect: every path the demo then makes, mounts, unmounts and removes
/// is beneath it. The demo names things by path (as a caller of the
/// library does), so a base where another user can rename (their home, a
/// directory they own) is refused: swapping the demo's directory for a
/// symlink there led its unmount to another overlay and its removals to
/// files it never made.
fn create_private_dir(base: &Path, created: &mut Created) -> Result<PathBuf> {
    let refused = |e: &dyn std::fmt::Display| {
        anyhow::Error::new(BadInput(format!(
            "--base {}: {e}; give a directory only root can rename in (the default, $TMPDIR \
             or /tmp, is one)",
            base.display()
        )))
    };
    // The base by its inode from here on; and its name, walked from `/`.
    std::env::set_current_dir(base).map_err(|e| refused(&e))?;
    idoverlay::working_dir_name().map_err(|e| refused(&e.message_with("")))?;
    let here = fs::File::open(".").map_err(|e| refused(&e))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for attempt in 0..16u32 {
        let name = format!(
            "idoverlay-demo-{}-{:08x}",
            std::process::id(),
            stamp.wrapping_add(attempt)
        );
        match fs::DirBuilder::new().mode(0o700).create(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(refused(&format!("cannot create {name}: {e}"))),
        }
        // Into it by its inode; then its name, walked from `/` again,
        // must lead there with nobody but root able to rename on the way.
        let dir = rustix::fs::openat(
            &here,
            name.as_str(),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW,
            rustix::fs::Mode::empty(),
        );
        let checked = dir
            .and_then(|dir| rustix::process::fchdir(&dir))
            .map_err(|e| format!("cannot enter {name}: {e}"))
            .and_then(|()| idoverlay::working_dir_name().map_err(|e| e.message_with("")));
        return match checked {
            Ok(root) => {
                created.adopt(&root, true);
                Ok(root)
            }
            Err(e) => {
                let _ = std::env::set_current_dir("/");
                remove_if_still_there(&here, &name);
                Err(refused(&e))
            }
        };
    }
    Err(refused(&"could not create a fresh directory there"))
}

/// Removes the empty directory `name` in `base`, made by the demo a moment
/// ago, when the name still leads to a directory of root's (not one
/// another user put there since).
fn remove_if_still_there(base: &fs::File, name: &str) {
    let at = rustix::fs::statat(base, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
    if at.is_ok_and(|st| st.st_uid == 0) {
        let _ = rustix::fs::unlinkat(base, name, rustix::fs::AtFlags::REMOVEDIR);
    }
}

fn demo_in(root: &Path, created: &mut Created, json: bool, verbose: bool) -> Result<()> {
    let root_owner = (0, 0);
    let app = (1000, 1000);
    let layers = root.join("layers");
    created.dir(&layers, 0o755, root_owner)?;
    let l1 = layers.join("1-base");
    let l2 = layers.join("2-tools");
    let l3 = layers.join("3-app");
    for l in [&l1, &l2, &l3] {
        created.dir(l, 0o755, root_owner)?;
    }
    // Bottom layer: a system file owned by root, a home owned by 1000.
    created.dir(&l1.join("etc"), 0o755, root_owner)?;
    created.file(&l1.join("etc/hostname"), "demo\n", 0o644, root_owner)?;
    created.dir(&l1.join("home"), 0o755, root_owner)?;
    created.dir(&l1.join("home/app"), 0o750, app)?;
    created.file(&l1.join("home/app/notes.txt"), "v1\n", 0o640, app)?;
    // Middle layer: a tool owned by root.
    created.dir(&l2.join("bin"), 0o755, root_owner)?;
    created.file(
        &l2.join("bin/tool"),
        "#!/bin/sh\necho tool\n",
        0o755,
        root_owner,
    )?;
    // Top layer: a newer version of the app's file.
    created.dir(&l3.join("home"), 0o755, root_owner)?;
    created.dir(&l3.join("home/app"), 0o750, app)?;
    created.file(&l3.join("home/app/notes.txt"), "v2\n", 0o640, app)?;
    let upper = root.join("upper");
    let work = root.join("work");
    let merged = root.join("merged");
    for d in [&upper, &work, &merged] {
        created.dir(d, 0o755, root_owner)?;
    }

    let map: IdMap = MAP.parse()?;
    let mut overlay = Overlay::new()
        .lowers([&l3, &l2, &l1])
        .upper(&upper)
        .work(&work)
        .idmap(map.clone(), map.clone());
    if verbose {
        overlay = overlay.trace(stderr_trace());
    }
    // overlay makes its own work subdirectory, and the write below lands in
    // upper: both are the demo's to remove (a missing entry is skipped).
    created.adopt(&work.join("work"), true);
    created.adopt(&upper.join("etc"), true);
    created.adopt(&upper.join("etc/motd"), false);
    let strategy = overlay.mount(&merged)?.strategy;
    // Whatever the inspection finds, the overlay comes off again.
    let inspected = inspect(&[&l1, &l2, &l3], &merged, &upper);
    idoverlay::unmount_overlay(&merged, false)?;
    // Still a mount point when its device differs from its parent's.
    let still_mounted = fs::metadata(&merged)?.dev() != fs::metadata(root)?.dev();
    let (rows, notes, landed) = inspected?;

    if json {
        Output { json }.result(json!({
            "directory": root.to_string_lossy(),
            "uidmap": MAP, "gidmap": MAP,
            "strategy": strategy.name(),
            "files": rows.iter().map(|(rel, du, dg, su, sg)| json!({
                "path": rel, "on_disk": {"uid": du, "gid": dg}, "through_mount": {"uid": su, "gid": sg},
            })).collect::<Vec<_>>(),
            "top_layer_wins": notes.trim() == "v2",
            "write_landed_in_upper": landed,
            "unmounted": !still_mounted,
        }));
    } else {
        outln!(
            "idoverlay demo in {} (strategy {strategy}, map {MAP})",
            root.display()
        );
        outln!();
        outln!("  {:<22} {:>14} {:>18}", "path", "on disk", "through mount");
        for (rel, du, dg, su, sg) in &rows {
            outln!(
                "  {rel:<22} {:>14} {:>18}",
                format!("{du}:{dg}"),
                format!("{su}:{sg}")
            );
        }
        outln!();
        outln!(
            "  home/app/notes.txt reads {:?} (the top layer wins)",
            notes.trim()
        );
        outln!(
            "  a file written through the mount landed in upper/: {}",
            if landed { "yes" } else { "NO" }
        );
        outln!(
            "  unmounted: {}; removing only what the demo created",
            if still_mounted { "NO" } else { "yes" }
        );
    }
    if still_mounted {
        bail!(
            "the demo's overlay is still mounted at {}",
            merged.display()
        );
    }
    Ok(())
}

type Row = (&'static str, u32, u32, u32, u32);

/// Owners on disk beside owners through the mount, the merged file's text,
/// and whether a write through the mount landed in upper.
fn inspect(
    layers: &[&PathBuf; 3],
    merged: &Path,
    upper: &Path,
) -> Result<(Vec<Row>, String, bool)> {
    let [l1, l2, l3] = layers;
    let samples: [(&'static str, &PathBuf); 4] = [
        ("etc/hostname", l1),
        ("bin/tool", l2),
        ("home/app", l3),
        ("home/app/notes.txt", l3),
    ];
    let mut rows = Vec::new();
    for (rel, layer) in samples {
        let disk = fs::symlink_metadata(layer.join(rel))?;
        let seen = fs::symlink_metadata(merged.join(rel))?;
        rows.push((rel, disk.uid(), disk.gid(), seen.uid(), seen.gid()));
    }
    let notes = fs::read_to_string(merged.join("home/app/notes.txt"))?;
    // The upper dir is not idmapped by default: the write lands as written.
    fs::write(merged.join("etc/motd"), "written through the overlay\n")?;
    let landed = upper.join("etc/motd").exists();
    Ok((rows, notes, landed))
}
