//! Lower and data-only layers: missing, relative, not directories, symlinks, odd filesystems, too many, nested, duplicate.

use super::*;

#[allow(unused_variables)]
pub(crate) fn cases(f: &Fixtures, s: &Scratch, v: &mut Vec<Case>) {
    let d = &f.d;
    let good = &f.layers;
    let t = &f.target;
    let two = &good[..2];

    let missing = d.join("missing");
    v.push(
        case(
            "layer/missing",
            Argv::mount().lower(&good[0]).lower(&missing).maps().a(t),
        )
        .names_path(&missing)
        .says("does not exist"),
    );
    // A pasted lowerdir= value given as one layer: said for what it is.
    let list = format!("{}:{}", good[0].display(), good[1].display());
    v.push(
        case(
            "layer/colon-list",
            Argv::mount().lower(&list).lower(&good[2]).maps().a(t),
        )
        .names_path(&list)
        .says("colon-separated list")
        .says("--lower"),
    );
    // Relative layers are taken from the working directory, as mount(8)
    // takes them; the message names the absolute path.
    v.push(
        case(
            "layer/relative-missing",
            Argv::mount()
                .lower("relative/l1")
                .lower(&good[0])
                .maps()
                .a(t),
        )
        .run_in(d)
        .names_path(d.join("relative/l1"))
        .says("does not exist"),
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
    // Once said "needs at least two lower layers".
    v.push(
        case(
            "layer/lone-missing",
            Argv::mount().lower(&missing).maps().a(t),
        )
        .names_path(&missing)
        .says("does not exist")
        .never_says("two lower layers"),
    );
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
    // Below another layer given too: refused by name before anything is
    // opened, and once said to "lie inside layer 2".
    v.push(
        case(
            "layer/regular-file-inside-another-layer",
            Argv::mount()
                .lower(&good[0])
                .lower(&good[2])
                .lower(&file)
                .maps()
                .a(t),
        )
        .names_path(&file)
        .says("regular file")
        .says("not a directory")
        .never_says("inside"),
    );
    v.push(
        case(
            "layer/lone-regular-file",
            Argv::mount().lower(&file).maps().a(t),
        )
        .names_path(&file)
        .says("regular file")
        .says("not a directory")
        .never_says("two lower layers"),
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
        .says("upper")
        // Once "lies inside layer 2 … give a upper dir outside every layer".
        .says("is the same directory as layer 2")
        .says("a fresh, empty upper dir")
        .never_says("lies inside")
        .never_says("a upper"),
    );
    let (u, w) = upper_work(d, "layer-file-in-upper");
    let file_in_upper = u.join("file");
    write_file(&file_in_upper, "x", 0o644, 0, 0);
    v.push(
        case(
            "layer/regular-file-inside-the-upper-dir",
            Argv::mount()
                .lower(&good[0])
                .lower(&file_in_upper)
                .upper_work(&u, &w)
                .maps()
                .a(t),
        )
        .names_path(&file_in_upper)
        .says("regular file")
        .says("not a directory")
        .never_says("inside"),
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
}
