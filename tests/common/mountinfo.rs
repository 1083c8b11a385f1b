//! The tests' own reader of `/proc/self/mountinfo`, independent of the
//! product's (a test of what is mounted must not trust the code it tests).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of `/proc/PID/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    pub parent_id: u64,
    pub device: String,
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub mount_options: String,
    /// The optional fields (`shared:N`, `master:N`, …), space-separated.
    pub optional: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

impl MountEntry {
    /// `idmapped` among its mount options.
    pub fn is_idmapped(&self) -> bool {
        self.mount_options.split(',').any(|o| o == "idmapped")
    }
}

/// Every line of mountinfo text that parses.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let f: Vec<&str> = head.split(' ').collect();
            let t: Vec<&str> = tail.splitn(3, ' ').collect();
            Some(MountEntry {
                mount_id: f.first()?.parse().ok()?,
                parent_id: f.get(1)?.parse().ok()?,
                device: f.get(2)?.to_string(),
                root: PathBuf::from(octal(f.get(3)?)),
                mount_point: PathBuf::from(octal(f.get(4)?)),
                mount_options: f.get(5)?.to_string(),
                optional: f.get(6..).unwrap_or(&[]).join(" "),
                fs_type: t.first()?.to_string(),
                source: octal(t.get(1)?).to_string_lossy().into_owned(),
                super_options: t.get(2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// The calling thread's mount table.
pub fn read_self() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string(
        "/proc/thread-self/mountinfo",
    )?))
}

/// The kernel's octal escapes (`\040` and friends) undone.
fn octal(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], digits) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}
