//! `idoverlay-snapshotter`: containerd's snapshots service on a unix
//! socket, for `[proxy_plugins.idoverlay]` (see docs/containerd.md).
#![deny(unsafe_code)]

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use containerd_snapshots::tonic::transport::Server;
use idoverlay_snapshotter::{log, service::Service, Snapshots};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

/// A containerd proxy snapshotter: overlayfs snapshots, and idmapped ones
/// assembled by idoverlay (detached idmapped layers, no temporary mounts).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where snapshots and the metadata store live.
    #[arg(long, default_value = "/var/lib/idoverlay-snapshotter")]
    root: PathBuf,
    /// The unix socket containerd connects to (proxy_plugins address).
    #[arg(long, default_value = "/run/idoverlay-snapshotter/snapshotter.sock")]
    address: PathBuf,
    /// Say more: -v each request, -vv details.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// With the snapshotter stopped: report, as JSON, whether the store, the
    /// snapshot directories and the overlays under --root agree (exit 1 if
    /// not). Changes nothing; the next start cleans what it reports.
    Check,
}

/// Removes a socket left by a previous run, and only that: the path must
/// be a socket and nothing may answer on it.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "{} is in use: another snapshotter answers on it",
            path.display()
        );
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))
}

/// Errors are one line (`{:#}`: each cause after a colon), whatever
/// `RUST_BACKTRACE` says: journald shows one entry per failure. `check`
/// exits 1 for problems found, 2 when it could not look.
fn main() {
    if let Err(e) = run() {
        eprintln!("idoverlay-snapshotter: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    log::set_verbosity(args.verbose);
    idoverlay::raise_fd_limit();
    if let Some(Command::Check) = args.command {
        let report = idoverlay_snapshotter::snapshots::check(&args.root)
            .with_context(|| format!("checking {}", args.root.display()))?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        std::process::exit(if report.problems.is_empty() { 0 } else { 1 });
    }
    let (snapshots, report) =
        Snapshots::open(&args.root).with_context(|| format!("opening {}", args.root.display()))?;
    log::notice(&format!(
        "root {}: found {} idmapped overlay(s) again; cleaned {} director(ies) and {} mount(s){}",
        snapshots.storage().root().display(),
        report.found_mounts.len(),
        report.removed_dirs.len(),
        report.removed_mounts.len(),
        if report.kept_dirs.is_empty() {
            String::new()
        } else {
            format!("; could not remove: {}", report.kept_dirs.join("; "))
        }
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(|| {
            if let Err(e) = idoverlay_snapshotter::sys::unshare_fs() {
                log::warn(&format!("unshare(CLONE_FS) on a worker thread: {e}"));
            }
        })
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(Arc::new(snapshots), &args.address))
}

async fn serve(snapshots: Arc<Snapshots>, address: &Path) -> anyhow::Result<()> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    clear_stale_socket(address)?;
    let listener = UnixListener::bind(address)
        .with_context(|| format!("listening on {}", address.display()))?;
    // containerd runs as root; nobody else has business on this socket.
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o600))?;
    log::notice(&format!("serving on {}", address.display()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let result = Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(Service::new(
            snapshots,
        ))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    // Overlays of running containers stay attached; the next start finds them.
    let _ = std::fs::remove_file(address);
    log::notice("stopped");
    result.context("serving")
}
