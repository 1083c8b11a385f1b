//! Id maps: malformed ranges, overlaps, too many, the wrong user namespace.

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

    let uid = |map: &str| {
        Argv::mount()
            .lowers(two)
            .a(format!("--uidmap={map}"))
            .a("--gidmap")
            .a(MAP)
            .a(t)
    };
    let map_cases: [(&str, &str, &[&str]); 12] = [
        (
            "map/overlap-container-side",
            "0:100000:10,5:200000:10",
            &["overlap", "container"],
        ),
        (
            "map/overlap-host-side",
            "0:100000:10,20:100005:10",
            &["overlap", "host"],
        ),
        ("map/overflow-container-side", "4294967290:0:10", &["past"]),
        ("map/overflow-host-side", "0:4294967290:10", &["past"]),
        ("map/id-too-large", "0:4294967296:1", &["larger than"]),
        ("map/zero-size", "0:100000:0", &["size 0"]),
        ("map/letters", "a:b:c", &["number"]),
        ("map/negative", "-1:100000:1", &["negative"]),
        ("map/empty-string", "", &["empty"]),
        ("map/missing-field", "0:100000", &["2 field"]),
        ("map/extra-field", "0:100000:65536:1", &["4 field"]),
        ("map/trailing-comma", "0:100000:65536,", &["empty"]),
    ];
    for (name, map, says) in map_cases {
        let mut c = case(name, uid(map))
            .names("--uidmap")
            .names(format!("{map:?}"));
        for s in says {
            c = c.says(*s);
        }
        v.push(c);
    }
    let ranges: Vec<String> = (0..341).map(|i| format!("{i}:{}:1", 100000 + i)).collect();
    v.push(
        case("map/341-ranges", uid(&ranges.join(",")))
            .names("--uidmap")
            .names("341 ranges")
            .says("at most 340"),
    );
    v.push(
        case(
            "map/bad-gidmap",
            Argv::mount()
                .lowers(two)
                .a("--uidmap")
                .a(MAP)
                .a("--gidmap")
                .a("0:100000:x")
                .a(t),
        )
        .names("--gidmap")
        .names("\"0:100000:x\"")
        .says("number"),
    );
    v.push(
        case(
            "map/only-uidmap",
            Argv::mount().lowers(two).a("--uidmap").a(MAP).a(t),
        )
        .usage()
        .names("--gidmap"),
    );
    v.push(
        case(
            "map/only-gidmap",
            Argv::mount().lowers(two).a("--gidmap").a(MAP).a(t),
        )
        .usage()
        .names("--uidmap"),
    );
    v.push(
        case(
            "map/uidmap-and-userns",
            Argv::mount()
                .lowers(two)
                .maps()
                .a("--userns")
                .a(&f.mapped_userns)
                .a(t),
        )
        .usage()
        .names("--userns"),
    );
    v.push(
        case("map/none", Argv::mount().lowers(two).a(t))
            .names("--uidmap")
            .names("--userns")
            .says("give"),
    );
    let userns = |ns: &OsStr| Argv::mount().lowers(two).a("--userns").a(ns).a(t);
    let not_ns = if Path::new("/etc/hostname").is_file() {
        PathBuf::from("/etc/hostname")
    } else {
        let p = d.join("not-a-namespace");
        write_file(&p, "x\n", 0o644, 0, 0);
        p
    };
    v.push(
        case("userns/regular-file", userns(not_ns.as_os_str()))
            .names_path(&not_ns)
            .says("not a namespace"),
    );
    v.push(
        case(
            "userns/mount-namespace",
            userns(OsStr::new("/proc/self/ns/mnt")),
        )
        .names("\"/proc/self/ns/mnt\"")
        .says("not a user namespace"),
    );
    let no_ns = d.join("no-such-namespace");
    v.push(
        case("userns/missing-file", userns(no_ns.as_os_str()))
            .names_path(&no_ns)
            .says("does not exist"),
    );
    let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let no_pid = (pid_max + 1).to_string();
    v.push(
        case("userns/no-such-pid", userns(OsStr::new(&no_pid)))
            .names(no_pid.clone())
            .says("does not exist"),
    );
    v.push(
        case("userns/empty-string", userns(OsStr::new("")))
            .names("\"\"")
            .says("does not exist"),
    );
    v.push(
        case(
            "userns/initial-namespace",
            userns(OsStr::new("/proc/self/ns/user")),
        )
        .names("\"/proc/self/ns/user\"")
        .says_any(&["own", "initial", "host", "caller"]),
    );
    v.push(
        case("userns/without-maps", userns(f.unmapped_userns.as_os_str()))
            .names_path(&f.unmapped_userns)
            .says_any(&[" map", "uid_map", "unmapped"]),
    );
}
