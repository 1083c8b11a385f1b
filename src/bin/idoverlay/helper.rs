//! util-linux's mount helper interface: `mount -t idoverlay SPEC DIR -o …`
//! runs `/sbin/mount.idoverlay SPEC DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`
//! (mount(8), EXTERNAL HELPERS), which is this binary under that name: the
//! Debian package ships /usr/sbin/mount.idoverlay -> ../bin/idoverlay, and
//! `idoverlay install-helper` links an installed binary.
//! fstab lines and systemd `.mount` units then work as for any filesystem.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cli::InstallHelperArgs;
use crate::mount::{self, MountArgs};
use crate::output::Output;

/// The name mount(8) looks for: `mount.<type>` for `-t idoverlay`.
pub const HELPER_NAME: &str = "mount.idoverlay";

/// mount(8)'s exit statuses: 1 incorrect invocation or permissions, 32
/// mount failure.
pub const EXIT_USAGE: u8 = 1;
const EXIT_MOUNT_FAILURE: u8 = 32;

/// Whether argv[0] names the mount helper.
pub fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| {
            p.file_name()
                .map(|n| n.as_bytes().starts_with(HELPER_NAME.as_bytes()))
        })
        .unwrap_or(false)
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "{HELPER_NAME}: {problem}; usage: {HELPER_NAME} SPEC DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE] \
         (OPTIONS as for `idoverlay mount -o`: lowerdir=…,upperdir=…,workdir=…,uidmap=…,gidmap=…)"
    );
    ExitCode::from(EXIT_USAGE)
}

/// The helper's entry point.
pub fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let mut positionals: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let (mut fake, mut verbose) = (false, false);
    let mut namespace: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        match bytes {
            b"-o" | b"-N" | b"-t" => {
                let Some(value) = args.next() else {
                    return usage(&format!("{} needs a value", arg.to_string_lossy()));
                };
                match bytes {
                    b"-o" => match value.into_string() {
                        Ok(v) => options.push(v),
                        Err(v) => return usage(&format!("options {v:?} are not UTF-8")),
                    },
                    b"-N" => namespace = Some(PathBuf::from(value)),
                    // A subtype (`-t idoverlay.x`): nothing to do with it.
                    _ => {}
                }
            }
            [b'-', flags @ ..] if !flags.is_empty() => {
                for f in flags {
                    match f {
                        b'f' => fake = true,
                        b'v' => verbose = true,
                        // sloppy, no-mtab: nothing to do for idoverlay.
                        b's' | b'n' => {}
                        _ => return usage(&format!("unknown flag -{}", *f as char)),
                    }
                }
            }
            _ => positionals.push(arg),
        }
    }
    if positionals.len() != 2 {
        return usage("needs SPEC and DIR");
    }
    let target = PathBuf::from(&positionals[1]);
    let args = MountArgs {
        options,
        paths: vec![PathBuf::from(&positionals[0]), target.clone()],
        namespace,
        // As the CLI takes it (mount(8) passes its environment on).
        state_dir: std::env::var_os("IDOVERLAY_STATE_DIR").map(PathBuf::from),
        strategy: "auto".into(),
        ..MountArgs::default()
    };
    let result = if fake {
        mount::build(&args, verbose).map(|_| ())
    } else {
        mount::run(args, verbose)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one line; the status is mount(8)'s, not the CLI's.
            Output { json: false }.fail(&e);
            let usage = e
                .chain()
                .find_map(|c| c.downcast_ref::<idoverlay::Error>())
                .is_some_and(|e| {
                    matches!(
                        e.kind(),
                        idoverlay::ErrorKind::InvalidInput | idoverlay::ErrorKind::Permission
                    )
                });
            ExitCode::from(if usage {
                EXIT_USAGE
            } else {
                EXIT_MOUNT_FAILURE
            })
        }
    }
}

/// The directories util-linux's mount(8) searches for `mount.<type>`, in
/// order: libmount's `FS_SEARCH_PATH` (configure's default, unchanged in
/// Debian 12's util-linux 2.38). On a merged-/usr system /sbin is /usr/sbin.
pub const SEARCH_PATH: [&str; 3] = ["/sbin", "/sbin/fs.d", "/sbin/fs"];

/// `idoverlay install-helper`: a symlink DIR/mount.idoverlay to this
/// binary. Idempotent; never replaces anything else. Refuses a DIR mount(8)
/// does not search and a binary inside a cargo target dir (the link would
/// break with the next `cargo clean`, and every fstab line and .mount unit
/// with it).
pub fn install(args: InstallHelperArgs) -> Result<()> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("find this binary's path")?;
    check_search_path(&args.dir)?;
    if let Some(marker) = build_tree_marker(&exe) {
        bail!(idoverlay::Error::invalid_input(
            "binary",
            exe.display().to_string(),
            format!(
                "is in a cargo target dir ({} is there), so the helper would break with the \
                 next `cargo clean`; install the binary first \
                 (`cargo install --path . --root /usr/local`, then `/usr/local/bin/idoverlay \
                 install-helper`) or install the Debian package, which ships \
                 /usr/sbin/{HELPER_NAME}",
                marker.display()
            )
        ));
    }
    let link = args.dir.join(HELPER_NAME);
    match std::fs::symlink_metadata(&link) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let points_to = std::fs::read_link(&link)?;
            if resolve(&args.dir, &points_to) != exe {
                bail!(idoverlay::Error::invalid_input(
                    "helper",
                    link.display().to_string(),
                    format!(
                        "already exists and points to {}; remove it first if it should point here",
                        points_to.display()
                    )
                ));
            }
        }
        Ok(_) => bail!(idoverlay::Error::invalid_input(
            "helper",
            link.display().to_string(),
            "already exists and is not a symlink; left alone"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::os::unix::fs::symlink(&exe, &link)
                .with_context(|| format!("create {} -> {}", link.display(), exe.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("inspect {}", link.display())),
    }
    if args.json {
        Output { json: true }
            .result(json!({ "helper": link.to_string_lossy(), "binary": exe.to_string_lossy() }));
    } else {
        outln!("{} -> {}", link.display(), exe.display());
    }
    Ok(())
}

/// DIR must be one of the directories mount(8) searches (after resolving
/// symlinks, so /usr/sbin is accepted where /sbin links to it).
fn check_search_path(dir: &Path) -> Result<()> {
    let refuse = |reason: &str| {
        idoverlay::Error::invalid_input(
            "--dir",
            dir.display().to_string(),
            format!(
                "{reason}; mount(8) looks for {HELPER_NAME} in {} only",
                SEARCH_PATH.join(", ")
            ),
        )
    };
    let real = match dir.canonicalize() {
        Ok(real) => real,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(refuse("does not exist"))
        }
        Err(e) => return Err(e).with_context(|| format!("resolve {}", dir.display())),
    };
    let searched = SEARCH_PATH
        .iter()
        .filter_map(|d| Path::new(d).canonicalize().ok())
        .any(|d| d == real);
    if !searched {
        bail!(refuse("is not a directory mount(8) searches for helpers"));
    }
    Ok(())
}

/// What marks a directory above `exe` as (part of) a cargo target dir:
/// `.fingerprint` (cargo's build state, in every profile dir such as
/// target/release), `.rustc_info.json` (its compiler cache at a target
/// dir's root) or `CACHEDIR.TAG` (the Cache Directory Tagging spec, which
/// cargo writes into the target dirs it creates). Any one of them, so that
/// a CARGO_TARGET_DIR elsewhere or CARGO_CACHE_RUSTC_INFO=0 is found too;
/// `cargo install` and the Debian package put the binary where none is.
fn build_tree_marker(exe: &Path) -> Option<PathBuf> {
    exe.ancestors().skip(1).find_map(|dir| {
        [".fingerprint", ".rustc_info.json", "CACHEDIR.TAG"]
            .iter()
            .map(|name| dir.join(name))
            .find(|marker| std::fs::symlink_metadata(marker).is_ok())
    })
}

fn resolve(dir: &Path, target: &Path) -> PathBuf {
    let joined = dir.join(target);
    joined.canonicalize().unwrap_or(joined)
}
