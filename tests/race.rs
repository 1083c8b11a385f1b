//! Every path input raced: while idoverlay assembles, another thread swaps
//! the input's last component with a symlink to a secret directory (or, for
//! the work dir, with a victim directory whose `work/` holds files overlay
//! would delete), with `renameat2(RENAME_EXCHANGE)` in a tight loop, as a
//! user who can write the input's parent would. For each path input —
//! layer, upper, work, target, state dir — × every strategy and the
//! fallbacks of older kernels × each spelling (`DIR`, `DIR/`, `DIR/.`,
//! `DIR//`): every attempt either mounts exactly the directories meant or
//! is refused in one line, and nothing outside them is ever mounted, shown
//! or deleted. The secret and the victims are checked through fds held from
//! the start (so the swaps cannot fool the check itself), byte for byte,
//! after every attempt; the mount table after every attempt with the names
//! put back.
//!
//! The race must be real: each input reports how many attempts saw the
//! swapped-in entry (and were refused) and how many mounted; both must
//! happen.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use idoverlay::{Feature, IdMap, Overlay, Strategy};

/// Attempts per input, variant and spelling.
const ROUNDS: usize = 6;

/// How a path may be spelled: each must mean the directory itself.
const SPELLINGS: [&str; 4] = ["", "/", "/.", "//"];

/// A way of assembling: a strategy, and the kernel features it pretends
/// are missing (the code paths of older kernels).
#[derive(Clone, Copy, Debug)]
struct Variant {
    name: &'static str,
    strategy: Strategy,
    missing: &'static [Feature],
    /// `assemble()` then `attach()` rather than `mount()`.
    assemble: bool,
    idmap_upper: bool,
}

const VARIANTS: [Variant; 8] = [
    Variant {
        name: "detached",
        strategy: Strategy::Detached,
        missing: &[],
        assemble: false,
        idmap_upper: false,
    },
    Variant {
        name: "detached-assembled",
        strategy: Strategy::Detached,
        missing: &[],
        assemble: true,
        idmap_upper: false,
    },
    Variant {
        name: "detached-idmap-upper",
        strategy: Strategy::Detached,
        missing: &[],
        assemble: false,
        idmap_upper: true,
    },
    Variant {
        name: "private-ns",
        strategy: Strategy::PrivateNs,
        missing: &[],
        assemble: false,
        idmap_upper: false,
    },
    Variant {
        name: "private-ns-6.12",
        strategy: Strategy::PrivateNs,
        missing: &[Feature::OverlayFdLayers],
        assemble: false,
        idmap_upper: false,
    },
    Variant {
        name: "private-ns-6.1",
        strategy: Strategy::PrivateNs,
        missing: &[Feature::OverlayFdLayers, Feature::OverlayLowerdirPlus],
        assemble: false,
        idmap_upper: false,
    },
    Variant {
        name: "host-staged",
        strategy: Strategy::HostStaged,
        missing: &[],
        assemble: false,
        idmap_upper: false,
    },
    Variant {
        name: "host-staged-6.12",
        strategy: Strategy::HostStaged,
        missing: &[Feature::OverlayFdLayers],
        assemble: false,
        idmap_upper: false,
    },
];

impl Variant {
    /// `o` made this variant's way: idmapped (the upper too, if it says),
    /// its strategy and state dir, the features it pretends missing.
    fn apply(&self, o: Overlay, state: &Path) -> Overlay {
        let mut o = o
            .idmap(map(), map())
            .idmap_upper(self.idmap_upper)
            .strategy(self.strategy)
            .state_dir(state);
        for f in self.missing {
            o = o.pretend_missing(*f);
        }
        o
    }

    /// Mounts `o` at `target` this variant's way: at once, or assembled
    /// and then attached.
    fn mount(&self, o: &Overlay, target: &Path) -> idoverlay::Result<idoverlay::Mounted> {
        match self.assemble {
            true => o.assemble().and_then(|m| m.attach(target)),
            false => o.mount(target),
        }
    }
}

fn map() -> IdMap {
    "0:100000:65536".parse().unwrap()
}

/// What one test bed holds: layers, an upper/work pair and a target in an
/// attacker-writable directory `c` (0777), a secret directory and victims
/// nobody may touch, and the state dir's root-only parent.
struct Bed {
    root: PathBuf,
    c: PathBuf,
    lay: PathBuf,
    state_parent: PathBuf,
    secret: Held,
    victim: Held,
    state_victim: Held,
    prints: Vec<(String, PathBuf, Prints)>,
}

type Prints = std::collections::BTreeMap<PathBuf, EntryPrint>;

impl Bed {
    fn new(dir: &Path) -> Bed {
        let c = dir.join("c");
        mkdir(&c, 0o777, 0, 0);
        // The racing layer and the others, files owned by 0 and 1000.
        write_file(&c.join("l1/layer-file"), "l1", 0o644, 0, 0);
        let lay = dir.join("lay");
        write_file(&lay.join("l2/other-file"), "l2", 0o644, 1000, 1000);
        mkdir(&lay.join("l2/inside"), 0o755, 0, 0);
        mkdir(&c.join("upper"), 0o755, 0, 0);
        mkdir(&c.join("work"), 0o755, 0, 0);
        mkdir(&c.join("t"), 0o755, 0, 0);
        // What an attacker points the names at.
        let secret = dir.join("secret");
        write_file(&secret.join("shadow"), "secret", 0o600, 0, 0);
        mkdir(&secret.join("empty"), 0o700, 0, 0);
        mkdir(&secret, 0o700, 0, 0);
        let victim = c.join("victim");
        write_file(&victim.join("work/important.txt"), "keep", 0o600, 0, 0);
        write_file(&victim.join("work/sub/deeper.txt"), "keep", 0o600, 0, 0);
        write_file(&victim.join("notes"), "keep", 0o600, 0, 0);
        for (name, target) in [
            ("l1.evil", secret.clone()),
            // An upper that would make every write land in an image layer.
            ("upper.evil", lay.join("l2/inside")),
            ("t.evil", secret.clone()),
        ] {
            std::os::unix::fs::symlink(target, c.join(name)).unwrap();
        }
        let state_parent = dir.join("p");
        mkdir(&state_parent, 0o755, 0, 0);
        let state_victim = state_parent.join("state.victim");
        write_file(&state_victim.join("data"), "keep", 0o600, 0, 0);
        // Root-only like a state dir: only its contents tell it apart.
        mkdir(&state_victim, 0o700, 0, 0);
        mkdir(&state_victim.join("empty"), 0o700, 0, 0);
        // Pointed at an empty root-only directory: all a state dir needs
        // to look like one.
        std::os::unix::fs::symlink(secret.join("empty"), state_parent.join("state.evil")).unwrap();
        let mut bed = Bed {
            secret: Held::open(&secret),
            victim: Held::open(&victim),
            state_victim: Held::open(&state_victim),
            root: dir.to_path_buf(),
            c,
            lay,
            state_parent,
            prints: Vec::new(),
        };
        for (name, path) in [
            ("secret", bed.secret.path()),
            ("victim", bed.victim.path()),
            ("state victim", bed.state_victim.path()),
            ("layers", bed.lay.clone()),
        ] {
            let print = fingerprint(&path);
            bed.prints.push((name.to_string(), path, print));
        }
        bed
    }

    /// Nothing the attacker pointed at, and no layer, changed in any way.
    fn unchanged(&self, what: &str) {
        for (name, path, print) in &self.prints {
            let diff = fingerprint_diff(print, &fingerprint(path));
            assert!(diff.is_empty(), "{what}: {name} changed: {diff:?}");
        }
    }
}

/// One attempt's outcome.
#[derive(Default)]
struct Tally {
    mounted: usize,
    refused: usize,
}

impl Tally {
    /// Stops `swapper` (names put back) and says how the race went.
    fn report(&self, race: &str, swapper: Swapper) {
        let swaps = swapper.swaps();
        drop(swapper);
        eprintln!(
            "race {race}: {} mounted, {} refused, {swaps} swaps",
            self.mounted, self.refused
        );
    }
}

/// Which input is raced, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Input {
    Layer,
    Upper,
    Work,
    Target,
    StateDir,
}

impl Input {
    /// The two names swapped (in `c`, or in the state dir's parent).
    fn pair(self) -> (&'static str, &'static str) {
        match self {
            Input::Layer => ("l1", "l1.evil"),
            Input::Upper => ("upper", "upper.evil"),
            Input::Work => ("work", "victim"),
            Input::Target => ("t", "t.evil"),
            Input::StateDir => ("state", "state.evil"),
        }
    }
}

/// Races `input` for every variant and spelling; returns the tally.
fn race(bed: &Bed, input: Input, variants: &[Variant], state_swap_with: &str) -> Tally {
    let mut tally = Tally::default();
    let (a, b) = input.pair();
    let (dir, b) = match input {
        Input::StateDir => (bed.state_parent.clone(), state_swap_with),
        _ => (bed.c.clone(), b),
    };
    let swapper = Swapper::start(&dir, a, b);
    let raced = |spelling: &str| {
        let mut p = dir.join(a).into_os_string();
        p.push(spelling);
        PathBuf::from(p)
    };
    let plain = |name: &str| bed.c.join(name);
    let upper_held = Held::open(&plain("upper"));
    let target_held = Held::open(&plain("t"));
    for v in variants {
        for spelling in SPELLINGS {
            for round in 0..ROUNDS {
                let what = format!("{input:?} {} {spelling:?} #{round}", v.name);
                let mut state_held = None;
                if input == Input::StateDir {
                    // A fresh, empty state dir each time: the walk and the
                    // tmpfs mount are raced, not just the first attempt.
                    let state = bed.state_parent.join("state");
                    let _ = fs::remove_dir(&state);
                    mkdir(&state, 0o700, 0, 0);
                    state_held = Some(Held::open(&state));
                }
                let lower1 = if input == Input::Layer {
                    raced(spelling)
                } else {
                    plain("l1")
                };
                let upper = if input == Input::Upper {
                    raced(spelling)
                } else {
                    plain("upper")
                };
                let work = if input == Input::Work {
                    raced(spelling)
                } else {
                    plain("work")
                };
                let target = if input == Input::Target {
                    raced(spelling)
                } else {
                    plain("t")
                };
                let state = if input == Input::StateDir {
                    raced(spelling)
                } else {
                    bed.state_parent.join("fixed-state")
                };
                let o = Overlay::new()
                    .lower(&lower1)
                    .lower(bed.lay.join("l2"))
                    .upper(&upper)
                    .work(&work);
                let o = v.apply(o, &state);
                swapper.resume();
                let result = v.mount(&o, &target);
                // Names put back, unless the directory meant became a mount
                // point while it had the other name (it then cannot be
                // renamed until it is unmounted: done below).
                let restored = swapper.pause();
                // Where the real target is now.
                let t = target_held.current_path();
                match result {
                    Ok(_) => {
                        tally.mounted += 1;
                        let here: Vec<_> = mounts()
                            .into_iter()
                            .filter(|m| m.fs_type == "overlay")
                            .collect();
                        assert!(
                            here.len() == 1 && here[0].mount_point == t,
                            "{what}: the overlay is not (only) on the target {}: {here:#?}",
                            t.display()
                        );
                        assert!(
                            t.join("layer-file").exists() && t.join("other-file").exists(),
                            "{what}: the layers meant are not what is shown"
                        );
                        assert!(!t.join("shadow").exists(), "{what}: the secret is shown");
                        // A write lands in the very upper dir meant (with an
                        // idmapped upper, written by the container's root).
                        write_through(&t.join("written"), &what, v.idmap_upper);
                        // Lazily: `c` is 0777, where a plain unmount by name
                        // is refused (others could rename in between).
                        idoverlay::unmount_overlay(&t, true).unwrap();
                        let landed = upper_held.path().join("written");
                        assert_eq!(
                            fs::read_to_string(&landed).ok().as_deref(),
                            Some(what.as_str()),
                            "{what}: the write did not land in the upper dir"
                        );
                        fs::remove_file(&landed).unwrap();
                    }
                    Err(e) => {
                        tally.refused += 1;
                        let text = e.to_string();
                        assert!(!text.contains('\n'), "{what}: {text}");
                    }
                }
                if let Some(state) = &state_held {
                    // The state tmpfs, if any, went onto the very directory
                    // made for it (by fd), whatever its name by then.
                    let at = state.current_path();
                    let fixed = bed.state_parent.join("fixed-state");
                    let on_it: Vec<_> = mounts()
                        .into_iter()
                        .filter(|m| m.source == "idoverlay-state" && m.mount_point != fixed)
                        .collect();
                    assert!(
                        on_it.iter().all(|m| m.mount_point == at),
                        "{what}: a state tmpfs elsewhere than on {}: {on_it:#?}",
                        at.display()
                    );
                    if !on_it.is_empty() {
                        run(std::process::Command::new("umount").arg("-l").arg(&at));
                    }
                }
                assert!(restored || swapper.restore(), "{what}: names stuck");
                // Nothing else mounted anywhere the attacker pointed, and
                // nothing of theirs touched.
                let left: Vec<_> = mounts()
                    .into_iter()
                    .filter(|m| {
                        m.fs_type == "overlay"
                            || (m.mount_point.starts_with(&bed.root)
                                && m.mount_point != bed.state_parent.join("fixed-state"))
                    })
                    .collect();
                assert!(left.is_empty(), "{what}: left mounted: {left:#?}");
                bed.unchanged(&what);
            }
        }
    }
    tally.report(&format!("{input:?} (vs {state_swap_with})"), swapper);
    tally
}

/// Writes `text` to `file` through the overlay: as this process, or as
/// host uid 100000 (on-disk 0) when the upper dir is idmapped (host root
/// is outside the map, and the kernel refuses it with EOVERFLOW).
fn write_through(file: &Path, text: &str, as_mapped_root: bool) {
    if !as_mapped_root {
        fs::write(file, text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=100000", "--regid=100000", "--clear-groups", "--"])
        .args(["sh", "-c", "printf %s \"$1\" > \"$2\"", "sh", text])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", file.display(), stderr(&out));
}

fn bed_test(name: &str, body: impl FnOnce(&Bed) + Send + 'static) {
    in_private_ns(name, move |s| {
        let dir = s.tmpfs_dir("r");
        let bed = Bed::new(&dir);
        body(&bed);
    });
}

#[test]
fn a_raced_layer_is_never_followed_to_another_directory() {
    bed_test("race::layer", |bed| {
        let t = race(bed, Input::Layer, &VARIANTS, "");
        assert!(t.mounted > 0 && t.refused > 0, "the race must go both ways");
    });
}

#[test]
fn a_raced_upper_dir_never_lets_writes_land_elsewhere() {
    bed_test("race::upper", |bed| {
        let t = race(bed, Input::Upper, &VARIANTS, "");
        assert!(t.mounted > 0 && t.refused > 0, "the race must go both ways");
    });
}

#[test]
fn a_raced_work_dir_never_empties_another_directory() {
    bed_test("race::work", |bed| {
        let t = race(bed, Input::Work, &VARIANTS, "");
        assert!(t.mounted > 0 && t.refused > 0, "the race must go both ways");
    });
}

/// The directory above the upper and work dirs, raced. Where their pair
/// is cloned (an idmapped upper, or staged in another namespace), the clone
/// is made of their common parent, opened after them. Another mount of the
/// same directories passes every check of inodes beneath it, so the name
/// flips between the directory and an idmapped bind of it that swaps ids 0
/// and 1000: a clone of that would make every file the container's root
/// writes land on disk owned by 1000. Tmpfs covers that bind's `u` and
/// `w`, so upper and work opened through it are never those directories
/// (refused); whatever mounts wrote through the mount upper was opened on.
#[test]
fn a_raced_parent_of_upper_and_work_never_clones_them_from_another_mount() {
    in_private_ns("race::upper_work_parent", |s| {
        let dir = s.tmpfs_dir("r");
        let c = dir.join("c");
        mkdir(&c, 0o777, 0, 0);
        let real = c.join("x");
        mkdir(&real.join("u"), 0o755, 0, 0);
        mkdir(&real.join("w"), 0o755, 0, 0);
        write_file(&dir.join("l/layer-file"), "l", 0o644, 0, 0);
        let bind = dir.join("bind");
        mkdir(&bind, 0o755, 0, 0);
        let swapped: IdMap = "0:1000:1,1000:0:1".parse().unwrap();
        let userns = idoverlay::UserNamespace::from_maps(&swapped, &swapped).unwrap();
        let clone = raw::clone_detached(&real).unwrap();
        raw::set_idmap(
            std::os::fd::AsFd::as_fd(&clone),
            std::os::fd::AsFd::as_fd(&userns),
        )
        .unwrap();
        rustix::mount::move_mount(
            &clone,
            "",
            rustix::fs::CWD,
            &bind,
            rustix::mount::MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .unwrap();
        for cover in ["u", "w"] {
            run(std::process::Command::new("mount")
                .args(["-t", "tmpfs", "cover"])
                .arg(bind.join(cover)));
        }
        std::os::unix::fs::symlink(&bind, c.join("y")).unwrap();
        let upper_held = Held::open(&real.join("u"));
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let swapper = Swapper::start(&c, "x", "y");
        let mut tally = Tally::default();
        for v in VARIANTS {
            for round in 0..4 * ROUNDS {
                let what = format!("{} #{round}", v.name);
                let o = Overlay::new()
                    .lower(dir.join("l"))
                    .upper(c.join("x/u"))
                    .work(c.join("x/w"));
                let o = v.apply(o, &dir.join("state"));
                swapper.resume();
                let result = v.mount(&o, &target);
                assert!(swapper.pause(), "{what}: names stuck");
                let Err(e) = result else {
                    tally.mounted += 1;
                    write_through(&target.join("written"), &what, v.idmap_upper);
                    idoverlay::unmount_overlay(&target, false).unwrap();
                    let landed = upper_held.path().join("written");
                    // Written by host root, or by the container's root
                    // (host 100000, the map's 0) to an idmapped upper: on
                    // disk 0 either way, as it is through the upper's mount.
                    assert_eq!(
                        (
                            fs::read_to_string(&landed).ok(),
                            fs::symlink_metadata(&landed)
                                .ok()
                                .map(|m| (m.uid(), m.gid()))
                        ),
                        (Some(what.clone()), Some((0, 0))),
                        "{what}: the write went through another mount of the upper dir"
                    );
                    fs::remove_file(&landed).unwrap();
                    continue;
                };
                tally.refused += 1;
                let text = e.to_string();
                assert!(!text.contains('\n'), "{what}: {text}");
                let left: Vec<_> = mounts()
                    .into_iter()
                    .filter(|m| m.fs_type == "overlay")
                    .collect();
                assert!(left.is_empty(), "{what}: left mounted: {left:#?}");
            }
        }
        tally.report("upper/work parent", swapper);
        assert!(
            tally.mounted > 0 && tally.refused > 0,
            "the race must go both ways"
        );
    });
}

/// A layer and the directory holding the upper and work dirs (and the
/// target) swapped as two real directories, no symlink anywhere: the image
/// `x` and the caller's `y`, both in `c`, which others can write. Each
/// name is resolved once, but each at its own moment: the layer may be
/// opened while `x` is the image and the upper `y/u` while `y` is, so the
/// upper is the image's own `u` while the names given do not overlap.
/// Whatever mounts must not be an overlay that shows the image as a layer
/// with its upper (or its target) inside that image.
#[test]
fn a_layer_and_the_upper_swapped_as_real_directories_never_stack_the_upper_inside_it() {
    in_private_ns("race::swapped_real_dirs", |s| {
        let dir = s.tmpfs_dir("r");
        let c = dir.join("c");
        mkdir(&c, 0o777, 0, 0);
        let image = c.join("x");
        write_file(&image.join("layer-file"), "image", 0o644, 0, 0);
        let mine = c.join("y");
        for d in [&image, &mine] {
            for sub in ["u", "w", "t"] {
                mkdir(&d.join(sub), 0o755, 0, 0);
            }
        }
        write_file(&dir.join("lay/l2/other-file"), "l2", 0o644, 0, 0);
        let image_held = Held::open(&image);
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let swapper = Swapper::start(&c, "x", "y");
        let mut tally = Tally::default();
        for per_layer in [false, true] {
            for v in VARIANTS.iter().filter(|v| !v.idmap_upper) {
                for round in 0..4 * ROUNDS {
                    let what = format!("{} per_layer={per_layer} #{round}", v.name);
                    let with_upper = round % 2 == 0;
                    let mut o = Overlay::new()
                        .lower(c.join("x"))
                        .lower(dir.join("lay/l2"))
                        .per_layer_clones(per_layer);
                    if with_upper {
                        o = o.upper(c.join("y/u")).work(c.join("y/w"));
                    }
                    let o = v.apply(o, &dir.join("state"));
                    // Without an upper, the overlay goes at `y/t`.
                    let at = if with_upper {
                        target.clone()
                    } else {
                        c.join("y/t")
                    };
                    swapper.resume();
                    let result = v.mount(&o, &at);
                    assert!(swapper.pause(), "{what}: names stuck");
                    if let Err(e) = result {
                        tally.refused += 1;
                        assert!(!e.to_string().contains('\n'), "{what}: {e}");
                        continue;
                    }
                    tally.mounted += 1;
                    let image_now = image_held.current_path();
                    let ours: Vec<_> = mounts()
                        .into_iter()
                        .filter(|m| m.fs_type == "overlay")
                        .collect();
                    assert_eq!(ours.len(), 1, "{what}: {ours:#?}");
                    let mounted_at = ours[0].mount_point.clone();
                    let shows_image = mounted_at.join("layer-file").exists();
                    if with_upper {
                        fs::write(mounted_at.join("written"), &what).unwrap();
                    }
                    idoverlay::unmount_overlay(&mounted_at, true).unwrap();
                    let written = image_now.join("u/written");
                    assert!(
                        !(shows_image && written.exists()),
                        "{what}: the upper was inside the image layer it was stacked on"
                    );
                    assert!(
                        !(shows_image && mounted_at == image_now.join("t")),
                        "{what}: mounted inside the image layer it shows"
                    );
                    let _ = fs::remove_file(&written);
                    let _ = fs::remove_file(c.join("x/u/written"));
                    let _ = fs::remove_file(c.join("y/u/written"));
                }
            }
        }
        tally.report("swapped real dirs", swapper);
        assert!(tally.mounted > 0, "nothing mounted");
    });
}

/// A directory on a shared layer's way down swapped, by root, with a
/// symlink to where the upper is: the plan may see the directory (and
/// share the layer) while the kernel, later, meets the symlink beneath the
/// clone and refuses it; the layer is then opened on its own, where the
/// symlink leads, and must be checked again there (`retry_on_its_own`).
/// Whatever mounts must not show the layer the upper dir lies in.
#[test]
fn a_shared_layer_retried_on_its_own_is_checked_where_it_really_is() {
    in_private_ns("race::retried_layer", |s| {
        let dir = s.tmpfs_dir("r");
        let img = dir.join("img");
        write_file(&img.join("x/in-layer"), "image", 0o644, 0, 0);
        mkdir(&img.join("x/upper"), 0o755, 100000, 100000);
        mkdir(&img.join("x/work"), 0o755, 0, 0);
        let d = dir.join("l/d");
        write_file(&d.join("way/x/plain"), "plain", 0o644, 0, 0);
        write_file(&d.join("a/f"), "a", 0o644, 0, 0);
        std::os::unix::fs::symlink("../../img", d.join("way.lnk")).unwrap();
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let swapper = Swapper::start(&d, "way", "way.lnk");
        let mut tally = Tally::default();
        for strategy in [
            Strategy::Auto,
            Strategy::Detached,
            Strategy::PrivateNs,
            Strategy::HostStaged,
        ] {
            for round in 0..10 * ROUNDS {
                let what = format!("{strategy} #{round}");
                let o = Overlay::new()
                    .lower(d.join("way/x"))
                    .lower(d.join("a"))
                    .upper(img.join("x/upper"))
                    .work(img.join("x/work"))
                    .idmap(map(), map())
                    .strategy(strategy)
                    .state_dir(dir.join("state"));
                swapper.resume();
                let result = o.mount(&target);
                assert!(swapper.pause(), "{what}: names stuck");
                match result {
                    Ok(_) => {
                        tally.mounted += 1;
                        let shows_image = target.join("in-layer").exists();
                        idoverlay::unmount_overlay(&target, false).unwrap();
                        assert!(
                            !shows_image,
                            "{what}: the upper dir lies in a layer the overlay shows"
                        );
                    }
                    Err(e) => {
                        tally.refused += 1;
                        assert!(!e.to_string().contains('\n'), "{what}: {e}");
                    }
                }
            }
        }
        tally.report("retried layer", swapper);
        assert!(
            tally.mounted > 0 && tally.refused > 0,
            "the race must go both ways"
        );
    });
}

#[test]
fn a_raced_target_never_puts_the_overlay_elsewhere() {
    bed_test("race::target", |bed| {
        let t = race(bed, Input::Target, &VARIANTS, "");
        assert!(t.mounted > 0 && t.refused > 0, "the race must go both ways");
    });
}

#[test]
fn a_raced_state_dir_never_covers_or_enters_another_directory() {
    bed_test("race::state_dir", |bed| {
        let staged: Vec<Variant> = VARIANTS
            .into_iter()
            .filter(|v| v.strategy == Strategy::HostStaged)
            .collect();
        // Swapped with a symlink to the secret, and with a directory that
        // holds data (which a tmpfs must never cover).
        for with in ["state.evil", "state.victim"] {
            let t = race(bed, Input::StateDir, &staged, with);
            assert!(t.mounted > 0 && t.refused > 0, "the race must go both ways");
        }
    });
}

#[test]
fn a_state_dir_under_a_directory_others_can_write_is_always_refused() {
    bed_test("race::state_dir_open_parent", |bed| {
        // `c` is 0777: whoever can write it could swap the state dir's path
        // after any check, so it is refused before anything is touched.
        let state = bed.c.join("state");
        mkdir(&state, 0o700, 0, 0);
        let err = Overlay::new()
            .lower(bed.c.join("l1"))
            .lower(bed.lay.join("l2"))
            .idmap(map(), map())
            .strategy(Strategy::HostStaged)
            .state_dir(&state)
            .mount(bed.c.join("t"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("world-writable"), "{err}");
        assert!(mounts().iter().all(|m| !m.mount_point.starts_with(&bed.c)));
        assert_eq!(fs::read_dir(&state).unwrap().count(), 0);
        bed.unchanged("state dir under c");
    });
}

/// Unmounts (lazily) every overlay mounted below `dir`, as the test's own.
fn take_down_overlays_below(dir: &Path) {
    for m in mounts() {
        if m.fs_type == "overlay" && m.mount_point.starts_with(dir) {
            run(std::process::Command::new("umount")
                .arg("-l")
                .arg(&m.mount_point));
        }
    }
}

#[test]
fn the_check_after_mounting_looks_only_at_the_overlay_it_mounted() {
    in_private_ns("race::after_mount", |s| {
        let dir = s.tmpfs_dir("r");
        let layers = make_layers(&dir.join("layers")).dirs;
        // The target x/c/rootfs; y/c/rootfs holds another container's
        // read-only rootfs. A thread exchanges x and y all along: after the
        // mount(2) at the target's fd, its path may lead to the victim.
        let x = dir.join("x/c/rootfs");
        let y = dir.join("y/c/rootfs");
        mkdir(&x, 0o755, 0, 0);
        mkdir(&y, 0o755, 0, 0);
        run(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro", "victim"])
            .arg(&y));
        let victim = || mounts().iter().any(|m| m.source == "victim");
        let swapper = Swapper::start(&dir, "x", "y");
        let (mut mounted, mut unchecked) = (0, 0);
        for round in 0..200 {
            let pair = dir.join(format!("pairs/{round}"));
            mkdir(&pair.join("upper"), 0o755, 100000, 100000);
            mkdir(&pair.join("work"), 0o755, 0, 0);
            swapper.resume();
            // The mount(2) fast path with an upper, which a kernel without
            // layer fds takes (with them, upper and work go by fd through
            // fsconfig, and the overlay is attached by the target's fd).
            let result = Overlay::new()
                .lowers(layers.iter().cloned())
                .upper(pair.join("upper"))
                .work(pair.join("work"))
                .idmap(map(), map())
                .strategy(Strategy::Detached)
                .pretend_missing(idoverlay::Feature::OverlayFdLayers)
                .mount(&x);
            while !swapper.pause() {
                take_down_overlays_below(&dir);
            }
            assert!(
                victim(),
                "round {round}: the victim's mount was taken down ({result:?})"
            );
            match result {
                Ok(m) => {
                    mounted += 1;
                    if !m.warnings.is_empty() {
                        unchecked += 1;
                        assert!(
                            m.warnings[0].contains("could not check"),
                            "{:?}",
                            m.warnings
                        );
                    }
                }
                Err(e) => assert!(!e.to_string().contains('\n')),
            }
            take_down_overlays_below(&dir);
            assert!(swapper.restore());
        }
        eprintln!(
            "after-mount race: {mounted} of 200 mounted, {unchecked} of them not checkable, {} swaps",
            swapper.swaps()
        );
        assert!(mounted > 0);
        assert!(unchecked > 0, "the race must reach the check");
        drop(swapper);
        run(std::process::Command::new("umount").arg(&y));
    });
}

#[test]
fn of_two_overlays_mounted_at_once_on_one_upper_only_one_stays() {
    two_overlays_at_once_on_one_upper("race::claims", false, 100);
}

/// The same on a pair used before: its claims name a mount that is gone,
/// and each of the two must not just replace them.
#[test]
fn of_two_overlays_mounted_at_once_on_a_used_upper_only_one_stays() {
    two_overlays_at_once_on_one_upper("race::stale_claims", true, 500);
}

fn two_overlays_at_once_on_one_upper(name: &str, used_before: bool, rounds: usize) {
    in_private_ns(name, move |s| {
        let dir = s.tmpfs_dir("r");
        let layers = make_layers(&dir.join("layers")).dirs;
        let (t1, t2) = (dir.join("t1"), dir.join("t2"));
        mkdir(&t1, 0o755, 0, 0);
        mkdir(&t2, 0o755, 0, 0);
        let (mut one, mut refused) = (0, 0);
        for round in 0..rounds {
            let pair = dir.join(format!("pairs/{round}"));
            mkdir(&pair.join("upper"), 0o755, 0, 0);
            mkdir(&pair.join("work"), 0o755, 0, 0);
            if used_before {
                Overlay::new()
                    .lowers(layers.iter().cloned())
                    .upper(pair.join("upper"))
                    .work(pair.join("work"))
                    .idmap(map(), map())
                    .mount(&t1)
                    .unwrap();
                idoverlay::unmount_overlay(&t1, false).unwrap();
            }
            let start = std::sync::Barrier::new(2);
            let results: Vec<_> = std::thread::scope(|scope| {
                let handles: Vec<_> = [(&t1, Strategy::Detached), (&t2, Strategy::Auto)]
                    .into_iter()
                    .map(|(t, strategy)| {
                        let (start, pair, layers) = (&start, &pair, &layers);
                        scope.spawn(move || {
                            let overlay = Overlay::new()
                                .lowers(layers.iter().cloned())
                                .upper(pair.join("upper"))
                                .work(pair.join("work"))
                                .idmap(map(), map())
                                .strategy(strategy);
                            start.wait();
                            match round % 2 {
                                0 => overlay.mount(t).map(|_| ()),
                                _ => overlay.assemble().and_then(|m| m.attach(t)).map(|_| ()),
                            }
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let ok = results.iter().filter(|r| r.is_ok()).count();
            let on_pair = mounts()
                .iter()
                .filter(|m| m.fs_type == "overlay" && (m.mount_point == t1 || m.mount_point == t2))
                .count();
            assert_eq!(on_pair, ok, "round {round}: {results:?}");
            assert!(ok <= 1, "round {round}: both mounted on one upper");
            // The loser is refused by idoverlay (in use), or by overlay
            // itself when both set up the work dir at the same moment.
            for e in results.iter().filter_map(|r| r.as_ref().err()) {
                assert!(!e.to_string().contains('\n'), "{e}");
                if e.to_string().contains("in use") {
                    refused += 1;
                }
            }
            one += usize::from(ok == 1);
            for t in [&t1, &t2] {
                if mounts().iter().any(|m| m.mount_point == *t) {
                    idoverlay::unmount_overlay(t, false).unwrap();
                }
            }
        }
        eprintln!(
            "claims race{}: {one} of {rounds} rounds with one overlay; {refused} refused as in use",
            if used_before {
                " (pairs used before)"
            } else {
                ""
            }
        );
        assert!(
            one > rounds / 2 && refused > 0,
            "the race must reach the claims"
        );
    });
}

/// A file a caller names (an OCI config) swapped with a device node, as a
/// user who can write its directory would, while idoverlay reads it: the
/// device's driver is never opened (a watchdog would arm, a tape rewind),
/// whatever the name leads to at each moment. An inotify watch on the
/// device node sees every open of it; each read gives the config's maps
/// or refuses the device.
#[test]
fn a_file_swapped_for_a_device_while_it_is_read_never_opens_the_device() {
    in_private_ns("race::file-device", |s| {
        let dir = s.tmpfs_dir("f");
        fs::write(
            dir.join("config.json"),
            r#"{"linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
                          "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}}"#,
        )
        .unwrap();
        let device = dir.join("device");
        let watch = OpenWatch::on_new_null_device(&device);
        let swapper = Swapper::start(&dir, "config.json", "device");
        swapper.resume();
        let (mut read, mut refused) = (0, 0);
        // 2,000 reads, and on until both outcomes were seen (a swapper kept
        // off the CPU by a busy machine once left all 2,000 on one side).
        for attempt in 0..200_000 {
            if attempt >= 2000 && read > 0 && refused > 0 {
                break;
            }
            match idoverlay::idmap::maps_from_oci_config_file(dir.join("config.json")) {
                Ok((uid, gid)) => {
                    assert_eq!(uid.to_string(), "0:100000:65536");
                    assert_eq!(gid.to_string(), "0:100000:65536");
                    read += 1;
                }
                Err(e) => {
                    let said = e.to_string();
                    assert!(
                        said.contains("a character device, not a regular file")
                            || said.contains("replaced by another file"),
                        "{said}"
                    );
                    refused += 1;
                }
            }
        }
        assert!(swapper.pause());
        let swaps = swapper.swaps();
        drop(swapper);
        eprintln!("{read} read, {refused} refused, {swaps} swaps");
        assert_eq!(watch.opens(), 0, "the device was opened");
        assert!(
            read > 0 && refused > 0,
            "the race did not happen: {read} read, {refused} refused"
        );
    });
}

/// A state dir that another call creates for a first assembly and removes
/// again when that assembly is refused (as it does, under a lock readers
/// do not take), read meanwhile: a reader that opened the directory just
/// before its removal reads a dead directory (getdents64 says ENOENT).
/// That is "no state yet", as the next look shows, never an error — an
/// explicit state dir is read this way by every mount.
#[test]
fn a_state_dir_removed_while_it_is_read_is_none_not_an_error() {
    in_private_ns("race::state_dir_removed", |s| {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let state = s.tmpfs_dir("r").join("state");
        let stop = Arc::new(AtomicBool::new(false));
        let cycles = Arc::new(AtomicUsize::new(0));
        let churn = {
            let (state, stop, cycles) = (state.clone(), stop.clone(), cycles.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if fs::DirBuilder::new().mode(0o700).create(&state).is_ok() {
                        fs::remove_dir(&state).unwrap();
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let mut errors = Vec::new();
        for _ in 0..20_000 {
            match idoverlay::records::list(&state) {
                Ok(found) => assert!(found.is_empty(), "{found:?}"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        let cycles = cycles.load(Ordering::Relaxed);
        eprintln!("{} errors, {cycles} create/remove cycles", errors.len());
        assert!(cycles > 0, "the directory was never created and removed");
        assert!(
            errors.is_empty(),
            "{} errors, the first: {}",
            errors.len(),
            errors[0]
        );
    });
}

/// An upper and work dir on a bind mount of a directory inside the image
/// layer (`x/sub`, bound at `b`), while another process swaps the image
/// `c/x` with another directory `c/y`: the walk up from the upper goes
/// through the mount tree, from the bind's root to `b`'s parent, and never
/// meets `x`; and names read at two moments (the layer's, the bind's root
/// in the mount table) need not agree. Whatever mounts must not show the
/// image as a layer with its upper inside that image.
#[test]
fn an_upper_on_a_bind_mount_of_a_directory_inside_a_layer_is_never_stacked_on_it() {
    in_private_ns("race::bound_inside", |s| {
        let dir = s.tmpfs_dir("r");
        let c = dir.join("c");
        mkdir(&c, 0o777, 0, 0);
        let image = c.join("x");
        write_file(&image.join("layer-file"), "image", 0o644, 0, 0);
        mkdir(&image.join("sub/u"), 0o755, 0, 0);
        mkdir(&image.join("sub/w"), 0o755, 0, 0);
        mkdir(&image.join("sub/t"), 0o755, 0, 0);
        mkdir(&c.join("y/sub"), 0o755, 0, 0);
        write_file(&dir.join("lay/l2/other-file"), "l2", 0o644, 0, 0);
        let bound = dir.join("b");
        mkdir(&bound, 0o755, 0, 0);
        run(std::process::Command::new("mount")
            .arg("--bind")
            .arg(image.join("sub"))
            .arg(&bound));
        let image_held = Held::open(&image);
        let target = dir.join("t");
        mkdir(&target, 0o755, 0, 0);
        let swapper = Swapper::start(&c, "x", "y");
        let mut tally = Tally::default();
        for per_layer in [false, true] {
            for v in VARIANTS.iter().filter(|v| !v.idmap_upper) {
                for round in 0..4 * ROUNDS {
                    let what = format!("{} per_layer={per_layer} #{round}", v.name);
                    let with_upper = round % 2 == 0;
                    let mut o = Overlay::new()
                        .lower(c.join("x"))
                        .lower(dir.join("lay/l2"))
                        .per_layer_clones(per_layer);
                    if with_upper {
                        o = o.upper(bound.join("u")).work(bound.join("w"));
                    }
                    let o = v.apply(o, &dir.join("state"));
                    // Without an upper, the overlay goes at `b/t`: inside `x`.
                    let at = if with_upper {
                        target.clone()
                    } else {
                        bound.join("t")
                    };
                    swapper.resume();
                    let result = v.mount(&o, &at);
                    assert!(swapper.pause(), "{what}: names stuck");
                    if let Err(e) = result {
                        tally.refused += 1;
                        assert!(!e.to_string().contains('\n'), "{what}: {e}");
                        continue;
                    }
                    tally.mounted += 1;
                    let shows_image = at.join("layer-file").exists();
                    assert!(
                        with_upper || !shows_image,
                        "{what}: mounted inside the image layer it shows"
                    );
                    if with_upper {
                        fs::write(at.join("written"), &what).unwrap();
                    }
                    idoverlay::unmount_overlay(&at, true).unwrap();
                    let written = image_held.current_path().join("sub/u/written");
                    assert!(
                        !(shows_image && written.exists()),
                        "{what}: the upper was inside the image layer it was stacked on"
                    );
                    let _ = fs::remove_file(&written);
                    let _ = fs::remove_file(bound.join("u/written"));
                }
            }
        }
        tally.report("bound inside", swapper);
        assert!(tally.mounted > 0, "nothing mounted");
    });
}

/// In a pid namespace whose `/proc` is its parent's (`unshare -p -f`
/// without a /proc of its own: `/proc/self/task` numbers threads as the
/// parent does, gettid and kcmp as the caller does), a thread that shares
/// the caller's working directory must still never see it lent: it would
/// resolve relative names inside the layers' clone, and a `chdir` of its
/// would redirect the layers. The test runs itself again in such a
/// namespace; there a sibling thread looks at `.` while 200 mounts run.
#[test]
fn a_working_directory_shared_with_a_sibling_is_never_lent_under_a_parents_proc() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const NAME: &str =
        "a_working_directory_shared_with_a_sibling_is_never_lent_under_a_parents_proc";
    if std::env::var_os("IDOVERLAY_TEST_IN_NEW_PID_NS").is_none() {
        let out = std::process::Command::new("unshare")
            .args(["-p", "-f", "--kill-child"])
            .arg(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture"])
            .env("IDOVERLAY_TEST_IN_NEW_PID_NS", "1")
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(out.status.success(), "{said}");
        assert!(said.contains("1 passed"), "{said}");
        return;
    }
    // Really there: this /proc does not name this thread as it names itself.
    let thread_self = fs::read_link("/proc/thread-self").unwrap();
    let ours = format!(
        "{}/task/{}",
        std::process::id(),
        rustix::thread::gettid().as_raw_nonzero()
    );
    assert_ne!(
        thread_self,
        PathBuf::from(&ours),
        "the same numbering: nothing tested"
    );
    in_private_ns("race::parents_proc", |s| {
        let dir = s.tmpfs_dir("t");
        let layers = make_layers(&dir.join("layers")).dirs;
        let target = dir.join("merged");
        mkdir(&target, 0o755, 0, 0);
        std::env::set_current_dir(&dir).unwrap();
        let home = fs::metadata(".").unwrap();
        let home = (home.dev(), home.ino());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (seen, looks) = (
            std::sync::Arc::new(AtomicUsize::new(0)),
            std::sync::Arc::new(AtomicUsize::new(0)),
        );
        // Started after in_private_ns's unshare: it shares this thread's fs.
        let sibling = {
            let (stop, seen, looks) = (stop.clone(), seen.clone(), looks.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(m) = fs::metadata(".") {
                        if (m.dev(), m.ino()) != home {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    looks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let o = Overlay::new()
            .lowers(layers.iter().cloned())
            .idmap(map(), map())
            .strategy(Strategy::Detached)
            .trace(std::sync::Arc::new(move |l: &str| {
                sink.lock().unwrap().push(l.to_string())
            }));
        for _ in 0..200 {
            o.mount(&target).unwrap();
            idoverlay::unmount_overlay(&target, true).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        sibling.join().unwrap();
        let lines = lines.lock().unwrap();
        let lent = lines
            .iter()
            .filter(|l| l.contains("working directory lent"))
            .count();
        assert_eq!(lent, 0, "lent while a sibling thread shares it");
        assert_eq!(
            seen.load(Ordering::Relaxed),
            0,
            "the sibling saw another directory"
        );
        assert!(looks.load(Ordering::Relaxed) > 0);
    });
}
