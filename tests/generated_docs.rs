//! The committed man pages and completions match the CLI: regenerate them
//! with `scripts/gen-docs` after changing an option or its help.

use std::path::Path;
use std::process::Command;

fn idoverlay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_idoverlay"))
}

#[test]
fn man_pages_are_current() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = std::env::temp_dir().join(format!("idoverlay-man-{}", std::process::id()));
    let status = idoverlay().arg("manpages").arg(&out_dir).status().unwrap();
    assert!(status.success());
    let mut fresh: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fresh.sort();
    let committed = repo.join("docs/man");
    let mut stale = Vec::new();
    for page in &fresh {
        let name = page.file_name().unwrap();
        let new = std::fs::read_to_string(page).unwrap();
        if std::fs::read_to_string(committed.join(name))
            .ok()
            .as_deref()
            != Some(new.as_str())
        {
            stale.push(name.to_string_lossy().into_owned());
        }
    }
    let committed_count = std::fs::read_dir(&committed).unwrap().count();
    for page in &fresh {
        std::fs::remove_file(page).unwrap();
    }
    std::fs::remove_dir(&out_dir).unwrap();
    assert!(
        stale.is_empty(),
        "out of date (run scripts/gen-docs): {stale:?}"
    );
    assert_eq!(
        committed_count,
        fresh.len(),
        "docs/man has extra or missing pages (run scripts/gen-docs)"
    );
}

#[test]
fn completions_are_current() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (shell, file) in [
        ("bash", "idoverlay.bash"),
        ("zsh", "_idoverlay"),
        ("fish", "idoverlay.fish"),
    ] {
        let out = idoverlay().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let committed = std::fs::read(repo.join("contrib/completions").join(file)).unwrap();
        assert!(
            committed == out.stdout,
            "{file} is out of date (run scripts/gen-docs)"
        );
    }
}
