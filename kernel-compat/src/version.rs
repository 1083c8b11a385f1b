//! Kernel release strings as the kernel prints them, turned into comparable versions.

use std::cmp::Ordering;
use std::fmt;

/// A Linux kernel version parsed from a `uname -r` release string.
///
/// Real release strings are rarely semver: distributions append build
/// numbers, flavours and architectures (`6.1.0-50-cloud-amd64`,
/// `5.14.0-427.13.1.el9_4.x86_64`), developers add `+`, release candidates
/// say `-rc3`. Only the leading `major.minor[.patch]` and an `-rcN` matter
/// for features; everything else is kept verbatim in [`KernelVersion::release`].
///
/// ```
/// use kernel_compat::KernelVersion;
/// let v: KernelVersion = "6.1.0-50-cloud-amd64".parse().unwrap();
/// assert_eq!((v.major(), v.minor(), v.patch()), (6, 1, 0));
/// assert!(v.at_least(5, 19));
/// assert!(!v.at_least(6, 15));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KernelVersion {
    version: semver::Version,
    release: String,
}

/// A release string that does not start with `MAJOR.MINOR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseVersionError {
    release: String,
}

impl fmt::Display for ParseVersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel release {:?} does not start with MAJOR.MINOR (like \"6.18.4\" or \"6.1.0-50-cloud-amd64\")",
            self.release
        )
    }
}

impl std::error::Error for ParseVersionError {}

impl KernelVersion {
    /// A version from its numbers, with a synthetic release string.
    pub fn new(major: u64, minor: u64, patch: u64) -> Self {
        KernelVersion {
            version: semver::Version::new(major, minor, patch),
            release: format!("{major}.{minor}.{patch}"),
        }
    }

    /// The running kernel's version, from `/proc/sys/kernel/osrelease`
    /// (the same string `uname -r` prints).
    pub fn running() -> std::io::Result<Self> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
        release
            .trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Major version (the `6` of `6.18.4`).
    pub fn major(&self) -> u64 {
        self.version.major
    }

    /// Minor version (the `18` of `6.18.4`).
    pub fn minor(&self) -> u64 {
        self.version.minor
    }

    /// Patch level (the `4` of `6.18.4`; 0 when the string has none).
    pub fn patch(&self) -> u64 {
        self.version.patch
    }

    /// The release candidate number of a `-rcN` kernel.
    pub fn release_candidate(&self) -> Option<u64> {
        self.version.pre.as_str().strip_prefix("rc")?.parse().ok()
    }

    /// The release string exactly as given.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// The version as semver (`6.8.0-rc3` keeps its pre-release part).
    pub fn semver(&self) -> &semver::Version {
        &self.version
    }

    /// Whether this kernel is at least `major.minor`.
    ///
    /// Features land in a merge window, so `7.3.0-rc1` already has what
    /// 7.3 brought: release candidates count as their final version here.
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        (self.version.major, self.version.minor) >= (major, minor)
    }
}

impl std::str::FromStr for KernelVersion {
    type Err = ParseVersionError;

    fn from_str(release: &str) -> Result<Self, Self::Err> {
        let err = || ParseVersionError {
            release: release.to_string(),
        };
        let trimmed = release.trim();
        // The numeric head: digits and dots, e.g. "6.1.0" of "6.1.0-50-cloud-amd64".
        let head_len = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let head = trimmed[..head_len].trim_end_matches('.');
        let mut numbers = head.split('.');
        let mut next = |required: bool| -> Result<u64, ParseVersionError> {
            match numbers.next() {
                Some(n) if !n.is_empty() && n.len() <= 9 => n.parse().map_err(|_| err()),
                None if !required => Ok(0),
                _ => Err(err()),
            }
        };
        let major = next(true)?;
        let minor = next(true)?;
        let patch = next(false)?;
        let mut version = semver::Version::new(major, minor, patch);
        let rest = &trimmed[head_len..];
        if let Some(rc) = rest.strip_prefix("-rc") {
            let digits: String = rc.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() {
                version.pre = semver::Prerelease::new(&format!("rc{digits}")).map_err(|_| err())?;
            }
        }
        Ok(KernelVersion {
            version,
            release: trimmed.to_string(),
        })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.release)
    }
}

impl PartialOrd for KernelVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for KernelVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.version
            .cmp(&other.version)
            .then_with(|| self.release.cmp(&other.release))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (u64, u64, u64, Option<u64>) {
        let v: KernelVersion = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        (v.major(), v.minor(), v.patch(), v.release_candidate())
    }

    #[test]
    fn real_release_strings() {
        let cases = [
            ("6.18.44-fc-v669", (6, 18, 44, None)),
            ("6.18.44-fc-v769", (6, 18, 44, None)),
            ("6.1.0-50-cloud-amd64", (6, 1, 0, None)),
            ("5.14.0-427.13.1.el9_4.x86_64", (5, 14, 0, None)),
            ("6.8.0-rc3", (6, 8, 0, Some(3))),
            ("4.19.0+", (4, 19, 0, None)),
            ("5.10.0-35-cloud-amd64", (5, 10, 0, None)),
            ("6.12.57+deb13-cloud-amd64", (6, 12, 57, None)),
            ("6.16.12+deb14+1-cloud-amd64", (6, 16, 12, None)),
            ("5.15.0-1051-azure", (5, 15, 0, None)),
            ("6.8.0-45-generic", (6, 8, 0, None)),
            ("6.6.58-0-lts", (6, 6, 58, None)),
            (
                "6.11.0-0.rc5.20240830git20ea5b2.44.fc42.x86_64",
                (6, 11, 0, None),
            ),
            ("5.4.0-1103-aws", (5, 4, 0, None)),
            ("6.1.112-122.189.amzn2023.x86_64", (6, 1, 112, None)),
            ("6.6.32-android15-8-g8b0a3c1d", (6, 6, 32, None)),
            ("6.10.0-rc1-00012-gabcdef", (6, 10, 0, Some(1))),
            ("7.3", (7, 3, 0, None)),
            ("7.3.0-1-cloud-amd64", (7, 3, 0, None)),
            ("6.9.3-arch1-1", (6, 9, 3, None)),
            ("5.19.0-76051900-generic", (5, 19, 0, None)),
            ("  6.2.0\n", (6, 2, 0, None)),
        ];
        for (s, want) in cases {
            assert_eq!(parse(s), want, "{s}");
        }
    }

    #[test]
    fn malformed_release_strings_are_refused() {
        for s in ["", "linux", "6", "6.", ".1", "x6.1", "6.x", "99999999999.1"] {
            assert!(
                s.parse::<KernelVersion>().is_err(),
                "{s:?} should not parse"
            );
        }
    }

    #[test]
    fn ordering_and_rc() {
        let a: KernelVersion = "6.8.0-rc3".parse().unwrap();
        let b: KernelVersion = "6.8.0".parse().unwrap();
        assert!(a < b);
        assert!(a.at_least(6, 8));
        assert!(!a.at_least(6, 9));
        let c: KernelVersion = "6.12.1".parse().unwrap();
        assert!(c > b);
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(s in ".{0,40}") {
            let _ = s.parse::<KernelVersion>();
        }

        #[test]
        fn numeric_heads_parse_whatever_follows(
            major in 0u64..100, minor in 0u64..1000, patch in 0u64..1000,
            suffix in "[-+._a-z0-9]{0,30}",
        ) {
            // Numbers of more than 9 digits are refused (no kernel has
            // one; they could overflow): a suffix of digits may make one.
            let patch_digits = patch.to_string().len()
                + suffix.chars().take_while(char::is_ascii_digit).count();
            proptest::prop_assume!(patch_digits <= 9);
            let s = format!("{major}.{minor}.{patch}{suffix}");
            let v: KernelVersion = s.parse().unwrap();
            // A suffix starting with digits or a dot may extend the number;
            // otherwise the head is exactly what we wrote.
            if !suffix.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
                proptest::prop_assert_eq!((v.major(), v.minor(), v.patch()), (major, minor, patch));
            }
            proptest::prop_assert_eq!(v.release(), s.as_str());
        }
    }

    #[test]
    fn running_kernel_parses() {
        let v = KernelVersion::running().expect("this machine's release string");
        assert!(v.major() >= 3);
    }
}
