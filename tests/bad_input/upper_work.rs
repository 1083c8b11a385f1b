//! Upper and work dirs: missing, one without the other, on two mounts, inside a layer, holding what overlay would delete.

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
            .says_any(&["inside", "below", "nested", "within"])
            .never_says("a upper"),
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
}
