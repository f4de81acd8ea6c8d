//! `remove`, the transaction of an `rm` by port (see `transaction`): taking mappings out
//! by key, reading only them and trusting the counts for the helpers other mappings still
//! need.

use std::collections::{HashMap, HashSet};

use super::transaction::{
    Committed, Moved, Try, after, commit, kernel_error, plan_of, retrying, touches_limited, update,
    with_repairs,
};
use crate::engine::counts::Counts;
use crate::engine::kernel::Kernel;
use crate::engine::ranges;
use crate::engine::table::{self, Declarations, helpers_for, mapping_of};
use crate::error::Error;
use crate::ruleset::{self, Element, Mapping, SET_LIMITED};

/// Removes the mappings `choose` picks among those `keys` find (each a map and a key),
/// reading only those elements and the helper elements. `choose` gets, for each key in
/// order, the mapping found there (in a range map, the range holding the key), if any, and
/// may refuse (a port not published); it returns what goes: whole mappings, or ports of a
/// range found, which is then cut (`ranges::cut`) and its other ports stay published.
pub fn remove(
    kernel: &mut impl Kernel,
    counts: &mut Option<Counts>,
    keys: &[(&'static str, Vec<u8>)],
    dry_run: bool,
    choose: impl Fn(&[Option<Mapping>]) -> Result<Vec<Mapping>, Error>,
) -> Result<Committed, Error> {
    let from_all = |current: &[Mapping]| {
        let by_key: HashMap<(&'static str, Vec<u8>), &Mapping> =
            current.iter().map(|m| ((m.set(), m.key()), m)).collect();
        let ranges: Vec<&Mapping> = current.iter().filter(|m| m.is_range()).collect();
        let found: Vec<Option<Mapping>> = keys
            .iter()
            .map(|(set, key)| match ruleset::is_range_set(set) {
                true => ranges
                    .iter()
                    .find(|m| m.holds(set, key))
                    .map(|m| (*m).clone()),
                false => by_key.get(&(*set, key.clone())).map(|m| (*m).clone()),
            })
            .collect();
        let cut = ranges::cut(&holders(&found), &choose(&found)?);
        let removed: HashSet<&Mapping> = cut.removed.iter().collect();
        Ok(current
            .iter()
            .filter(|m| !removed.contains(m))
            .cloned()
            .chain(cut.rest)
            .collect())
    };
    if dry_run {
        return update(kernel, counts, true, from_all);
    }
    let declarations = Declarations::new();
    let outcome = retrying(|| {
        let snapshot = table::read_trusting(kernel, false, counts.as_ref())?;
        snapshot.layout.check_changeable()?;
        // An older table is migrated by a full read and rebuild.
        if snapshot.exists && snapshot.layout.is_older() {
            return Ok(Try::Done(None));
        }
        // Without counts that describe this very ruleset, only a full read can tell which
        // helpers another mapping still needs.
        let Some(valid) = Counts::valid_at(counts, snapshot.genid) else {
            return Ok(Try::Done(None));
        };
        // Every key is looked up, whatever the facts say: a lookup is one small answer, and
        // a port must never be called unpublished on the word of a record.
        let may_hold = |set: &str| valid.facts.as_ref().is_none_or(|f| f.may_hold(set));
        let mut found = Vec::with_capacity(keys.len());
        for (set, key) in keys {
            let element = match snapshot.exists {
                true => kernel.element(set, key).map_err(kernel_error)?,
                false => None,
            };
            found.push(element.and_then(|element| mapping_of(set, &element)));
        }
        // Ports of a range go by cutting it: the range is deleted, and what is left of it
        // added again, as new elements, in the same batch.
        let cut = ranges::cut(&holders(&found), &choose(&found)?);
        // A port with a list loses it with its last mapping, which only a full read knows.
        if may_hold(SET_LIMITED)
            && (touches_limited(kernel, &cut.removed)? || touches_limited(kernel, &cut.rest)?)
        {
            return Ok(Try::Done(None));
        }
        let mut after_removal = valid.clone();
        // Facts that do not add up are dropped: the next change reads the table.
        if let Some(facts) = &mut after_removal.facts {
            if facts.remove(&cut.removed).is_none() {
                after_removal.facts = None;
            } else {
                facts.add(&cut.rest);
            }
        }
        let Some(new_helpers) = after_removal.add(&helpers_for(&cut.rest)) else {
            return Ok(Try::Done(None));
        };
        let Some(unneeded) = after_removal.remove(&helpers_for(&cut.removed)) else {
            return Ok(Try::Done(None));
        };
        let mut delete: Vec<Element> = Element::mappings(&cut.removed);
        delete.extend(unneeded);
        let mut add: Vec<Element> = Element::mappings(&cut.rest);
        add.extend(new_helpers);
        let changes = if cut.removed.is_empty() {
            Vec::new()
        } else {
            with_repairs(&declarations, &snapshot, &delete, &add)
        };
        let committed = Committed {
            plan: plan_of(&snapshot, &changes, &delete, &add),
            still_needed: Some(after_removal.still_needed()),
            removed: cut.removed,
            added: cut.rest,
            genid: snapshot.genid,
            existed: snapshot.exists,
            chains: snapshot.chains.clone(),
            ..Committed::default()
        };
        if changes.is_empty() {
            return Ok(Try::Done(Some((committed, after_removal, Moved::Not))));
        }
        Ok(match commit(kernel, &changes, &snapshot, &[])? {
            true => Try::Done(Some((committed, after_removal, Moved::of(&changes)))),
            false => Try::Again,
        })
    })?;
    match outcome {
        Some((committed, mut after_removal, moved)) => {
            *counts = after(kernel, committed.genid, moved).map(|genid| {
                after_removal.genid = genid;
                after_removal
            });
            Ok(committed)
        }
        None => update(kernel, counts, false, from_all),
    }
}

/// The mappings found, each once.
fn holders(found: &[Option<Mapping>]) -> Vec<Mapping> {
    let mut seen: HashSet<&Mapping> = HashSet::new();
    found
        .iter()
        .flatten()
        .filter(|mapping| seen.insert(mapping))
        .cloned()
        .collect()
}
