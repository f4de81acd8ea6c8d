//! `create`, the transaction of a publish (see `transaction`): adding to the table as it
//! is, reading only what a new mapping could clash with or overlap.

use super::transaction::{
    Committed, Moved, Try, after, kernel_error, merged, retrying, touches_limited, update,
    warn_repairs,
};
use crate::engine::counts::{Counts, TableFacts};
use crate::engine::kernel::Kernel;
use crate::engine::overlap;
use crate::engine::ranges::{self, MAX_LOOKUPS};
use crate::engine::table::{self, Declarations, helpers_for};
use crate::error::Error;
use crate::netlink::NetlinkError;
use crate::netlink::nftables::Change;
use crate::plan::Plan;
use crate::ruleset::{Element, Mapping, SET_LIMITED};

/// Adds `mappings` and the helpers they need, reading only the helper elements and, unless
/// `force`, what could overlap them (`overlap::in_table`): each mapping element is created
/// exclusively, and when one exists already (a conflict, or a re-publish whose metadata
/// must be refreshed), the change falls back to `update`, which reads everything and names
/// the conflict.
pub fn create(
    kernel: &mut impl Kernel,
    counts: &mut Option<Counts>,
    mappings: &[Mapping],
    force: bool,
    dry_run: bool,
) -> Result<Committed, Error> {
    let mappings = Mapping::all_recorded_borrowed(mappings);
    let merge = |current: &[Mapping]| merged(current, &mappings, force);
    if dry_run {
        return update(kernel, counts, true, merge);
    }
    let declarations = Declarations::new();
    let elements = Element::mappings(mappings.iter());
    let needed = helpers_for(&mappings[..]);
    // A list is checked against the port's other mappings, which only a full read knows.
    if mappings.iter().any(|m| !m.allow_from.is_empty()) {
        return update(kernel, counts, false, merge);
    }
    // Whether a range holds one of the single ports is asked of the kernel: a lookup of
    // the port in the range map of its kind answers with the interval holding it. For
    // many single ports, the range maps are read instead.
    let singles = mappings.iter().filter(|m| !m.is_range()).count();
    let lookups = match singles <= MAX_LOOKUPS {
        true => ranges::range_keys(&mappings),
        false => Vec::new(),
    };
    // The maps a new range could clash with: the exact map of its kind, and its own range
    // map, where the kernel refuses an interval that starts or ends inside another but
    // takes one that encloses another whole. For single ports, the range maps when not
    // probing.
    let mut read: Vec<&'static str> = Vec::new();
    for mapping in mappings.iter() {
        let sets = match mapping.is_range() {
            // No range is bound to an interface: those ports are in exact maps only.
            false if mapping.on.is_some() => continue,
            true => [
                mapping.part(mapping.host_port, mapping.host_port).set(),
                mapping.set(),
            ],
            false if lookups.is_empty() => [mapping.range_set(); 2],
            false => continue,
        };
        for set in sets {
            if !read.contains(&set) {
                read.push(set);
            }
        }
    }
    let outcome = retrying(|| {
        let snapshot = table::read_trusting(kernel, false, counts.as_ref())?;
        snapshot.layout.check_changeable()?;
        // An older table is migrated by a full read and rebuild.
        if snapshot.exists && snapshot.layout.is_older() {
            return Ok(Try::Done(None));
        }
        // A map the facts know to be empty holds nothing to clash with or overlap.
        let facts = Counts::valid_at(counts, snapshot.genid).and_then(|c| c.facts.as_ref());
        let may_hold = |set: &str| facts.is_none_or(|facts| facts.may_hold(set));
        let read: Vec<&'static str> = read.iter().copied().filter(|s| may_hold(s)).collect();
        let lookups: Vec<(&'static str, Vec<u8>)> = lookups
            .iter()
            .filter(|(s, _)| may_hold(s))
            .cloned()
            .collect();
        // A clash with what the maps read or looked up hold is named by the full read; so
        // is a port that has a list, which the new mapping would not share. Both are read at
        // the generation the batch is committed against.
        if snapshot.exists
            && (ranges::clashes(kernel, &read, &mappings)?
                || ranges::any_held(kernel, &lookups)?
                || (may_hold(SET_LIMITED) && touches_limited(kernel, &mappings)?))
        {
            return Ok(Try::Done(None));
        }
        // Read at this try's generation, so an overlapping mapping another writer adds
        // after the read makes the commit stale, and the next try sees it. A host side
        // that is there already (a re-publish) is no new overlap: `update` (`merged`)
        // decides it, reading everything; any other is refused at once, named.
        if !force
            && snapshot.exists
            && let Some((wanted, holder)) = overlap::in_table(kernel, &mappings, &may_hold)?
        {
            let there = kernel
                .element(wanted.set(), &wanted.key())
                .map_err(kernel_error)?;
            return match there {
                Some(_) => Ok(Try::Done(None)),
                None => Err(overlap::refused(&wanted, &holder)),
            };
        }
        // Every helper the mappings need: adding one that is there changes nothing, and
        // nothing is ever deleted here. Counts that describe this very ruleset name the
        // helpers there are, and those are left out of the batch.
        let there = Counts::valid_at(counts, snapshot.genid).map(|counts| &counts.helpers);
        let add: Vec<Element> = needed
            .iter()
            .map(|(e, _)| e)
            .filter(|e| there.is_none_or(|there| !there.contains_key(&(e.set, e.key.clone()))))
            .cloned()
            .collect();
        let mut changes = declarations.repairs(&snapshot);
        let first_mapping = changes.len();
        changes.extend(elements.iter().map(Change::CreateElement));
        let last_mapping = changes.len();
        changes.extend(add.iter().map(Change::AddElement));
        warn_repairs(&snapshot);
        let moved = Moved::of(&changes);
        match kernel.commit(&changes, Some(snapshot.genid)) {
            // The plan's mapping elements are put in front of the helpers below, moved
            // rather than copied: a range of 10,000 ports makes as many.
            Ok(()) => Ok(Try::Done(Some((
                moved,
                Committed {
                    plan: Plan {
                        create_table: !snapshot.exists,
                        add,
                        ..Plan::default()
                    },
                    genid: snapshot.genid,
                    existed: snapshot.exists,
                    chains: snapshot.chains,
                    ..Committed::default()
                },
            )))),
            Err(NetlinkError::Stale) => Ok(Try::Again),
            Err(NetlinkError::Kernel {
                index: Some(index),
                error,
            }) if error.raw_os_error() == Some(libc::EEXIST)
                && (first_mapping..last_mapping).contains(&index) =>
            {
                Ok(Try::Done(None))
            }
            Err(error) => Err(kernel_error(error)),
        }
    })?;
    let Some((moved, mut committed)) = outcome else {
        return update(kernel, counts, false, merge);
    };
    let helpers = std::mem::replace(&mut committed.plan.add, elements);
    committed.plan.add.extend(helpers);
    // A first publish starts the counts; later ones carry them on while nothing else
    // changed the ruleset since nsport last wrote them.
    let base = match Counts::valid_at(counts, committed.genid) {
        Some(valid) => Some(valid.clone()),
        None if !committed.existed => Some(Counts {
            facts: Some(TableFacts::of(&[])),
            ..Counts::default()
        }),
        None => None,
    };
    *counts = base.and_then(|mut base| {
        base.add(&needed)?;
        if let Some(facts) = &mut base.facts {
            facts.add(&mappings);
        }
        base.genid = after(kernel, committed.genid, moved)?;
        Some(base)
    });
    committed.still_needed = counts.as_ref().map(Counts::still_needed);
    committed.added = mappings.into_owned();
    Ok(committed)
}
