//! Fixtures for the snapshotter's privileged tests, after the library's
//! tests/common: each test body runs on its own thread inside a private
//! mount namespace, on a tmpfs mounted there over a fresh directory, so no
//! mount it makes is seen by the host and nothing needs deleting after
//! (only the then empty directory is removed).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

// The library's tests' mount table reader (the library keeps its own private).
#[path = "../../../tests/common/mountinfo.rs"]
pub mod mountinfo;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};

/// Whether the process may mount; without it privileged tests skip, unless
/// IDOVERLAY_REQUIRE_PRIVILEGED=1 makes that a failure (as in CI).
pub fn privileged(test: &str) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if cap_eff & (1 << 21) != 0 {
        return true;
    }
    if std::env::var("IDOVERLAY_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("{test}: needs CAP_SYS_ADMIN, and IDOVERLAY_REQUIRE_PRIVILEGED=1 forbids skipping");
    }
    eprintln!("SKIP {test}: needs CAP_SYS_ADMIN (run as root)");
    false
}

/// Runs `body` in a private mount namespace with a scratch tmpfs.
pub fn in_private_ns(test: &str, body: impl FnOnce(&Path) + Send + 'static) {
    if !privileged(test) {
        return;
    }
    let name = test.to_string();
    let handle = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            idoverlay_snapshotter::sys::enter_private_mount_ns().expect("private mount ns");
            let base = std::env::temp_dir();
            let root = (0..1000)
                .map(|i| {
                    base.join(format!(
                        "idoverlay-snapshotter-{name}-{}-{i}",
                        std::process::id()
                    ))
                })
                .find(|p| fs::DirBuilder::new().mode(0o700).create(p).is_ok())
                .expect("scratch dir");
            run(Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    "mode=0755",
                    "idoverlay-snapshotter-test",
                ])
                .arg(&root));
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&root)));
            run(Command::new("umount").arg("-l").arg(&root));
            fs::remove_dir(&root).expect("remove the empty scratch dir");
            if let Err(p) = result {
                std::panic::resume_unwind(p);
            }
        })
        .expect("spawn");
    if let Err(p) = handle.join() {
        std::panic::resume_unwind(p);
    }
}

/// A fresh ext4 filesystem (an image in `scratch`, loop mounted in this
/// namespace) and its mount point: where directories have blocks of their
/// own (on tmpfs they have none).
#[allow(dead_code)]
pub fn ext4_dir(scratch: &Path, rel: &str) -> PathBuf {
    let image = scratch.join(format!("{rel}.img"));
    let mnt = scratch.join(rel);
    fs::create_dir_all(&mnt).unwrap();
    run(Command::new("truncate").args(["-s", "64M"]).arg(&image));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal"])
        .arg(&image));
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&image)
        .arg(&mnt));
    mnt
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A snapshotter process we started, ended by its pid when dropped.
pub struct Snapshotter {
    pub child: Child,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Snapshotter {
    /// Starts the binary on `scratch/root` and `scratch/snap.sock`, and waits
    /// until it says it serves.
    pub fn start(scratch: &Path) -> Snapshotter {
        let root = scratch.join("root");
        let socket = scratch.join("snap.sock");
        let log = scratch.join("snapshotter.log");
        let before = serving_lines(&log);
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_idoverlay-snapshotter"))
            .arg("--root")
            .arg(&root)
            .arg("--address")
            .arg(&socket)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start idoverlay-snapshotter");
        for _ in 0..400 {
            if serving_lines(&log) > before {
                return Snapshotter {
                    child,
                    root,
                    socket,
                    log,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "snapshotter did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// kill -9, as a crash would.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }

    /// SIGTERM, and wait.
    pub fn stop(mut self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> SnapshotsClient<Channel> {
        let path = self.socket.clone();
        let channel = Endpoint::try_from("http://[::]:0")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                tokio::net::UnixStream::connect(path.clone())
            }))
            .await
            .expect("connect");
        SnapshotsClient::new(channel)
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serving_lines(log: &Path) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("idoverlay-snapshotter: serving on"))
        .count()
}

/// The fs type mounted at `path` (the top-most mount there), from mountinfo.
pub fn mounted_type(path: &Path) -> Option<String> {
    mountinfo::read_self()
        .unwrap()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
        .map(|m| m.fs_type)
}

/// uid:gid of a path, not following a final symlink.
pub fn owner(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{}:{}", m.uid(), m.gid())
}

/// A tokio runtime on this thread (the namespace is the thread's).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
