//! The command line itself: unknown subcommands and flags, too many paths.

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
}
