//! `umount` of what is not an overlay mount root.

use super::*;

#[allow(unused_variables)]
pub(crate) fn cases(f: &Fixtures, s: &Scratch, v: &mut Vec<Case>) {
    let d = &f.d;
    let good = &f.layers;
    let t = &f.target;
    let two = &good[..2];
    // Made by the layer cases, which come first.
    let links = d.join("links");
    let file = good[2].join("etc/hostname");

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
    // A relative TARGET from the working directory, as umount(8) takes it.
    v.push(
        case("umount/relative-missing", Argv::umount().a("relative/mnt"))
            .run_in(d)
            .names_path(d.join("relative/mnt"))
            .says("does not exist"),
    );
    v.push(
        case("umount/relative-symlink", Argv::umount().a("target/."))
            .run_in(&links)
            .names_path(links.join("target"))
            .says("symlink"),
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
}
