//! The element changes the `update` transaction plans from every mapping there is to
//! every mapping wanted.

use std::borrow::Cow;
use std::collections::HashSet;

use crate::engine::allow;
use crate::engine::table::{HelperKey, Snapshot, helpers_for};
use crate::ruleset::{Element, Mapping};

/// `mappings` hashed, when `needed` (something will be looked up in them).
fn set_of(mappings: &[Mapping], needed: bool) -> HashSet<&Mapping> {
    match needed {
        true => mappings.iter().collect(),
        false => HashSet::new(),
    }
}

/// A mapping as its element records it, without its list: itself when it has none.
fn element_of(mapping: &Mapping) -> Cow<'_, Mapping> {
    match mapping.allow_from.is_empty() {
        true => Cow::Borrowed(mapping),
        false => Cow::Owned(allow::without_list(mapping)),
    }
}

/// `mappings` as their elements record them, hashed, when `needed`.
fn elements_of(mappings: &[Mapping], needed: bool) -> HashSet<Cow<'_, Mapping>> {
    match needed {
        true => mappings.iter().map(element_of).collect(),
        false => HashSet::new(),
    }
}

/// The element changes from one set of mappings to another.
pub(super) struct Diff {
    pub(super) added: Vec<Mapping>,
    pub(super) removed: Vec<Mapping>,
    pub(super) delete: Vec<Element>,
    pub(super) add: Vec<Element>,
}

impl Diff {
    /// Hashed: linear in the number of mappings. A mapping whose host side stays but
    /// whose target or metadata changes is deleted and added again in the same batch.
    /// A mapping whose allow-list alone changes keeps its element (and its counters): only
    /// the list's elements change.
    ///
    /// Each side is hashed only when the other has something to look up in it: `apply`
    /// onto an empty table hashes its mappings once, not four times.
    pub(super) fn between(current: &[Mapping], snapshot: &Snapshot, desired: &[Mapping]) -> Diff {
        let helpers = &snapshot.helpers;
        let desired_set = set_of(desired, !current.is_empty());
        let current_set = set_of(current, !desired.is_empty());
        let removed: Vec<Mapping> = current
            .iter()
            .filter(|m| !desired_set.contains(m))
            .cloned()
            .collect();
        let added: Vec<Mapping> = desired
            .iter()
            .filter(|m| !current_set.contains(m))
            .cloned()
            .collect();
        let needed = helpers_for(desired);
        let needed_keys: HashSet<(&'static str, &[u8])> = needed
            .iter()
            .map(|(e, _)| (e.set, e.key.as_slice()))
            .collect();
        let desired_elements = elements_of(desired, !removed.is_empty());
        let current_elements = elements_of(current, !added.is_empty());
        let (delete_allowed, add_allowed) = allow::allow_diff(&snapshot.allow_elements, desired);
        let mut delete: Vec<Element> = Element::mappings(
            removed
                .iter()
                .filter(|m| !desired_elements.contains(&element_of(m))),
        );
        delete.extend(delete_allowed);
        let mut unneeded: Vec<&HelperKey> = helpers
            .iter()
            .filter(|(set, key)| !needed_keys.contains(&(*set, key.as_slice())))
            .collect();
        unneeded.sort();
        delete.extend(
            unneeded
                .into_iter()
                .filter_map(|(set, key)| Element::helper(set, key)),
        );
        let mut add: Vec<Element> = Element::mappings(
            added
                .iter()
                .filter(|m| !current_elements.contains(&element_of(m))),
        );
        add.extend(add_allowed);
        add.extend(
            needed
                .into_iter()
                .map(|(element, _)| element)
                .filter(|e| !helpers.contains(&(e.set, e.key.clone()))),
        );
        Diff {
            added,
            removed,
            delete,
            add,
        }
    }
}
