//! The mount(8) form: `-t`, `-o lowerdir=…`, mixed with flags.

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
    // util-linux's options that change what is mounted: never ignored.
    for (name, option) in [
        ("subdir", "X-mount.subdir=etc"),
        ("owner", "X-mount.owner=1000"),
        ("group", "x-mount.group=1000"),
        ("mode", "X-mount.mode=0700"),
    ] {
        v.push(
            case(
                &format!("mount8/x-mount-{name}"),
                m8(
                    "overlay",
                    &format!("{lowerdir_two},uidmap={MAP},gidmap={MAP},{option}"),
                ),
            )
            .names(option)
            .says("idoverlay does not do it")
            .refused_before_any_clone(),
        );
    }
    // Relative lowerdir= entries from the working directory, as mount(8)
    // and overlay take them (and as --lower takes them).
    v.push(
        case(
            "mount8/relative-lowerdir-missing",
            m8(
                "overlay",
                &format!(
                    "lowerdir=rel/l3:{},uidmap={MAP},gidmap={MAP}",
                    good[1].display()
                ),
            ),
        )
        .run_in(d)
        .names_path(d.join("rel/l3"))
        .says("does not exist"),
    );
    let (u, w) = upper_work(d, "mount8-upper-is-lower");
    v.push(
        case(
            "mount8/upperdir-is-a-lowerdir",
            m8(
                "overlay",
                &format!(
                    "lowerdir={}:{},upperdir={},workdir={},uidmap={MAP},gidmap={MAP}",
                    good[0].display(),
                    u.display(),
                    u.display(),
                    w.display()
                ),
            ),
        )
        .names_path(&u)
        .says("is the same directory as layer 2")
        .says("a fresh, empty upper dir")
        .never_says("lies inside"),
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
}
