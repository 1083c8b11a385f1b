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
//! Each case is a test of its own (`cargo test --test bad_input -- --list`;
//! run one with `cargo test --test bad_input -- layer/missing`), the cases
//! grouped by kind of input in this directory's files. The fixtures are made
//! once, in one private mount namespace the whole binary runs in; the cases
//! run one at a time by default, because each counts this process's fds and
//! children (it is a child subreaper, so a helper process orphaned by the
//! binary is reparented here and seen).

#[path = "../common/mod.rs"]
mod common;

mod command_line;
mod layers;
mod maps;
mod mount_form;
mod namespace;
mod oci_config;
mod options;
mod privileges;
mod state_dir;
mod strategy;
mod targets;
mod umount;
mod upper_work;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::mountinfo::MountEntry;
use common::*;

/// The map every case uses unless it is about maps.
const MAP: &str = "0:100000:65536";

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

    fn state(self, state: &Path) -> Self {
        self.a("--state-dir").a(state)
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
    /// None of these may appear, case-insensitively (what a misleading
    /// message used to say instead).
    never_says: Vec<String>,
    /// The working directory of the runs (relative paths are resolved
    /// from it); the scratch root when not given, never the test's own.
    cwd: Option<PathBuf>,
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
        never_says: Vec::new(),
        cwd: None,
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

    fn never_says(mut self, text: impl Into<String>) -> Self {
        self.never_says.push(text.into());
        self
    }

    /// Runs from `dir`: relative paths in the case are resolved from it.
    fn run_in(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
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
    copy_of_the_binary(&public_binary);

    let mounted_overlay = d.join("mounted");
    mkdir(&mounted_overlay, 0o755, 0, 0);
    run(Command::new(&public_binary)
        .env("IDOVERLAY_PROBE_CACHE", "off")
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

/// The whole table, by kind of input. Directories a case needs of its own
/// are made here, before any case runs.
fn cases(f: &Fixtures, s: &Scratch) -> Vec<Case> {
    let mut v = Vec::new();
    layers::cases(f, s, &mut v);
    upper_work::cases(f, s, &mut v);
    targets::cases(f, s, &mut v);
    maps::cases(f, s, &mut v);
    options::cases(f, s, &mut v);
    strategy::cases(f, s, &mut v);
    state_dir::cases(f, s, &mut v);
    privileges::cases(f, s, &mut v);
    umount::cases(f, s, &mut v);
    command_line::cases(f, s, &mut v);
    namespace::cases(f, s, &mut v);
    mount_form::cases(f, s, &mut v);
    oci_config::cases(f, s, &mut v);
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
    // Relative paths never reach the worktree the tests run from.
    cmd.current_dir(case.cwd.as_ref().unwrap_or(&case.scratch));
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
    // No probe report kept in the default state dir (/run/idoverlay).
    cmd.env("IDOVERLAY_PROBE_CACHE", "off");
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
                what: format!("{mode:?}: {what}"),
            });
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut msg = |what: String| {
            problems.push(Problem {
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
        problems.push(Problem { what });
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
    for wrong in &case.never_says {
        if lower.contains(&wrong.to_lowercase()) {
            msg(format!(
                "message says {wrong:?}, which is not what is wrong: {line:?}"
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
    // Owned by container root's host ids: a correct call, without warnings.
    mkdir(&upper, 0o755, 100000, 100000);
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

// ------------------------------------------------------------------ main

/// The problems of one case's outcome, as one failure message.
fn failure(o: &Outcome) -> Option<String> {
    (!o.problems.is_empty()).then(|| {
        format!(
            "{} (stderr {:?}, exit {:?}):\n    {}",
            o.name,
            o.stderr,
            o.status,
            o.problems
                .iter()
                .map(|p| p.what.as_str())
                .collect::<Vec<_>>()
                .join("\n    ")
        )
    })
}

fn main() -> std::process::ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    // One case at a time: each counts this process's fds and children.
    args.test_threads.get_or_insert(1);
    if !privileged("bad_input") {
        return std::process::ExitCode::SUCCESS;
    }
    // The whole binary in one private mount namespace (no other thread
    // exists yet): every mount the fixtures and cases make stays in it.
    enter_private_mount_ns();
    // Orphans of the binary (a userns helper it failed to reap) are
    // reparented here, so child_processes() sees them. The argument is a
    // flag; rustix passes the pid's value, which is non-zero.
    rustix::process::set_child_subreaper(rustix::process::Pid::from_raw(1))
        .expect("PR_SET_CHILD_SUBREAPER");
    let scratch = Scratch::new("bad_input");
    let f = std::sync::Arc::new(fixtures(&scratch));
    let table = cases(&f, &scratch);
    let mut names = BTreeSet::new();
    for c in &table {
        assert!(names.insert(c.name.clone()), "duplicate case {}", c.name);
    }
    assert!(table.len() >= 45);
    assert!(child_processes().is_empty(), "children before the battery");
    let roots = std::sync::Arc::new(vec![f.d.clone(), f.e.clone()]);
    let mut trials: Vec<libtest_mimic::Trial> = table
        .into_iter()
        .map(|case| {
            let roots = roots.clone();
            libtest_mimic::Trial::test(case.name.clone(), move || {
                match failure(&run_case(&case, &roots)) {
                    None => Ok(()),
                    Some(f) => Err(f.into()),
                }
            })
        })
        .collect();
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
    for control in controls {
        let f = f.clone();
        trials.push(libtest_mimic::Trial::test(
            format!("control/odd-names-{}", control.name),
            move || match odd_names_control(&f, &control).as_slice() {
                [] => Ok(()),
                problems => Err(problems.join("\n").into()),
            },
        ));
    }
    {
        let f = f.clone();
        trials.push(libtest_mimic::Trial::test(
            "control/userns-file",
            move || match userns_file_control(&f).as_slice() {
                [] => Ok(()),
                problems => Err(problems.join("\n").into()),
            },
        ));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    // The overlay the umount cases used is still there; remove it, then the
    // scratch goes with its namespace.
    run(Command::new(&f.public_binary)
        .arg("umount")
        .arg(&f.mounted_overlay));
    drop(scratch);
    conclusion.exit_code()
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
