//! The names of the strategies: what a caller asks for and a report says.
//! A leaf: the report, the choice and the strategies all use it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to assemble the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// The best the running kernel can do, from a live probe: `detached`,
    /// then `private-ns`, then `host-staged`.
    #[default]
    Auto,
    /// Detached idmapped clones passed to overlay as fds (kernel 6.15+).
    /// Nothing temporary ever enters a mount tree.
    Detached,
    /// Idmapped clones attached in a private mount namespace of a
    /// short-lived thread (kernel 5.19+).
    PrivateNs,
    /// Idmapped clones attached in a root-only staging directory of the
    /// host, detached and removed right after (kernel 5.19+; last resort).
    HostStaged,
}

impl Strategy {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Detached => "detached",
            Strategy::PrivateNs => "private-ns",
            Strategy::HostStaged => "host-staged",
        }
    }

    /// All strategies, `auto` first.
    pub const ALL: [Strategy; 4] = [
        Strategy::Auto,
        Strategy::Detached,
        Strategy::PrivateNs,
        Strategy::HostStaged,
    ];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "strategy",
                    s,
                    "is not one of auto, detached, private-ns, host-staged",
                )
            })
    }
}

impl Serialize for Strategy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse()
            .map_err(|_| serde::de::Error::custom(format!("unknown strategy {name:?}")))
    }
}
