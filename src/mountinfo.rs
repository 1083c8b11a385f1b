//! Reading the mount table (`/proc/self/mountinfo`), as the kernel shows it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of `/proc/PID/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique mount id (field 1).
    pub mount_id: u64,
    /// Parent mount id (field 2).
    pub parent_id: u64,
    /// Device `major:minor` (field 3).
    pub device: String,
    /// The directory of the filesystem that forms this mount's root (field 4).
    pub root: PathBuf,
    /// Where it is mounted, relative to the reader's root (field 5).
    pub mount_point: PathBuf,
    /// Per-mount options (field 6), e.g. `rw,nosuid,idmapped`.
    pub mount_options: String,
    /// Filesystem type, e.g. `overlay`.
    pub fs_type: String,
    /// Mount source, e.g. `overlay` or `/dev/vda`.
    pub source: String,
    /// Per-superblock options, e.g. `lowerdir+=…,upperdir=…`.
    pub super_options: String,
}

/// The `upperdir=` and `workdir=` an overlay entry shows, as the kernel
/// printed them (octal escapes undone).
pub fn overlay_upper_work(entry: &MountEntry) -> (Option<PathBuf>, Option<PathBuf>) {
    // overlay escapes `,` (and space, tab, newline, backslash) in values as
    // octal: splitting at commas is exact.
    let mut upper = None;
    let mut work = None;
    for option in entry.super_options.split(',') {
        if let Some(v) = option.strip_prefix("upperdir=") {
            upper = Some(unescape(v));
        } else if let Some(v) = option.strip_prefix("workdir=") {
            work = Some(unescape(v));
        }
    }
    (upper, work)
}

/// Parses mountinfo text; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let mut fields = head.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let parent_id = fields.next()?.parse().ok()?;
    let device = fields.next()?.to_string();
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let mount_options = fields.next()?.to_string();
    let mut tail = tail.splitn(3, ' ');
    let fs_type = tail.next()?.to_string();
    let source =
        String::from_utf8_lossy(unescape(tail.next()?).as_os_str().as_encoded_bytes()).into_owned();
    let super_options = tail.next().unwrap_or("").to_string();
    Some(MountEntry {
        mount_id,
        parent_id,
        device,
        root,
        mount_point,
        mount_options,
        fs_type,
        source,
        super_options,
    })
}

/// Undoes the kernel's octal escapes (`\040` for space, `\012` newline,
/// `\011` tab, `\134` backslash).
fn unescape(field: &str) -> PathBuf {
    if !field.contains('\\') {
        return PathBuf::from(field);
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The calling thread's mount table, read through `proc`, a procfs that
/// shows this thread (opened before the thread entered another mount
/// namespace, whose own /proc may be another pid namespace's). Bounded
/// (64 MiB: some 400,000 mounts).
pub fn read_via(proc: std::os::fd::BorrowedFd<'_>) -> crate::sys::SysResult<Vec<MountEntry>> {
    let fd = crate::sys::open_read(proc, std::path::Path::new("thread-self/mountinfo"))?;
    let bytes = crate::sys::read_at_most(std::os::fd::AsFd::as_fd(&fd), 64 << 20)?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// The calling thread's mount table.
pub fn read_self() -> std::io::Result<Vec<MountEntry>> {
    // thread-self: a thread with a private mount namespace sees its own.
    // One buffer, read to the end: this runs on every assembly.
    use std::io::Read;
    let mut file = std::fs::File::open("/proc/thread-self/mountinfo")
        .or_else(|_| std::fs::File::open("/proc/self/mountinfo"))?;
    let mut bytes = Vec::with_capacity(16 * 1024);
    file.read_to_end(&mut bytes)?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_real_lines() {
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
310 22 0:45 / /tmp/with\\040space rw,relatime,idmapped - overlay overlay rw,lowerdir+=/l1,lowerdir+=/l2,upperdir=/u,workdir=/w,uuid=on
311 22 0:46 /sub /mnt/x\\134y rw - tmpfs tmpfs rw,size=1024k
garbage line
";
        let entries = parse(text);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].mount_point, Path::new("/"));
        assert_eq!(entries[0].fs_type, "ext4");
        assert_eq!(entries[1].mount_point, Path::new("/tmp/with space"));
        assert!(entries[1].mount_options.contains("idmapped"));
        assert!(entries[1].super_options.contains("lowerdir+=/l1"));
        assert_eq!(entries[2].mount_point, Path::new("/mnt/x\\y"));
        assert_eq!(entries[2].root, Path::new("/sub"));
    }

    #[test]
    fn this_process_table_has_a_root() {
        let entries = read_self().unwrap();
        assert!(entries.iter().any(|e| e.mount_point == Path::new("/")));
    }
}
