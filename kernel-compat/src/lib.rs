//! What Linux kernels can do for idmapped overlays, by version.
//!
//! This crate is the project's knowledge, testable anywhere: release strings
//! parsed into [`KernelVersion`]s, the [`Feature`]s that decide how an
//! idmapped overlay can be assembled, and the mainline version (with its
//! source) that first shipped each one. It makes no syscall beyond reading
//! the running kernel's release string; the live answer comes from
//! `idoverlay probe`, which compares itself against this table.
//!
//! ```
//! use kernel_compat::{Feature, KernelVersion};
//! let kernel: KernelVersion = "6.12.57+deb13-cloud-amd64".parse().unwrap();
//! assert!(Feature::OverlayLowerdirPlus.expected_on(&kernel));
//! assert!(!Feature::OverlayDetachedLayers.expected_on(&kernel));
//! ```
#![deny(missing_docs)]

mod feature;
mod version;

pub use feature::{expected, idmap_expected, idmap_since, Feature};
pub use version::{KernelVersion, ParseVersionError};
