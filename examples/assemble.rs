//! Assemble an idmapped overlay, keep it as a detached mount fd, then attach
//! it somewhere else — what a container runtime does when it moves the
//! rootfs into a container's mount namespace itself.
//!
//! Run as root (it mounts at TARGET; unmount with `idoverlay umount TARGET`):
//!
//! ```sh
//! cargo run --example assemble -- TARGET LAYER... [--map 0:100000:65536]
//! ```

use std::os::fd::{AsFd, AsRawFd};

use idoverlay::{IdMap, Overlay, Strategy};

fn main() {
    // Errors as their one line (Display), as a runtime would log them; a
    // `main` returning `Result` would print their Debug form.
    if let Err(e) = run() {
        eprintln!("assemble: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut map = "0:100000:65536".to_string();
    if let Some(i) = args.iter().position(|a| a == "--map") {
        map = args.get(i + 1).cloned().ok_or("--map needs a value")?;
        args.drain(i..=i + 1);
    }
    if args.len() < 3 {
        eprintln!("usage: assemble TARGET LAYER LAYER... [--map CONTAINER:HOST:SIZE]");
        std::process::exit(2);
    }
    let target = args.remove(0);
    let map: IdMap = map.parse()?;

    // Nothing is opened until assemble(); the same description can be
    // assembled many times, from many threads.
    let overlay = Overlay::new()
        .lowers(args.iter().map(String::as_str))
        .idmap(map.clone(), map)
        .strategy(Strategy::Auto);

    // A detached overlay: in no mount tree yet. A runtime could pass this
    // fd to a process in the container's mount namespace, or move it there
    // with move_mount(2) itself.
    let detached = overlay.assemble()?;
    println!(
        "assembled with {} as fd {}",
        detached.strategy(),
        detached.as_fd().as_raw_fd()
    );

    // Attach it here (dropping it instead would unmount it).
    let mounted = detached.attach(&target)?;
    println!(
        "attached at {} ({} strategy)",
        mounted.target.display(),
        mounted.strategy
    );
    let d = &mounted.description;
    println!(
        "layers {:?}, mount id {:?}",
        d.layers
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>(),
        d.mount_id
    );
    Ok(())
}
