//! Overlapping names beneath one root: the same layer given twice, or one
//! inside another, found in linear time.

use std::path::Path;

use super::Role;
use crate::error::{display_path, Error};

/// Two members that overlap, by index.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Clash {
    /// (earlier, later) are the same directory.
    Same(usize, usize),
    /// (outer, inner): the second lies inside the first.
    Inside(usize, usize),
}

/// The first overlap among members' relative names (normalized, below one
/// root, no mount in between): the same name twice, or a name that is a
/// whole-component prefix of another (`""`, the root itself, holds all).
///
/// `count` is at least the number of members (it sizes the table).
///
/// In time linear in the names' length, without sorting (this runs on
/// every mount, and real stacks nest names like `<id>/fs`): every name goes
/// into an open-addressing table over member indices, then every proper
/// directory prefix of every name is looked up in it. The hash is FxHash's
/// multiply-rotate: the names are the caller's own, so a flooding-resistant
/// hash would buy nothing and cost more than the whole check.
pub(super) fn first_clash<'n>(
    members: impl Iterator<Item = usize> + Clone,
    count: usize,
    name: impl Fn(usize) -> &'n [u8],
) -> Option<Clash> {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    // Byte by byte into 8-byte words (names are short: no memcpy call per
    // name), noting any `/` on the way.
    let hash = |name: &[u8], slash: &mut bool| {
        let mut h = name.len() as u64;
        for chunk in name.chunks(8) {
            let mut word = 0u64;
            for (i, &b) in chunk.iter().enumerate() {
                word |= u64::from(b) << (8 * i);
                *slash |= b == b'/';
            }
            h = (h.rotate_left(5) ^ word).wrapping_mul(K);
        }
        // The high bits are the well-mixed ones.
        (h >> 32) as usize
    };
    let slots = (count * 2).next_power_of_two();
    // 0 is an empty slot; otherwise a member + 1.
    let mut table = vec![0u32; slots];
    let lookup = |table: &[u32], wanted: &[u8], slash: &mut bool| -> Result<usize, usize> {
        let mut i = hash(wanted, slash) & (slots - 1);
        loop {
            match table[i] {
                0 => return Err(i),
                e if name(e as usize - 1) == wanted => return Ok(e as usize - 1),
                _ => i = (i + 1) & (slots - 1),
            }
        }
    };
    let mut nested = false;
    // The root itself (an empty name) holds every other member.
    let (mut root, mut other) = (None, None);
    for k in members.clone() {
        let n = name(k);
        match lookup(&table, n, &mut nested) {
            Ok(first) => return Some(Clash::Same(first, k)),
            Err(slot) => table[slot] = k as u32 + 1,
        }
        match n.is_empty() {
            true => root = Some(k),
            false => other = other.or(Some(k)),
        }
    }
    if let (Some(root), Some(other)) = (root, other) {
        return Some(Clash::Inside(root, other));
    }
    if nested {
        for k in members {
            let full = name(k);
            for (cut, _) in full.iter().enumerate().filter(|(_, b)| **b == b'/') {
                if let Ok(outer) = lookup(&table, &full[..cut], &mut false) {
                    return Some(Clash::Inside(outer, k));
                }
            }
        }
    }
    None
}

/// The one-line refusal for a [`Clash`] between two layers, each described
/// by its 1-based number, path as given and role.
pub(super) fn clash_error<'p>(
    clash: Clash,
    describe: impl Fn(usize) -> (usize, &'p Path, Role),
) -> Error {
    let (outer, inner, same) = match clash {
        Clash::Same(first, later) => (first, later, true),
        Clash::Inside(outer, inner) => (outer, inner, false),
    };
    let (n1, p1, _) = describe(outer);
    let (_, p2, role2) = describe(inner);
    let why = if same {
        format!(
            "is the same directory as layer {n1} ({}); give each layer once",
            display_path(p1)
        )
    } else {
        format!(
            "lies inside layer {n1} ({}); overlay needs separate directory trees",
            display_path(p1)
        )
    };
    Error::invalid_path(role2.noun(), p2, why)
}
