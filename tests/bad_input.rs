//! Bad input to the command line tool, as a table: every case must be
//! refused with a non-zero exit status and exactly one line on stderr that
//! names the bad input and says what is wrong (with `--json`: an `error`
//! object on stdout), and must change nothing: the layer trees byte for
//! byte, the mount table (by mount id; host-staged may leave its empty
//! private state tmpfs at the state dir), no process left behind, no fd
//! left in this process.
//!
//! Usage errors that clap may catch before idoverlay sees the input (no
//! `--lower`, an unknown flag, a missing value, …) are marked `.usage()`:
//! when clap refuses them (exit status 2, clap's own multi-line format) the
//! test asks for exit status 2, a message naming the argument, and nothing
//! changed; there is no `--json` run (clap knows nothing of `--json`). When
//! idoverlay itself refuses them, they are held to the full rules. The
//! summary line lists the cases clap refused.
//!
//! A few positive controls at the end show that paths overlay's string
//! interfaces treat specially (`:`, `,`, `\`, `=`, spaces, newlines) are
//! valid layers that mount and show the right files, so the battery is not
//! just "everything errors".
//!
//! One test function on purpose: it counts this process's fds and children
//! (it is a child subreaper, so a helper process orphaned by the binary is
//! reparented here and seen), which parallel tests would disturb.
//!
//! Cases the product does not yet handle as required are listed in
//! [`KNOWN_GAPS`] with a one-line reason; they are still run and reported,
//! and a gap that starts passing fails the test so that it gets removed
//! from the list.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use common::mountinfo::MountEntry;
use common::*;

/// The map every case uses unless it is about maps.
const MAP: &str = "0:100000:65536";

/// A case the product does not handle as required yet.
struct Gap {
    /// The case's name in the table.
    case: &'static str,
    /// What is wrong, in one line.
    reason: &'static str,
    /// Whether the gap also breaks "nothing changed" (layers, mounts,
    /// processes, fds); if false, such a breach still fails the test.
    safety: bool,
}

/// Cases expected to fail for now. Remove an entry once the product
/// handles the case: a listed case that passes fails the test.
const KNOWN_GAPS: &[Gap] = &[];

// ---------------------------------------------------------------- cases

/// An argument vector for the binary, subcommand first.
#[derive(Clone, Debug)]
struct Argv(Vec<OsString>);

impl Argv {
    fn sub(name: &str) -> Self {
        Argv(vec![name.into()])
    }

    fn mount() -> Self {
        Self::sub("mount")
    }

    fn umount() -> Self {
        Self::sub("umount")
    }

    fn a(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.0.push(arg.as_ref().to_os_string());
        self
    }

    fn lower(self, path: impl AsRef<OsStr>) -> Self {
        self.a("--lower").a(path)
    }

    fn lowers(self, paths: &[PathBuf]) -> Self {
        paths.iter().fold(self, |argv, p| argv.lower(p))
    }

    fn maps(self) -> Self {
        self.a("--uidmap").a(MAP).a("--gidmap").a(MAP)
    }

    fn upper_work(self, upper: &Path, work: &Path) -> Self {
        self.a("--upper").a(upper).a("--work").a(work)
    }

    fn host_staged(self, state: &Path) -> Self {
        self.a("--strategy")
            .a("host-staged")
            .a("--state-dir")
            .a(state)
    }
}

/// One bad input and what the message must contain.
struct Case {
    name: String,
    program: PathBuf,
    /// Runs the binary under this wrapper (e.g. `setpriv … --`).
    wrap: Vec<OsString>,
    args: Argv,
    /// A command-line usage error that clap may catch itself: then exit
    /// status 2 and clap's own (multi-line) format are accepted, and there
    /// is no `--json` run (clap does not know about `--json`).
    usage: bool,
    /// Each entry: one of these texts must appear (the bad input, as shown).
    names: Vec<Vec<String>>,
    /// Each entry: one of these must appear, case-insensitively (what is wrong).
    says: Vec<Vec<String>>,
    /// Where host-staged may leave its private state tmpfs.
    state_dir: Option<PathBuf>,
    /// Also run with `-v` and check that nothing was cloned or staged
    /// before the refusal (docs/safety.md invariant 3).
    refused_before_any_clone: bool,
    /// Trees to fingerprint besides the shared ones.
    extra_roots: Vec<PathBuf>,
    /// Where the runs' output files go (not a fingerprinted tree).
    scratch: PathBuf,
}

fn case(name: &str, args: Argv) -> Case {
    Case {
        name: name.to_string(),
        program: PathBuf::new(),
        wrap: Vec::new(),
        args,
        usage: false,
        names: Vec::new(),
        says: Vec::new(),
        state_dir: None,
        refused_before_any_clone: false,
        extra_roots: Vec::new(),
        scratch: PathBuf::new(),
    }
}

impl Case {
    fn names(mut self, text: impl Into<String>) -> Self {
        self.names.push(vec![text.into()]);
        self
    }

    fn names_path(self, path: impl AsRef<Path>) -> Self {
        self.names(q(path.as_ref()))
    }

    fn names_any(mut self, texts: &[&str]) -> Self {
        self.names
            .push(texts.iter().map(|t| t.to_string()).collect());
        self
    }

    fn says(mut self, text: impl Into<String>) -> Self {
        self.says.push(vec![text.into()]);
        self
    }

    fn says_any(mut self, texts: &[&str]) -> Self {
        self.says
            .push(texts.iter().map(|t| t.to_string()).collect());
        self
    }

    fn usage(mut self) -> Self {
        self.usage = true;
        self
    }

    fn fingerprint_too(mut self, root: &Path) -> Self {
        self.extra_roots.push(root.to_path_buf());
        self
    }

    fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    fn wrapped(mut self, wrapper: &[&str]) -> Self {
        self.wrap = wrapper.iter().map(OsString::from).collect();
        self
    }

    fn refused_before_any_clone(mut self) -> Self {
        self.refused_before_any_clone = true;
        self
    }
}

/// A path as the product shows it: quoted, non-UTF-8 bytes and control
/// characters escaped (`error::display_path`).
fn q(path: &Path) -> String {
    format!("{:?}", path.as_os_str())
}

/// Fixtures every case draws on.
struct Fixtures {
    /// Scratch tmpfs tree with the tmpfs layers, upper/work dirs, targets.
    d: PathBuf,
    /// ext4 mount with the rich layers.
    e: PathBuf,
    /// Three rich layers on ext4, top-most first.
    layers: Vec<PathBuf>,
    /// Three layers on tmpfs, top-most first.
    tmpfs_layers: Vec<PathBuf>,
    /// An empty directory on ext4 to mount on.
    target: PathBuf,
    /// A copy of the binary, run by every case: any user may run it, and
    /// a concurrent `cargo build` replacing the original cannot race it.
    public_binary: PathBuf,
    /// An overlay mounted for the umount cases.
    mounted_overlay: PathBuf,
    /// A user namespace with no maps, bind-mounted on a file.
    unmapped_userns: PathBuf,
    /// A user namespace mapping 0:100000:65536, bind-mounted on a file.
    mapped_userns: PathBuf,
    /// The scratch root, for files no tree fingerprint covers.
    scratch: PathBuf,
}

fn fixtures(s: &Scratch) -> Fixtures {
    let d = s.tmpfs_dir("d");
    let e = s.ext4_dir("e");
    let layers = make_rich_layers(&e.join("img")).dirs;
    let tmpfs_layers = make_layers(&d.join("tl")).dirs;
    let target = e.join("t");
    mkdir(&target, 0o755, 0, 0);

    // Outside the fingerprinted trees: hashing a debug binary is slow.
    let bin = s.path("bin");
    mkdir(&bin, 0o755, 0, 0);
    let public_binary = bin.join("idoverlay");
    fs::copy(env!("CARGO_BIN_EXE_idoverlay"), &public_binary).unwrap();
    fs::set_permissions(&public_binary, fs::Permissions::from_mode(0o755)).unwrap();

    let mounted_overlay = d.join("mounted");
    mkdir(&mounted_overlay, 0o755, 0, 0);
    run(Command::new(&public_binary)
        .args(Argv::mount().lowers(&tmpfs_layers[..2]).maps().0)
        .arg(&mounted_overlay));

    // Outside the fingerprinted trees: an nsfs file cannot be read.
    let unmapped_userns = s.path("userns-unmapped");
    persistent_userns(&unmapped_userns, None);
    let mapped_userns = s.path("userns-mapped");
    persistent_userns(&mapped_userns, Some(MAP));

    Fixtures {
        d,
        e,
        layers,
        tmpfs_layers,
        target,
        public_binary,
        mounted_overlay,
        unmapped_userns,
        mapped_userns,
        scratch: s.root.clone(),
    }
}

/// A new user namespace (maps written when given, as `container host size`
/// in the CLI's order), kept alive by a bind mount on `file`. The process
/// that made it is killed and reaped before this returns.
fn persistent_userns(file: &Path, map: Option<&str>) {
    let mut child = Command::new("unshare")
        .args(["--user", "--", "sleep", "1000"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn unshare --user");
    let ns = format!("/proc/{}/ns/user", child.id());
    let own = fs::read_link("/proc/self/ns/user").unwrap();
    // Until unshare(2) has run in the child, its namespace is ours.
    while fs::read_link(&ns).map(|l| l == own).unwrap_or(true) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("unshare --user exited ({status}) before making a user namespace");
        }
        std::thread::yield_now();
    }
    if let Some(map) = map {
        let line = format!("{}\n", map.replace(':', " "));
        fs::write(format!("/proc/{}/uid_map", child.id()), &line).unwrap();
        fs::write(format!("/proc/{}/gid_map", child.id()), &line).unwrap();
    }
    fs::write(file, "").unwrap();
    rustix::mount::mount_bind(ns.as_str(), file).expect("bind-mount the user namespace");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The whole table. Directories a case needs of its own are made here,
/// before any case runs.
fn cases(f: &Fixtures, s: &Scratch) -> Vec<Case> {
    let d = &f.d;
    let good = &f.layers;
    let t = &f.target;
    let two = &good[..2];
    let mut v = Vec::new();

    // ------------------------------------------------------------ layers
    let missing = d.join("missing");
    v.push(
        case(
            "layer/missing",
            Argv::mount().lower(&good[0]).lower(&missing).maps().a(t),
        )
        .names_path(&missing)
        .says("does not exist"),
    );
    v.push(
        case(
            "layer/relative",
            Argv::mount()
                .lower("relative/l1")
                .lower(&good[0])
                .maps()
                .a(t),
        )
        .names("\"relative/l1\"")
        .says("relative"),
    );
    v.push(
        case(
            "layer/empty-string",
            Argv::mount().lower("").lower(&good[0]).maps().a(t),
        )
        .usage()
        .names_any(&["\"\"", "--lower"])
        .says_any(&["relative", "empty", "value is required"]),
    );
    let links = d.join("links");
    mkdir(&links, 0o755, 0, 0);
    let dangling = links.join("dangling");
    symlink(d.join("nowhere"), &dangling).unwrap();
    v.push(
        case(
            "layer/dangling-symlink",
            Argv::mount().lower(&dangling).lower(&good[0]).maps().a(t),
        )
        .names_path(&dangling)
        .says("dangling"),
    );
    let to_dir = links.join("to-layer");
    symlink(&good[1], &to_dir).unwrap();
    v.push(
        case(
            "layer/symlink-to-dir",
            Argv::mount().lower(&good[0]).lower(&to_dir).maps().a(t),
        )
        .names_path(&to_dir)
        .says("symlink"),
    );
    let file = good[2].join("etc/hostname");
    v.push(
        case(
            "layer/regular-file",
            Argv::mount().lower(&good[0]).lower(&file).maps().a(t),
        )
        .names_path(&file)
        .says("regular file")
        .says("not a directory"),
    );
    let fifo = good[2].join("home/app/fifo");
    v.push(
        case(
            "layer/fifo",
            Argv::mount().lower(&good[0]).lower(&fifo).maps().a(t),
        )
        .names_path(&fifo)
        .says("fifo")
        .says("not a directory"),
    );
    let through_file = file.join("x");
    v.push(
        case(
            "layer/component-not-a-directory",
            Argv::mount()
                .lower(&good[0])
                .lower(&through_file)
                .maps()
                .a(t),
        )
        .names_path(&through_file)
        .says("not a directory"),
    );
    let long_name = d.join("n".repeat(300));
    v.push(
        case(
            "layer/name-too-long",
            Argv::mount().lower(&good[0]).lower(&long_name).maps().a(t),
        )
        .names_path(&long_name)
        .says("too long"),
    );
    let huge = PathBuf::from(format!("/{}x", "a/".repeat(2100)));
    v.push(
        case(
            "layer/longer-than-path-max",
            Argv::mount().lower(&good[0]).lower(&huge).maps().a(t),
        )
        .names_path(&huge)
        .says_any(&["PATH_MAX", "too long"]),
    );
    let non_utf8 = d.join(OsStr::from_bytes(b"missing-\xff\xfe-\nline"));
    v.push(
        case(
            "layer/non-utf8-missing",
            Argv::mount().lower(&good[0]).lower(&non_utf8).maps().a(t),
        )
        // Escaped, on one line: the bytes as \xFF\xFE, the newline as \n.
        .names(r"missing-\xFF\xFE-\nline")
        .says("does not exist"),
    );
    for (name, layer, fs) in [
        ("layer/on-proc", PathBuf::from("/proc"), "proc"),
        ("layer/on-sysfs", PathBuf::from("/sys"), "sysfs"),
        ("layer/on-ramfs", d.join("ramfs"), "ramfs"),
    ] {
        if fs == "ramfs" {
            mkdir(&layer, 0o755, 0, 0);
            run(Command::new("mount")
                .args(["-t", "ramfs", "idoverlay-test-ramfs"])
                .arg(&layer));
        }
        v.push(
            case(
                name,
                Argv::mount().lower(&layer).lower(&good[0]).maps().a(t),
            )
            .names_path(&layer)
            .says(fs)
            .says_any(&[
                "does not take idmapped",
                "cannot be idmapped",
                "does not support idmapped",
            ]),
        );
    }
    v.push(
        case(
            "layer/proc-below-a-good-layer",
            Argv::mount().lower(&good[0]).lower("/proc").maps().a(t),
        )
        .names("\"/proc\"")
        .says("proc")
        .says_any(&[
            "does not take idmapped",
            "cannot be idmapped",
            "does not support idmapped",
        ]),
    );
    v.push(
        case("layer/none", Argv::mount().maps().a(t))
            .usage()
            .names("--lower"),
    );
    // Outside the shared trees (fingerprinting 501 dirs per case is slow).
    let many = s.path("many");
    let many_layers: Vec<PathBuf> = (0..501).map(|i| many.join(i.to_string())).collect();
    for l in &many_layers {
        mkdir(l, 0o755, 0, 0);
    }
    v.push(
        case("layer/501", Argv::mount().lowers(&many_layers).maps().a(t))
            .fingerprint_too(&many)
            .names("501 layers")
            .says("at most 500"),
    );
    v.push(
        case(
            "layer/same-twice",
            Argv::mount().lower(&good[0]).lower(&good[0]).maps().a(t),
        )
        .names_path(&good[0])
        .says_any(&["same directory", "twice"]),
    );
    let double_slash = PathBuf::from(good[1].to_str().unwrap().replacen("/img/", "/img//", 1));
    assert_ne!(double_slash.as_os_str(), good[1].as_os_str());
    v.push(
        case(
            "layer/same-via-double-slash",
            Argv::mount()
                .lower(&good[1])
                .lower(&double_slash)
                .maps()
                .a(t),
        )
        .names_path(&double_slash)
        .says_any(&["same directory", "twice"]),
    );
    let bind = d.join("bind-of-tl3");
    mkdir(&bind, 0o755, 0, 0);
    run(Command::new("mount")
        .arg("--bind")
        .arg(&f.tmpfs_layers[0])
        .arg(&bind));
    v.push(
        case(
            "layer/same-via-bind-mount",
            Argv::mount()
                .lower(&f.tmpfs_layers[0])
                .lower(&bind)
                .maps()
                .a(t),
        )
        .names_path(&bind)
        .says_any(&["same directory", "twice"]),
    );
    let outer = d.join("nest/outer");
    let inner = outer.join("inner");
    mkdir(&inner, 0o755, 0, 0);
    v.push(
        case(
            "layer/nested-in-another-layer",
            Argv::mount().lower(&outer).lower(&inner).maps().a(t),
        )
        .names_path(&inner)
        .names_path(&outer)
        .says_any(&["inside", "below", "nested", "within"]),
    );
    let (u, w) = upper_work(d, "layer-is-upper");
    v.push(
        case(
            "layer/is-the-upper-dir",
            Argv::mount()
                .lower(&good[0])
                .lower(&u)
                .upper_work(&u, &w)
                .maps()
                .a(t),
        )
        .names_path(&u)
        .says("upper"),
    );
    let (u, w) = upper_work(d, "layer-in-upper");
    let in_upper = u.join("inner");
    mkdir(&in_upper, 0o755, 0, 0);
    v.push(
        case(
            "layer/inside-the-upper-dir",
            Argv::mount()
                .lower(&in_upper)
                .lower(&good[0])
                .upper_work(&u, &w)
                .maps()
                .a(t),
        )
        .names_path(&in_upper)
        .names_path(&u)
        .says_any(&["inside", "below", "nested", "within"]),
    );
    let no_data = d.join("no-data-layer");
    v.push(
        case(
            "data-layer/missing",
            Argv::mount()
                .lowers(two)
                .a("--data-lower")
                .a(&no_data)
                .maps()
                .a(t),
        )
        .names_path(&no_data)
        .says("does not exist"),
    );
    v.push(
        case(
            "layers/one-lower-without-upper",
            Argv::mount().lower(&good[0]).maps().a(t),
        )
        .names_any(&[
            &q(&good[0]),
            "1 layer",
            "one layer",
            "1 lower",
            "one lower",
            "--lower",
        ])
        .says_any(&["at least 2", "at least two", "two lower", "2 lower"])
        .says("upper"),
    );

    // ------------------------------------------------------- upper, work
    let (u, _) = upper_work(d, "upper-alone");
    v.push(
        case(
            "upper/without-work",
            Argv::mount().lowers(two).a("--upper").a(&u).maps().a(t),
        )
        .usage()
        .names_any(&["--work", &q(&u)])
        .says("work"),
    );
    let (_, w) = upper_work(d, "work-alone");
    v.push(
        case(
            "work/without-upper",
            Argv::mount().lowers(two).a("--work").a(&w).maps().a(t),
        )
        .usage()
        .names_any(&["--upper", &q(&w)])
        .says("upper"),
    );
    let (u, _) = upper_work(d, "split");
    let ext4_work = f.e.join("split-work");
    mkdir(&ext4_work, 0o755, 0, 0);
    v.push(
        case(
            "work/on-another-mount",
            Argv::mount()
                .lowers(two)
                .upper_work(&u, &ext4_work)
                .maps()
                .a(t),
        )
        .names_path(&ext4_work)
        .says("another mount"),
    );
    let (u, w) = upper_work(d, "foreign");
    write_file(&w.join("foreign"), "not overlay's\n", 0o644, 0, 0);
    v.push(
        case(
            "work/not-empty",
            Argv::mount().lowers(two).upper_work(&u, &w).maps().a(t),
        )
        .names_path(&w)
        .says("not empty")
        .says("foreign"),
    );
    // overlay empties work/ of its work dir (and prunes index/) when it
    // mounts: anything there that overlay did not put there would be lost.
    let (u, w) = upper_work(d, "work-with-files");
    write_file(&w.join("work/important.txt"), "mine\n", 0o644, 0, 0);
    write_file(&w.join("work/sub/deeper.txt"), "mine too\n", 0o644, 0, 0);
    v.push(
        case(
            "work/holds-files-in-work",
            Argv::mount().lowers(two).upper_work(&u, &w).maps().a(t),
        )
        .names_path(&w)
        .says("would delete")
        .says("work/"),
    );
    let (u, w) = upper_work(d, "work-is-a-file");
    write_file(&w.join("work"), "a file named work\n", 0o644, 0, 0);
    v.push(
        case(
            "work/holds-a-file-named-work",
            Argv::mount().lowers(two).upper_work(&u, &w).maps().a(t),
        )
        .names_path(&w)
        .says("would delete")
        .says("not a directory"),
    );
    let (u, w) = upper_work(d, "index-with-files");
    write_file(&w.join("index/notes.txt"), "mine\n", 0o644, 0, 0);
    v.push(
        case(
            "work/holds-files-in-index",
            Argv::mount().lowers(two).upper_work(&u, &w).maps().a(t),
        )
        .names_path(&w)
        .says("would delete")
        .says("index/notes.txt"),
    );
    let (u, _) = upper_work(d, "work-in-upper");
    let w = u.join("work");
    mkdir(&w, 0o755, 0, 0);
    v.push(
        case(
            "work/inside-upper",
            Argv::mount().lowers(two).upper_work(&u, &w).maps().a(t),
        )
        .names_path(&w)
        .names_path(&u)
        .says_any(&["inside", "below", "nested", "within"]),
    );
    let (_, w) = upper_work(d, "upper-in-work");
    let u = w.join("upper");
    mkdir(&u, 0o755, 0, 0);
    v.push(
        case(
            "upper/inside-work",
            Argv::mount().lowers(two).upper_work(&u, &w).maps().a(t),
        )
        .names_path(&w)
        .says_any(&["not empty", "inside"]),
    );
    let (u, _) = upper_work(d, "same");
    v.push(
        case(
            "work/same-as-upper",
            Argv::mount().lowers(two).upper_work(&u, &u).maps().a(t),
        )
        .names_path(&u)
        .says_any(&["upper dir itself", "same directory", "itself"]),
    );
    let (_, w) = upper_work(d, "upper-missing");
    let u = d.join("uw/upper-missing/nope");
    v.push(
        case(
            "upper/missing",
            Argv::mount().lowers(two).upper_work(&u, &w).maps().a(t),
        )
        .names_path(&u)
        .says("does not exist"),
    );
    let (u, w) = upper_work(d, "upper-file");
    let upper_file = u.join("file");
    write_file(&upper_file, "x", 0o644, 0, 0);
    v.push(
        case(
            "upper/regular-file",
            Argv::mount()
                .lowers(two)
                .upper_work(&upper_file, &w)
                .maps()
                .a(t),
        )
        .names_path(&upper_file)
        .says("not a directory"),
    );
    let (u, w) = upper_work(d, "upper-link");
    let upper_link = d.join("uw/upper-link/link");
    symlink(&u, &upper_link).unwrap();
    v.push(
        case(
            "upper/symlink",
            Argv::mount()
                .lowers(two)
                .upper_work(&upper_link, &w)
                .maps()
                .a(t),
        )
        .names_path(&upper_link)
        .says("symlink"),
    );
    let (u, _) = upper_work(d, "work-missing");
    let w = d.join("uw/work-missing/nope");
    v.push(
        case(
            "work/missing",
            Argv::mount().lowers(two).upper_work(&u, &w).maps().a(t),
        )
        .names_path(&w)
        .says("does not exist"),
    );
    let (u, w) = upper_work(d, "work-file");
    let work_file = w.join("file");
    write_file(&work_file, "x", 0o644, 0, 0);
    v.push(
        case(
            "work/regular-file",
            Argv::mount()
                .lowers(two)
                .upper_work(&u, &work_file)
                .maps()
                .a(t),
        )
        .names_path(&work_file)
        .says("not a directory"),
    );
    // Upper or work inside a lower layer: a layer set of its own, since
    // the kernel may write into it.
    for (name, upper_inside) in [
        ("upper/inside-a-lower-layer", true),
        ("work/inside-a-lower-layer", false),
    ] {
        let (_, own_layers, nested, other) = layers_with_a_dir_inside(d, name);
        let (u, w) = if upper_inside {
            (nested.clone(), other)
        } else {
            (other, nested.clone())
        };
        v.push(
            case(
                name,
                Argv::mount()
                    .lowers(&own_layers)
                    .upper_work(&u, &w)
                    .maps()
                    .a(t),
            )
            .names_path(&nested)
            .names_path(&own_layers[0])
            .says_any(&["inside", "below", "nested", "within"]),
        );
    }
    // The same through a symlink on the way, on either side: the overlap
    // check must compare where the directories really are (paths reached
    // without a symlink are taken as given; the others are asked of the
    // kernel).
    for (name, upper_via_link) in [
        ("upper/inside-a-lower-layer-via-a-symlinked-parent", true),
        ("layers/under-a-symlinked-parent-holding-the-upper", false),
    ] {
        let (own, own_layers, nested, other) = layers_with_a_dir_inside(d, name);
        let parent = own_layers[0].parent().unwrap();
        let link = own.join("link");
        symlink(parent, &link).unwrap();
        let via_link = |p: &Path| link.join(p.strip_prefix(parent).unwrap());
        let (layers, upper) = if upper_via_link {
            (own_layers.clone(), via_link(&nested))
        } else {
            (
                own_layers.iter().map(|l| via_link(l)).collect(),
                nested.clone(),
            )
        };
        v.push(
            case(
                name,
                Argv::mount()
                    .lowers(&layers)
                    .upper_work(&upper, &other)
                    .maps()
                    .a(t),
            )
            .names_path(&upper)
            .names_path(&layers[0])
            .says_any(&["inside", "below", "nested", "within"]),
        );
    }
    v.push(
        case(
            "idmap-upper/without-upper",
            Argv::mount().lowers(two).a("--idmap-upper").maps().a(t),
        )
        .names("--idmap-upper")
        .says("upper"),
    );

    // ------------------------------------------------------------ target
    let no_target = f.e.join("no-target");
    v.push(
        case(
            "target/missing",
            Argv::mount().lowers(two).maps().a(&no_target),
        )
        .names_path(&no_target)
        .says("does not exist"),
    );
    v.push(
        case(
            "target/regular-file",
            Argv::mount().lowers(two).maps().a(&file),
        )
        .names_path(&file)
        .says("not a directory"),
    );
    let target_link = links.join("target");
    symlink(t, &target_link).unwrap();
    v.push(
        case(
            "target/symlink",
            Argv::mount().lowers(two).maps().a(&target_link),
        )
        .names_path(&target_link)
        .says("symlink"),
    );
    v.push(
        case(
            "target/relative",
            Argv::mount().lowers(two).maps().a("relative/target"),
        )
        .names("\"relative/target\"")
        .says("relative"),
    );

    // -------------------------------------------------------------- maps
    let uid = |map: &str| {
        Argv::mount()
            .lowers(two)
            .a(format!("--uidmap={map}"))
            .a("--gidmap")
            .a(MAP)
            .a(t)
    };
    let map_cases: [(&str, &str, &[&str]); 12] = [
        (
            "map/overlap-container-side",
            "0:100000:10,5:200000:10",
            &["overlap", "container"],
        ),
        (
            "map/overlap-host-side",
            "0:100000:10,20:100005:10",
            &["overlap", "host"],
        ),
        ("map/overflow-container-side", "4294967290:0:10", &["past"]),
        ("map/overflow-host-side", "0:4294967290:10", &["past"]),
        ("map/id-too-large", "0:4294967296:1", &["larger than"]),
        ("map/zero-size", "0:100000:0", &["size 0"]),
        ("map/letters", "a:b:c", &["number"]),
        ("map/negative", "-1:100000:1", &["negative"]),
        ("map/empty-string", "", &["empty"]),
        ("map/missing-field", "0:100000", &["2 field"]),
        ("map/extra-field", "0:100000:65536:1", &["4 field"]),
        ("map/trailing-comma", "0:100000:65536,", &["empty"]),
    ];
    for (name, map, says) in map_cases {
        let mut c = case(name, uid(map))
            .names("--uidmap")
            .names(format!("{map:?}"));
        for s in says {
            c = c.says(*s);
        }
        v.push(c);
    }
    let ranges: Vec<String> = (0..341).map(|i| format!("{i}:{}:1", 100000 + i)).collect();
    v.push(
        case("map/341-ranges", uid(&ranges.join(",")))
            .names("--uidmap")
            .names("341 ranges")
            .says("at most 340"),
    );
    v.push(
        case(
            "map/bad-gidmap",
            Argv::mount()
                .lowers(two)
                .a("--uidmap")
                .a(MAP)
                .a("--gidmap")
                .a("0:100000:x")
                .a(t),
        )
        .names("--gidmap")
        .names("\"0:100000:x\"")
        .says("number"),
    );
    v.push(
        case(
            "map/only-uidmap",
            Argv::mount().lowers(two).a("--uidmap").a(MAP).a(t),
        )
        .usage()
        .names("--gidmap"),
    );
    v.push(
        case(
            "map/only-gidmap",
            Argv::mount().lowers(two).a("--gidmap").a(MAP).a(t),
        )
        .usage()
        .names("--uidmap"),
    );
    v.push(
        case(
            "map/uidmap-and-userns",
            Argv::mount()
                .lowers(two)
                .maps()
                .a("--userns")
                .a(&f.mapped_userns)
                .a(t),
        )
        .usage()
        .names("--userns"),
    );
    v.push(
        case("map/none", Argv::mount().lowers(two).a(t))
            .names("--uidmap")
            .names("--userns")
            .says("give"),
    );
    let userns = |ns: &OsStr| Argv::mount().lowers(two).a("--userns").a(ns).a(t);
    let not_ns = if Path::new("/etc/hostname").is_file() {
        PathBuf::from("/etc/hostname")
    } else {
        let p = d.join("not-a-namespace");
        write_file(&p, "x\n", 0o644, 0, 0);
        p
    };
    v.push(
        case("userns/regular-file", userns(not_ns.as_os_str()))
            .names_path(&not_ns)
            .says("not a namespace"),
    );
    v.push(
        case(
            "userns/mount-namespace",
            userns(OsStr::new("/proc/self/ns/mnt")),
        )
        .names("\"/proc/self/ns/mnt\"")
        .says("not a user namespace"),
    );
    let no_ns = d.join("no-such-namespace");
    v.push(
        case("userns/missing-file", userns(no_ns.as_os_str()))
            .names_path(&no_ns)
            .says("does not exist"),
    );
    let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let no_pid = (pid_max + 1).to_string();
    v.push(
        case("userns/no-such-pid", userns(OsStr::new(&no_pid)))
            .names(no_pid.clone())
            .says("does not exist"),
    );
    v.push(
        case("userns/empty-string", userns(OsStr::new("")))
            .names("\"\"")
            .says("does not exist"),
    );
    v.push(
        case(
            "userns/initial-namespace",
            userns(OsStr::new("/proc/self/ns/user")),
        )
        .names("\"/proc/self/ns/user\"")
        .says_any(&["own", "initial", "host", "caller"]),
    );
    v.push(
        case("userns/without-maps", userns(f.unmapped_userns.as_os_str()))
            .names_path(&f.unmapped_userns)
            .says_any(&[" map", "uid_map", "unmapped"]),
    );

    // ----------------------------------------------------------- options
    let opt = |o: &str| Argv::mount().lowers(two).maps().a("-o").a(o).a(t);
    v.push(
        case("option/unknown", opt("frobnicate=1"))
            .names("frobnicate=1")
            .says("Unknown parameter")
            .refused_before_any_clone(),
    );
    v.push(
        case(
            "option/unknown-private-ns",
            opt("frobnicate=1").a("--strategy").a("private-ns"),
        )
        .names("frobnicate=1")
        .says("Unknown parameter")
        .refused_before_any_clone(),
    );
    let state_opt = state_dir(d, "state-opt");
    v.push(
        case(
            "option/unknown-host-staged",
            opt("frobnicate=1").host_staged(&state_opt),
        )
        .state_dir(&state_opt)
        .names("frobnicate=1")
        .says("Unknown parameter")
        .refused_before_any_clone(),
    );
    let lowerdir = format!("lowerdir={}", good[2].display());
    v.push(
        case("option/layer-key-lowerdir", opt(&lowerdir))
            .names_any(&[&lowerdir, "-o"])
            .says_any(&["names a layer", "twice", "given both"]),
    );
    v.push(
        case("option/layer-key-upperdir", opt("upperdir=/x"))
            .names_any(&["upperdir=/x", "\"/x\""])
            .says_any(&["names a layer", "work dir"]),
    );
    v.push(
        case("option/map-key", opt("uidmap=0:1:1"))
            .names_any(&["uidmap=0:1:1", "-o uidmap"])
            .says_any(&["id map", "gid map", "more than one place"]),
    );
    let long_value = format!("index={}", "x".repeat(300));
    v.push(
        case("option/value-too-long", opt(&long_value))
            .names(long_value.clone())
            .says("255"),
    );
    let long_key = format!("{}=1", "k".repeat(300));
    v.push(
        case("option/key-too-long", opt(&long_key))
            .names(long_key.clone())
            .says("255"),
    );
    v.push(
        case("option/bad-index-value", opt("index=maybe"))
            .names("index=maybe")
            .says("Bad value for 'index'"),
    );
    v.push(
        case(
            "option/bad-redirect-dir-value",
            opt("redirect_dir=sideways"),
        )
        .names("redirect_dir=sideways")
        .says("Bad value for 'redirect_dir'"),
    );
    v.push(
        case("option/empty-key", opt("nosuid,=x"))
            .names("\"=x\"")
            .says("empty key"),
    );

    // ---------------------------------------------------------- strategy
    let strat = |extra: &[&str]| {
        extra
            .iter()
            .fold(Argv::mount().lowers(two).maps(), |a, x| a.a(x))
            .a(t)
    };
    v.push(
        case("strategy/unknown", strat(&["--strategy", "bogus"]))
            .names("bogus")
            .says("not one of"),
    );
    v.push(
        case(
            "strategy/detached-without-detached-layers",
            strat(&[
                "--pretend-missing",
                "overlay_detached_layers",
                "--strategy",
                "detached",
            ]),
        )
        .names("detached strategy")
        .says("needs kernel 6.15 (overlay_detached_layers)"),
    );
    v.push(
        case(
            "strategy/private-ns-without-idmapped-layers",
            strat(&[
                "--pretend-missing",
                "overlay_idmapped_layers",
                "--strategy",
                "private-ns",
            ]),
        )
        .names("private-ns strategy")
        .says("needs kernel 5.19 (overlay_idmapped_layers)"),
    );
    let state_strat = state_dir(d, "state-strategy");
    v.push(
        case(
            "strategy/host-staged-without-idmapped-layers",
            Argv::mount()
                .lowers(two)
                .maps()
                .a("--pretend-missing")
                .a("overlay_idmapped_layers")
                .host_staged(&state_strat)
                .a(t),
        )
        .state_dir(&state_strat)
        .names("host-staged strategy")
        .says("needs kernel 5.19 (overlay_idmapped_layers)"),
    );
    v.push(
        case(
            "strategy/pretend-missing-unknown-feature",
            strat(&["--pretend-missing", "bogus_feature"]),
        )
        .usage()
        .names("--pretend-missing")
        .names("bogus_feature"),
    );

    // ------------------------------------------------ host-staged state
    let staged = |state: &Path| Argv::mount().lowers(two).maps().host_staged(state).a(t);
    let world = d.join("world-writable");
    mkdir(&world, 0o1777, 0, 0);
    let under_world = world.join("state");
    v.push(
        case("state-dir/under-world-writable", staged(&under_world))
            .state_dir(&under_world)
            .names_path(&under_world)
            .says("world-writable"),
    );
    let users = d.join("users-dir");
    mkdir(&users, 0o755, 1000, 1000);
    let under_user = users.join("state");
    v.push(
        case("state-dir/under-non-root-owned", staged(&under_user))
            .state_dir(&under_user)
            .names_path(&under_user)
            .says("not owned by root"),
    );
    v.push(
        case("state-dir/relative", staged(Path::new("relative/state")))
            .names("\"relative/state\"")
            .says("relative"),
    );
    let real_state = state_dir(d, "real-state");
    let state_link = links.join("state");
    symlink(&real_state, &state_link).unwrap();
    v.push(
        case("state-dir/symlink", staged(&state_link))
            .state_dir(&state_link)
            .names_path(&state_link)
            .says("symlink"),
    );
    let state_file = d.join("state-file");
    write_file(&state_file, "", 0o600, 0, 0);
    v.push(
        case("state-dir/regular-file", staged(&state_file))
            .state_dir(&state_file)
            .names_path(&state_file)
            .says("not a directory"),
    );
    let open_state = d.join("state-0755");
    mkdir(&open_state, 0o755, 0, 0);
    v.push(
        case("state-dir/mode-0755", staged(&open_state))
            .state_dir(&open_state)
            .names_path(&open_state)
            .says("0700"),
    );
    v.push(
        case("state-dir/root", staged(Path::new("/")))
            .names("\"/\"")
            .says("not / itself"),
    );

    // -------------------------------------------------------- privileges
    let mount_two = Argv::mount().lowers(two).maps().a(t);
    v.push(
        case("privileges/no-cap-sys-admin", mount_two.clone())
            .wrapped(&["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"])
            .names("CAP_SYS_ADMIN")
            .says("needs"),
    );
    v.push(
        case("privileges/unprivileged-user", mount_two)
            .wrapped(&[
                "setpriv",
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "--",
            ])
            .names("CAP_SYS_ADMIN")
            .says("needs"),
    );
    v.push(
        case(
            "privileges/umount-without-cap-sys-admin",
            Argv::umount().a(&f.mounted_overlay),
        )
        .wrapped(&["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"])
        .names_path(&f.mounted_overlay)
        .says("CAP_SYS_ADMIN"),
    );

    // ------------------------------------------------------------ umount
    let plain_dir = d.join("links");
    v.push(
        case("umount/not-a-mount-point", Argv::umount().a(&plain_dir))
            .names_path(&plain_dir)
            .says("not a mount point"),
    );
    v.push(
        case("umount/not-an-overlay", Argv::umount().a(&s.root))
            .names_path(&s.root)
            .says("tmpfs")
            .says("not an overlay"),
    );
    let gone = d.join("gone");
    v.push(
        case("umount/missing", Argv::umount().a(&gone))
            .names_path(&gone)
            .says("does not exist"),
    );
    v.push(
        case("umount/relative", Argv::umount().a("relative/mnt"))
            .names("\"relative/mnt\"")
            .says("relative"),
    );
    v.push(
        case("umount/regular-file", Argv::umount().a(&file))
            .names_path(&file)
            .says("not a directory"),
    );
    v.push(
        case("umount/no-target", Argv::umount())
            .usage()
            .names("<TARGET>"),
    );

    // ------------------------------------------------------ command line
    v.push(
        case("cli/unknown-subcommand", Argv::sub("frobnicate"))
            .usage()
            .names("'frobnicate'"),
    );
    v.push(
        case(
            "cli/misspelt-flag",
            Argv::mount().a("--lowr").a(&good[0]).maps().a(t),
        )
        .usage()
        .names("'--lowr'"),
    );
    v.push(
        case(
            "cli/three-paths",
            Argv::mount()
                .lowers(two)
                .maps()
                .a("overlay")
                .a(t)
                .a(d.join("third")),
        )
        .usage()
        .names_any(&["third", "TARGET"]),
    );

    // ------------------------------------------ mount namespace (-N)
    let ns = |ns: &OsStr, target: &Path| Argv::mount().lowers(two).maps().a("-N").a(ns).a(target);
    v.push(
        case(
            "namespace/user-namespace-file",
            ns(OsStr::new("/proc/self/ns/user"), t),
        )
        .names("\"/proc/self/ns/user\"")
        .says("not a mount namespace"),
    );
    let no_mnt_ns = d.join("no-mount-namespace");
    v.push(
        case("namespace/missing", ns(no_mnt_ns.as_os_str(), t))
            .names_path(&no_mnt_ns)
            .says_any(&["does not exist", "cannot be opened"]),
    );
    v.push(
        case("namespace/regular-file", ns(file.as_os_str(), t))
            .names_path(&file)
            .says("not a mount namespace"),
    );
    let no_target_in_ns = f.e.join("no-target-in-ns");
    v.push(
        case(
            "namespace/target-missing",
            ns(OsStr::new("/proc/self/ns/mnt"), &no_target_in_ns),
        )
        .names_path(&no_target_in_ns)
        .says("does not exist"),
    );

    // ------------------------------------------------ mount(8) form
    let lowerdir_two = format!("lowerdir={}:{}", good[0].display(), good[1].display());
    let m8 = |fs_type: &str, opts: &str| {
        Argv::mount()
            .a("-t")
            .a(fs_type)
            .a("overlay")
            .a("-o")
            .a(opts)
            .a(t)
    };
    v.push(
        case(
            "mount8/wrong-type",
            m8("ext4", &format!("{lowerdir_two},uidmap={MAP},gidmap={MAP}")),
        )
        .names("\"ext4\"")
        .says("overlay"),
    );
    v.push(
        case(
            "mount8/relative-lowerdir",
            m8(
                "overlay",
                &format!(
                    "lowerdir=rel/l3:{},uidmap={MAP},gidmap={MAP}",
                    good[1].display()
                ),
            ),
        )
        .names("\"rel/l3\"")
        .says("relative"),
    );
    let twice = format!(
        "lowerdir={},lowerdir={}",
        good[0].display(),
        good[1].display()
    );
    v.push(
        case(
            "mount8/lowerdir-twice",
            m8("overlay", &format!("{twice},uidmap={MAP},gidmap={MAP}")),
        )
        .names("lowerdir=")
        .says("twice"),
    );
    v.push(
        case(
            "mount8/uidmap-without-gidmap",
            m8("overlay", &format!("{lowerdir_two},uidmap={MAP}")),
        )
        .names("uidmap")
        .says("gid map"),
    );
    v.push(
        case(
            "mount8/zero-size-uidmap",
            m8(
                "overlay",
                &format!("{lowerdir_two},uidmap=0:100000:0,gidmap={MAP}"),
            ),
        )
        .names("0:100000:0")
        .says("size 0"),
    );
    v.push(
        case(
            "mount8/bad-x-mount-idmap",
            m8("overlay", &format!("{lowerdir_two},X-mount.idmap=garbage")),
        )
        .names("garbage")
        .says("field"),
    );
    v.push(
        case(
            "mount8/datadir-without-plus",
            m8(
                "overlay",
                &format!("{lowerdir_two},datadir=/x,uidmap={MAP},gidmap={MAP}"),
            ),
        )
        .names("datadir=/x")
        .says("not an overlay option"),
    );

    // ------------------------------------------------------ --oci-config
    let oci = |config: &Path| Argv::mount().lowers(two).a("--oci-config").a(config).a(t);
    let no_config = d.join("no-config.json");
    v.push(
        case("oci-config/missing", oci(&no_config))
            .names(no_config.display().to_string())
            .says_any(&["does not exist", "no such file", "cannot be read"]),
    );
    let not_json = d.join("not-json.json");
    write_file(&not_json, "nope\n", 0o644, 0, 0);
    v.push(
        case("oci-config/not-json", oci(&not_json))
            .names(not_json.display().to_string())
            .says("JSON"),
    );
    let no_maps = d.join("no-mappings.json");
    write_file(&no_maps, "{}\n", 0o644, 0, 0);
    v.push(
        case("oci-config/no-mappings", oci(&no_maps))
            .names(no_maps.display().to_string())
            .says("uidMappings"),
    );
    for c in &mut v {
        c.program = f.public_binary.clone();
        c.scratch = f.scratch.clone();
    }
    v
}

/// `DIR/uw/NAME/upper` and `…/work`, empty.
fn upper_work(d: &Path, name: &str) -> (PathBuf, PathBuf) {
    let base = d.join("uw").join(name);
    let (u, w) = (base.join("upper"), base.join("work"));
    mkdir(&u, 0o755, 0, 0);
    mkdir(&w, 0o755, 0, 0);
    (u, w)
}

/// A valid host-staged state dir (root-owned 0700), made up front so that a
/// case's only change there is the private state tmpfs.
fn state_dir(d: &Path, name: &str) -> PathBuf {
    let p = d.join(name);
    mkdir(&p, 0o700, 0, 0);
    p
}

// ------------------------------------------------------------- running

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Plain,
    Json,
    Verbose,
}

/// Something a run got wrong.
#[derive(Debug)]
struct Problem {
    /// A breach of "nothing changed" rather than of the message.
    safety: bool,
    what: String,
}

type Print = BTreeMap<PathBuf, EntryPrint>;

fn prints(roots: &[PathBuf]) -> Vec<Print> {
    roots.iter().map(|r| fingerprint(r)).collect()
}

/// Trees whose fingerprint changed since `before`.
fn tree_changes(roots: &[PathBuf], before: &[Print]) -> Vec<String> {
    roots
        .iter()
        .zip(before)
        .filter_map(|(root, print)| {
            let diff = fingerprint_diff(print, &fingerprint(root));
            (!diff.is_empty()).then(|| format!("tree {} changed: {diff:?}", root.display()))
        })
        .collect()
}

/// What one run may leave behind besides tree changes.
struct Snapshot {
    fds: BTreeSet<i32>,
    mounts: Vec<MountEntry>,
}

fn snapshot() -> Snapshot {
    Snapshot {
        mounts: mounts(),
        fds: fds(),
    }
}

/// Processes, fds and mounts left behind since `before`; then undoes what
/// can be undone (kills and reaps leftover processes, detaches unexpected
/// mounts) so later cases start clean. `allowed_state` is where
/// host-staged may leave its private state tmpfs.
fn leftovers(before: &Snapshot, allowed_state: Option<&Path>) -> Vec<String> {
    let mut found = Vec::new();
    let children = child_processes();
    if !children.is_empty() {
        let described: Vec<String> = children
            .iter()
            .map(|p| {
                let cmd = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                format!("{p} ({})", String::from_utf8_lossy(&cmd).replace('\0', " "))
            })
            .collect();
        found.push(format!("processes left behind: {described:?}"));
        reap(&children);
    }
    let fds_after = fds();
    if fds_after != before.fds {
        found.push(format!(
            "fds changed in the test process: {:?} -> {:?}",
            before.fds, fds_after
        ));
    }
    let after = mounts();
    let gone: Vec<&MountEntry> = before
        .mounts
        .iter()
        .filter(|b| !after.iter().any(|a| a.mount_id == b.mount_id))
        .collect();
    if !gone.is_empty() {
        found.push(format!("mounts removed: {gone:?}"));
    }
    let mut added: Vec<&MountEntry> = after
        .iter()
        .filter(|a| !before.mounts.iter().any(|b| b.mount_id == a.mount_id))
        .filter(|a| {
            !(a.fs_type == "tmpfs"
                && a.source == "idoverlay-state"
                && allowed_state.is_some_and(|s| a.mount_point == s))
        })
        .collect();
    if !added.is_empty() {
        found.push(format!(
            "mounts added: {:?}",
            added
                .iter()
                .map(|m| format!("{} {} {}", m.mount_point.display(), m.fs_type, m.source))
                .collect::<Vec<_>>()
        ));
        added.sort_by_key(|m| std::cmp::Reverse(m.mount_id));
        for m in added {
            let _ = rustix::mount::unmount(&m.mount_point, rustix::mount::UnmountFlags::DETACH);
        }
    }
    found
}

/// Kills and reaps processes left behind (reparented to this subreaper).
fn reap(pids: &[u32]) {
    use rustix::process::{kill_process, waitpid, Pid, Signal, WaitOptions};
    for &p in pids {
        if let Some(pid) = Pid::from_raw(p as i32) {
            let _ = kill_process(pid, Signal::KILL);
            let _ = waitpid(Some(pid), WaitOptions::empty());
        }
    }
}

fn invoke(case: &Case, mode: Mode) -> Output {
    let mut args = case.args.0.clone();
    match mode {
        Mode::Plain => {}
        Mode::Json => {
            if !args.is_empty() {
                args.insert(1, "--json".into());
            }
        }
        Mode::Verbose => args.insert(0, "-v".into()),
    }
    let mut cmd = match case.wrap.split_first() {
        None => Command::new(&case.program),
        Some((wrapper, wrapper_args)) => {
            let mut c = Command::new(wrapper);
            c.args(wrapper_args).arg(&case.program);
            c
        }
    };
    cmd.args(&args);
    captured(cmd, &case.scratch)
}

/// Runs a command with its stdout and stderr in files, not pipes: a
/// process it leaves behind holding them open cannot hang the test (it is
/// found and reaped instead). Each run gets files of its own.
fn captured(mut cmd: Command, scratch: &Path) -> Output {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let dir = scratch.join(format!("out-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
    fs::create_dir(&dir).unwrap();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Closes the Command's copies of the files before fds are counted.
    drop(cmd);
    let out = Output {
        status,
        stdout: fs::read(&out_path).unwrap(),
        stderr: fs::read(&err_path).unwrap(),
    };
    for file in [&out_path, &err_path] {
        fs::remove_file(file).unwrap();
    }
    fs::remove_dir(&dir).unwrap();
    out
}

/// What one case did, for the report.
struct Outcome {
    name: String,
    /// Refused by clap itself.
    by_clap: bool,
    problems: Vec<Problem>,
    /// stderr of the plain run.
    stderr: String,
    status: Option<i32>,
}

/// Runs a case: plainly, then (unless clap refused it) with `--json`, and
/// with `-v` when asked; each run checked for leftovers and its message,
/// the trees checked across all runs.
fn run_case(case: &Case, shared_roots: &[PathBuf]) -> Outcome {
    let roots: Vec<PathBuf> = shared_roots
        .iter()
        .chain(&case.extra_roots)
        .cloned()
        .collect();
    let trees_before = prints(&roots);
    let mut problems = Vec::new();
    let mut outcome = Outcome {
        name: case.name.clone(),
        by_clap: false,
        problems: Vec::new(),
        stderr: String::new(),
        status: None,
    };
    let mut modes = vec![Mode::Plain];
    while let Some(mode) = modes.pop() {
        let before = snapshot();
        let out = invoke(case, mode);
        for what in leftovers(&before, case.state_dir.as_deref()) {
            problems.push(Problem {
                safety: true,
                what: format!("{mode:?}: {what}"),
            });
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut msg = |what: String| {
            problems.push(Problem {
                safety: false,
                what: format!("{mode:?}: {what}"),
            })
        };
        if out.status.success() {
            msg("exit status 0: the bad input was accepted".into());
        }
        match mode {
            Mode::Plain if case.usage && err.starts_with("error: ") => {
                outcome.by_clap = true;
                check_clap(case, &out, &err, &mut msg);
            }
            Mode::Plain => {
                if let Some(line) = check_one_line(&err, &mut msg) {
                    check_contents(case, line, &mut msg);
                }
                if !out.stdout.is_empty() {
                    msg(format!(
                        "stdout not empty without --json: {:?}",
                        String::from_utf8_lossy(&out.stdout)
                    ));
                }
                if case.refused_before_any_clone {
                    modes.push(Mode::Verbose);
                }
                modes.push(Mode::Json);
            }
            Mode::Json => {
                let line = check_one_line(&err, &mut msg);
                check_json(&out, line, outcome.status, &mut msg);
            }
            Mode::Verbose => check_no_clone_before_refusal(&err, &mut msg),
        }
        if mode == Mode::Plain {
            outcome.stderr = err;
            outcome.status = out.status.code();
        }
    }
    for what in tree_changes(&roots, &trees_before) {
        problems.push(Problem { safety: true, what });
    }
    outcome.problems = problems;
    outcome
}

/// Exactly one `\n`-terminated line starting with "idoverlay: ", with no
/// other control character; returns the message after the prefix.
fn check_one_line<'a>(err: &'a str, msg: &mut impl FnMut(String)) -> Option<&'a str> {
    let Some(body) = err.strip_suffix('\n') else {
        msg(format!("stderr is not one \\n-terminated line: {err:?}"));
        return None;
    };
    if body.contains('\n') {
        msg(format!(
            "stderr has {} lines, not one: {err:?}",
            err.lines().count()
        ));
        return None;
    }
    if body.chars().any(char::is_control) {
        msg(format!("stderr has a control character: {err:?}"));
    }
    match body.strip_prefix("idoverlay: ") {
        Some(line) => Some(line),
        None => {
            msg(format!(
                "stderr does not start with \"idoverlay: \": {err:?}"
            ));
            None
        }
    }
}

fn check_contents(case: &Case, line: &str, msg: &mut impl FnMut(String)) {
    for alternatives in &case.names {
        if !alternatives.iter().any(|n| line.contains(n.as_str())) {
            msg(format!(
                "message does not name the bad input (one of {alternatives:?}): {line:?}"
            ));
        }
    }
    let lower = line.to_lowercase();
    for alternatives in &case.says {
        if !alternatives
            .iter()
            .any(|s| lower.contains(&s.to_lowercase()))
        {
            msg(format!(
                "message does not say what is wrong (one of {alternatives:?}): {line:?}"
            ));
        }
    }
}

/// clap's own usage errors: exit status 2, "error: …", the argument named.
fn check_clap(case: &Case, out: &Output, err: &str, msg: &mut impl FnMut(String)) {
    if out.status.code() != Some(2) {
        msg(format!(
            "clap usage error should exit 2, got {:?}",
            out.status.code()
        ));
    }
    if !err.starts_with("error: ") {
        msg(format!("not a clap usage error: {err:?}"));
    }
    check_contents(case, err, msg);
    if !out.stdout.is_empty() {
        msg("stdout not empty".into());
    }
}

fn check_json(
    out: &Output,
    line: Option<&str>,
    plain_status: Option<i32>,
    msg: &mut impl FnMut(String),
) {
    if out.status.code() != plain_status {
        msg(format!(
            "exit status {:?} with --json, {plain_status:?} without",
            out.status.code()
        ));
    }
    let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        Err(e) => {
            msg(format!(
                "stdout is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out.stdout)
            ));
            return;
        }
    };
    let Some(error) = v.get("error").and_then(|e| e.as_object()) else {
        msg(format!("no \"error\" object in {v}"));
        return;
    };
    for key in ["kind", "message", "errno", "path"] {
        if !error.contains_key(key) {
            msg(format!("\"error\" lacks {key:?}: {v}"));
        }
    }
    if error
        .get("kind")
        .and_then(|k| k.as_str())
        .is_none_or(str::is_empty)
    {
        msg(format!("\"kind\" is not a word: {v}"));
    }
    if let Some(line) = line {
        if error.get("message").and_then(|m| m.as_str()) != Some(line) {
            msg(format!(
                "JSON message differs from the stderr line {line:?}: {v}"
            ));
        }
    }
}

/// With `-v`, the steps before the refusal: nothing cloned or staged.
fn check_no_clone_before_refusal(err: &str, msg: &mut impl FnMut(String)) {
    let lines: Vec<&str> = err.lines().collect();
    let steps = &lines[..lines.len().saturating_sub(1)];
    let cloned: Vec<&&str> = steps
        .iter()
        .filter(|l| {
            l.contains(": staged ")
                || l.contains("staging in ")
                || l.contains("staged shared parent")
                || l.contains("clone + idmap")
        })
        .collect();
    if !cloned.is_empty() {
        msg(format!(
            "clones made before the bad input was refused: {cloned:?}"
        ));
    }
}

// ----------------------------------------------------- positive controls

/// Layer names overlay's string interfaces treat specially.
const ODD_NAMES: [&str; 7] = ["a:b", "c,d", "e\\f", "g=h", "i j", "k\nl", "m\\:n,o"];

struct Control {
    name: &'static str,
    extra: Vec<OsString>,
    state_dir: Option<PathBuf>,
    expect_strategy: &'static str,
}

/// Odd-named layers (with decoys where a misparse would point), an odd
/// upper/work pair and target, mounted with the CLI and unmounted again.
fn odd_names_control(f: &Fixtures, control: &Control) -> Vec<String> {
    let mut problems = Vec::new();
    let base = f.e.join(format!("odd-{}", control.name));
    let parent = base.join("p:,= \\x");
    let mut lowers = Vec::new();
    for (i, name) in ODD_NAMES.iter().enumerate() {
        let l = parent.join(name);
        write_file(&l.join(format!("from-{i}")), name, 0o644, 1000, 1000);
        lowers.push(l);
    }
    for decoy in ["a", "b", "c", "d", "ef", "i", "k", "m:n"] {
        write_file(&parent.join(decoy).join("decoy"), "wrong", 0o644, 0, 0);
    }
    let uw = base.join("u p:,");
    let (upper, work) = (uw.join("up,per"), uw.join("wo:rk"));
    mkdir(&upper, 0o755, 0, 0);
    mkdir(&work, 0o755, 0, 0);
    let target = base.join("t:,=\\ x\ny");
    mkdir(&target, 0o755, 0, 0);

    let roots = vec![parent.clone()];
    let trees = prints(&roots);
    let before = snapshot();
    let argv = Argv::mount()
        .a("--json")
        .lowers(&lowers)
        .upper_work(&upper, &work)
        .maps();
    let argv = control.extra.iter().fold(argv, |a, x| a.a(x)).a(&target);
    let mut cmd = Command::new(&f.public_binary);
    cmd.args(&argv.0);
    let out = captured(cmd, &f.scratch);
    let mut p = |what: String| problems.push(format!("{}: {what}", control.name));
    if out.status.success() && out.stderr.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) if v["strategy"] == control.expect_strategy => {}
            Ok(v) => p(format!("wrong strategy: {v}")),
            Err(e) => p(format!("stdout is not JSON: {e}")),
        }
        for (i, name) in ODD_NAMES.iter().enumerate() {
            let file = target.join(format!("from-{i}"));
            match fs::read_to_string(&file) {
                Ok(text) if text == *name => {}
                other => p(format!("{}: {other:?}, want {name:?}", file.display())),
            }
            if fs::symlink_metadata(&file).is_ok() && owner(&file) != (101000, 101000) {
                p(format!("{}: owner {:?}", file.display(), owner(&file)));
            }
        }
        if target.join("decoy").exists() {
            p("a decoy shows through: a name was misparsed".into());
        }
        let entries = fs::read_dir(&target).map(|r| r.count()).unwrap_or(0);
        if entries != ODD_NAMES.len() {
            p(format!("{entries} entries in the merged dir"));
        }
        if fs::write(target.join("written"), "x").is_err() || !upper.join("written").exists() {
            p("a write through the mount did not land in the upper dir".into());
        }
        let mut cmd = Command::new(&f.public_binary);
        cmd.arg("umount").arg(&target);
        let out = captured(cmd, &f.scratch);
        if !out.status.success() {
            p(format!("umount failed: {}", stderr(&out)));
        }
    } else {
        p(format!(
            "refused valid odd names ({:?}): {}",
            out.status.code(),
            stderr(&out)
        ));
    }
    let found = leftovers(&before, control.state_dir.as_deref())
        .into_iter()
        .chain(tree_changes(&roots, &trees));
    problems.extend(found.map(|what| format!("{}: {what}", control.name)));
    problems
}

/// `--userns FILE` of a namespace with maps: the layers show mapped owners.
fn userns_file_control(f: &Fixtures) -> Vec<String> {
    let mut problems = Vec::new();
    let roots = f.layers.clone();
    let trees = prints(&roots);
    let before = snapshot();
    let mut cmd = Command::new(&f.public_binary);
    cmd.args(
        Argv::mount()
            .lowers(&f.layers)
            .a("--userns")
            .a(&f.mapped_userns)
            .a(&f.target)
            .0,
    );
    let out = captured(cmd, &f.scratch);
    if out.status.success() {
        for (path, want) in [
            ("etc/hostname", (100000, 100000)),
            ("home/app/notes.txt", (101000, 101000)),
        ] {
            let got = owner(&f.target.join(path));
            if got != want {
                problems.push(format!(
                    "userns-file: {path} owned by {got:?}, want {want:?}"
                ));
            }
        }
        let mut cmd = Command::new(&f.public_binary);
        cmd.arg("umount").arg(&f.target);
        let out = captured(cmd, &f.scratch);
        if !out.status.success() {
            problems.push(format!("userns-file: umount failed: {}", stderr(&out)));
        }
    } else {
        problems.push(format!("userns-file: refused: {}", stderr(&out)));
    }
    let found = leftovers(&before, None)
        .into_iter()
        .chain(tree_changes(&roots, &trees));
    problems.extend(found.map(|what| format!("userns-file: {what}")));
    problems
}

// ------------------------------------------------------------------ test

#[test]
fn bad_input_is_refused_in_one_line_and_changes_nothing() {
    in_private_ns("bad_input::battery", |s| {
        let started = Instant::now();
        // Orphans of the binary (a userns helper it failed to reap) are
        // reparented here, so child_processes() sees them. The argument is
        // a flag; rustix passes the pid's value, which is non-zero.
        rustix::process::set_child_subreaper(rustix::process::Pid::from_raw(1))
            .expect("PR_SET_CHILD_SUBREAPER");
        let f = fixtures(s);
        let table = cases(&f, s);
        let mut names = BTreeSet::new();
        for c in &table {
            assert!(names.insert(c.name.as_str()), "duplicate case {}", c.name);
        }
        for gap in KNOWN_GAPS {
            assert!(
                names.contains(gap.case),
                "KNOWN_GAPS names {:?}, which is not in the table",
                gap.case
            );
        }
        assert!(child_processes().is_empty(), "children before the battery");

        let roots = vec![f.d.clone(), f.e.clone()];
        let outcomes: Vec<Outcome> = table.iter().map(|c| run_case(c, &roots)).collect();

        // The overlay the umount cases used is still there; remove it.
        run(Command::new(&f.public_binary)
            .arg("umount")
            .arg(&f.mounted_overlay));

        let controls = [
            Control {
                name: "detached",
                extra: vec!["--strategy".into(), "detached".into()],
                state_dir: None,
                expect_strategy: "detached",
            },
            Control {
                name: "private-ns",
                extra: vec!["--strategy".into(), "private-ns".into()],
                state_dir: None,
                expect_strategy: "private-ns",
            },
            Control {
                name: "host-staged",
                extra: vec![
                    "--strategy".into(),
                    "host-staged".into(),
                    "--state-dir".into(),
                    // Staged names are relative to the staging dir: a state
                    // dir named like this is fine.
                    state_dir(&f.d, "state-control:, x").into(),
                ],
                state_dir: Some(f.d.join("state-control:, x")),
                expect_strategy: "host-staged",
            },
        ];
        let mut control_problems: Vec<String> = controls
            .iter()
            .flat_map(|c| odd_names_control(&f, c))
            .collect();
        control_problems.extend(userns_file_control(&f));

        let mut failures = Vec::new();
        let mut gaps_seen = Vec::new();
        for o in &outcomes {
            let gap = KNOWN_GAPS.iter().find(|g| g.case == o.name);
            match gap {
                None if !o.problems.is_empty() => failures.push(format!(
                    "{} (stderr {:?}, exit {:?}):\n    {}",
                    o.name,
                    o.stderr,
                    o.status,
                    o.problems
                        .iter()
                        .map(|p| p.what.as_str())
                        .collect::<Vec<_>>()
                        .join("\n    ")
                )),
                None => {}
                Some(g) if o.problems.is_empty() => failures.push(format!(
                    "{} passes now: remove it from KNOWN_GAPS ({})",
                    o.name, g.reason
                )),
                Some(g) => {
                    let unexcused: Vec<&Problem> = o
                        .problems
                        .iter()
                        .filter(|p| p.safety && !g.safety)
                        .collect();
                    if !unexcused.is_empty() {
                        failures.push(format!(
                            "{}: known message gap, but nothing-changed breached: {unexcused:?}",
                            o.name
                        ));
                    }
                    gaps_seen.push(format!(
                        "  {}: {}\n    got (exit {:?}): {}    because: {}",
                        o.name,
                        g.reason,
                        o.status,
                        o.stderr,
                        o.problems
                            .iter()
                            .map(|p| p.what.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
            }
        }
        failures.extend(control_problems);
        let by_clap: Vec<&str> = outcomes
            .iter()
            .filter(|o| o.by_clap)
            .map(|o| o.name.as_str())
            .collect();
        eprintln!(
            "bad_input: {} cases ({} refused by clap itself: {by_clap:?}), {} known gaps, \
             {} positive controls, {:.1}s",
            outcomes.len(),
            by_clap.len(),
            gaps_seen.len(),
            controls.len() + 1,
            started.elapsed().as_secs_f64()
        );
        if !gaps_seen.is_empty() {
            eprintln!("known gaps:\n{}", gaps_seen.join("\n"));
        }
        assert!(
            failures.is_empty(),
            "{} failure(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(outcomes.len() >= 45);
    });
}

/// For case `name`: a layer set of its own under `d`, a directory `nested`
/// inside its first layer and a directory `other` beside the layers;
/// returns (the set's directory, layers, nested, other).
fn layers_with_a_dir_inside(d: &Path, name: &str) -> (PathBuf, Vec<PathBuf>, PathBuf, PathBuf) {
    let own = d.join("uw").join(name.replace('/', "-"));
    let layers = make_layers(&own).dirs;
    let nested = layers[0].join("nested");
    mkdir(&nested, 0o755, 0, 0);
    let other = own.join("other");
    mkdir(&other, 0o755, 0, 0);
    (own, layers, nested, other)
}
