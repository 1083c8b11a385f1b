//! A containerd proxy snapshotter whose idmapped snapshots are overlays
//! assembled by idoverlay: each layer an idmapped detached clone handed to
//! overlayfs by fd, so nothing temporary is ever mounted where a recursive
//! delete could walk into it.
//!
//! Without map labels it behaves as containerd's overlayfs snapshotter
//! (same directory layout, same mounts). With the labels containerd sends
//! for a user-namespaced container (`ctr run --remap-labels`, CRI pods with
//! `hostUsers: false`) it attaches the container's overlay itself and
//! hands containerd a bind mount of it. See docs/containerd.md.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod filter;
pub mod labels;
pub mod log;
pub mod mounts;
pub mod remove;
pub mod service;
pub mod snapshots;
pub mod storage;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;

pub use error::{Error, Result};
pub use snapshots::Snapshots;
