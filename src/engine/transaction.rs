//! Read → plan → commit under one ruleset generation.
//!
//! Every change is planned from what was read at generation G and sent with G in its
//! batch; when anything changed the ruleset in between, the kernel refuses the batch whole
//! (`ERESTART`), and the change is read and planned again, a bounded number of times with
//! a growing, jittered pause. Helper elements are always derived from what was read in the
//! same try, so no writer can strip another's.
//!
//! Three ways in, by what a change must read:
//! - `update` reads every mapping: `apply`, `rm --netns`, `prune`, the CNI plugin.
//! - `create` reads only the helper elements (one per target) and only ever adds: adding
//!   cannot take away what another writer needs, so publishing costs the same at 50,000
//!   mappings as at none.
//! - `remove` reads the mappings it removes by key; the counts the settings record keeps
//!   (`counts`) say which helpers no other mapping needs.
//!
//! Every way in brings the counts up to date with the generation its commit made.
//! `create` and `remove` fall back to `update` when they cannot answer exactly: a host port
//! already taken (a conflict to name, or a re-publish to refresh), or counts that do not
//! describe the ruleset as it is (another writer came by, or a crash).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::allow;
use super::counts::{Counts, TableFacts};
use super::kernel::Kernel;
use super::layout::{self, Rebuild};
use super::overlap;
use super::ranges::{self, Holders, MAX_LOOKUPS};
use super::table::{self, Declarations, HelperKey, Snapshot, helpers_for, mapping_of};
use crate::error::{Error, kernel};
use crate::host::settings::StillNeeded;
use crate::netlink::NetlinkError;
use crate::netlink::nftables::{ChainDump, Change};
use crate::plan::Plan;
use crate::ruleset::{self, Element, Mapping, SET_LIMITED};

/// How many times a change is read, planned and committed before giving up.
pub const TRIES: u32 = 10;

/// What a committed (or, on a dry run, planned) change did.
#[derive(Debug, Default)]
pub struct Committed {
    pub plan: Plan,
    /// What the table still needs of the settings after the change, from its mappings or
    /// from the counts; `None` when neither is known exactly.
    pub still_needed: Option<StillNeeded>,
    /// Mappings that are new or changed, and mappings that went (or were replaced).
    pub added: Vec<Mapping>,
    pub removed: Vec<Mapping>,
    /// The generation the change was committed against: the ruleset is at the next one
    /// right after the commit, unless another writer followed.
    pub genid: u32,
    /// Whether the table existed before the change.
    pub existed: bool,
    /// Every base chain of every table, as read; `None` when the counts' facts stood for
    /// them.
    pub chains: Option<Vec<ChainDump>>,
    /// The warnings about other tables' forward chains that drop published traffic, for
    /// a change that published something (see `forward_warnings`).
    pub warnings: Vec<String>,
    /// The older layout the change migrated the table from, in the same batch.
    pub migrated_from: Option<u32>,
}

/// A pause before try `attempt` (1-based): 1, 2, 4 … ms, jittered by up to as much again,
/// so that writers that collided do not collide again in step.
fn pause(attempt: u32) {
    let base = 1u64 << attempt.min(6);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id().rotate_left(16);
    let jitter = u64::from(seed) % (base * 1000);
    std::thread::sleep(Duration::from_micros(base * 1000 + jitter));
}

/// One try's outcome: done, or read and plan again.
enum Try<T> {
    Done(T),
    Again,
}

/// Runs `attempt` until it is done or `TRIES` tries were refused as stale.
fn retrying<T>(mut attempt: impl FnMut() -> Result<Try<T>, Error>) -> Result<T, Error> {
    for tries in 0..TRIES {
        if tries > 0 {
            pause(tries);
        }
        if let Try::Done(value) = attempt()? {
            return Ok(value);
        }
    }
    Err(Error::Busy { tries: TRIES })
}

/// Takes the table from what it holds to what `decide` wants given what it holds: reads
/// every mapping at one generation, plans the smallest batch (hashed, so linear in the
/// number of mappings), commits it against that generation, and tries again from the read
/// when another writer got in between. `decide` may run more than once.
pub fn update(
    kernel: &mut impl Kernel,
    counts: &mut Option<Counts>,
    dry_run: bool,
    mut decide: impl FnMut(&[Mapping]) -> Result<Vec<Mapping>, Error>,
) -> Result<Committed, Error> {
    let declarations = Declarations::new();
    let committed = retrying(|| {
        let snapshot = table::read(kernel, true)?;
        snapshot.layout.check_changeable()?;
        let current: Vec<Mapping> = snapshot.mappings.iter().map(|(m, _)| m.clone()).collect();
        let mut desired: Vec<Mapping> =
            decide(&current)?.iter().map(Mapping::as_recorded).collect();
        // An older table is rebuilt in the current layout by the very batch that changes it,
        // its runs of identity ports (one element each before layout 3) as ranges.
        let migrating = snapshot.exists && snapshot.layout.is_older();
        if migrating {
            desired = ranges::coalesce(&desired);
        }
        allow::check_shared_lists(&current, &desired)?;
        let diff = Diff::between(&current, &snapshot, &desired);
        ranges::check_overlaps(&desired, &diff.added)?;
        let rebuild;
        let changes = if migrating {
            rebuild = Rebuild::new(kernel, &desired)?;
            rebuild.changes(&declarations)
        } else {
            with_repairs(&declarations, &snapshot, &diff.delete, &diff.add)
        };
        let mut plan = plan_of(&snapshot, &changes, &diff.delete, &diff.add);
        if migrating {
            plan.notes
                .push(layout::migration_note(snapshot.layout.version));
        }
        let committed = Committed {
            migrated_from: migrating.then_some(snapshot.layout.version),
            plan,
            still_needed: Some(StillNeeded::of_mappings(&desired)),
            added: diff.added,
            removed: diff.removed,
            genid: snapshot.genid,
            existed: snapshot.exists,
            chains: snapshot.chains.clone(),
            warnings: Vec::new(),
        };
        if dry_run || changes.is_empty() {
            return Ok(Try::Done((committed, desired, false)));
        }
        Ok(
            match commit(kernel, &changes, &snapshot, &committed.added)? {
                true => Try::Done((committed, desired, true)),
                false => Try::Again,
            },
        )
    })?;
    let (committed, desired, changed) = committed;
    if !dry_run {
        // A table is there after the change when it was before or the change made one.
        let table = committed.existed || committed.plan.create_table;
        *counts = after(kernel, committed.genid, changed).map(|genid| Counts {
            facts: table.then(|| TableFacts::of(&desired)),
            ..Counts::of(&desired, genid)
        });
    }
    Ok(committed)
}

/// The generation the ruleset is at after this change, if the change's own commit is the
/// last one (or there was none): what the counts can be trusted at.
fn after(kernel: &mut impl Kernel, genid: u32, committed: bool) -> Option<u32> {
    let expected = if committed {
        genid.wrapping_add(1)
    } else {
        genid
    };
    kernel.generation().ok().filter(|now| *now == expected)
}

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
    let mappings: Vec<Mapping> = mappings.iter().map(Mapping::as_recorded).collect();
    let merge = |current: &[Mapping]| merged(current, &mappings, force);
    if dry_run {
        return update(kernel, counts, true, merge);
    }
    let declarations = Declarations::new();
    let elements: Vec<Element> = mappings.iter().map(Element::mapping).collect();
    let needed = helpers_for(&mappings);
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
    // The exact maps a new range could clash with, and the range maps when not probing.
    let mut read: Vec<&'static str> = Vec::new();
    for mapping in &mappings {
        let set = match mapping.is_range() {
            // No range is bound to an interface: those ports are in exact maps only.
            false if mapping.on.is_some() => continue,
            true => mapping.part(mapping.host_port, mapping.host_port).set(),
            false if lookups.is_empty() => {
                let range_of = Mapping {
                    host_port_end: Some(mapping.host_port),
                    ..mapping.clone()
                };
                range_of.set()
            }
            false => continue,
        };
        if !read.contains(&set) {
            read.push(set);
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
        match kernel.commit(&changes, Some(snapshot.genid)) {
            Ok(()) => Ok(Try::Done(Some(Committed {
                plan: Plan {
                    create_table: !snapshot.exists,
                    add: elements.iter().chain(&add).cloned().collect(),
                    ..Plan::default()
                },
                added: mappings.clone(),
                genid: snapshot.genid,
                existed: snapshot.exists,
                chains: snapshot.chains,
                ..Committed::default()
            }))),
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
    let Some(mut committed) = outcome else {
        return update(kernel, counts, false, merge);
    };
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
        base.genid = after(kernel, committed.genid, true)?;
        Some(base)
    });
    committed.still_needed = counts.as_ref().map(Counts::still_needed);
    Ok(committed)
}

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
        let mut delete: Vec<Element> = cut.removed.iter().map(Element::mapping).collect();
        delete.extend(unneeded);
        let mut add: Vec<Element> = cut.rest.iter().map(Element::mapping).collect();
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
            return Ok(Try::Done(Some((committed, after_removal, false))));
        }
        Ok(match commit(kernel, &changes, &snapshot, &[])? {
            true => Try::Done(Some((committed, after_removal, true))),
            false => Try::Again,
        })
    })?;
    match outcome {
        Some((committed, mut after_removal, changed)) => {
            *counts = after(kernel, committed.genid, changed).map(|genid| {
                after_removal.genid = genid;
                after_removal
            });
            Ok(committed)
        }
        None => update(kernel, counts, false, from_all),
    }
}

/// Whether a host port of `mappings` has a source allow-list (read from `limited` alone).
fn touches_limited(kernel: &mut impl Kernel, mappings: &[Mapping]) -> Result<bool, Error> {
    if mappings.is_empty() {
        return Ok(false);
    }
    let limited = table::limited_ports(kernel)?;
    Ok(mappings.iter().any(|m| {
        let (proto, first, last) = m.port_span();
        limited
            .iter()
            .any(|&(p, f, l)| p == proto && f <= last && first <= l)
    }))
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

/// The table's repairs (or its creation), then the element changes: deletions first, so
/// that an element deleted and added again in one batch ends up with its new comment.
fn with_repairs<'a>(
    declarations: &'a Declarations,
    snapshot: &Snapshot,
    delete: &'a [Element],
    add: &'a [Element],
) -> Vec<Change<'a>> {
    let mut changes = Vec::new();
    if !add.is_empty() || snapshot.exists {
        changes = declarations.repairs(snapshot);
    }
    if snapshot.exists || !add.is_empty() {
        changes.extend(delete.iter().map(Change::DelElement));
    }
    changes.extend(add.iter().map(Change::AddElement));
    changes
}

/// Commits against the snapshot's generation: `Ok(true)` when applied, `Ok(false)` when
/// the generation was stale, and a refusal named.
fn commit(
    kernel: &mut impl Kernel,
    changes: &[Change<'_>],
    snapshot: &Snapshot,
    added: &[Mapping],
) -> Result<bool, Error> {
    warn_repairs(snapshot);
    match kernel.commit(changes, Some(snapshot.genid)) {
        Ok(()) => Ok(true),
        Err(NetlinkError::Stale) => Ok(false),
        Err(error) => Err(named(error, changes, snapshot, added)),
    }
}

/// `current` with `wanted` put in: a mapping of the same host side with the same target is
/// replaced (its metadata refreshed), and so is one made for the same namespace, whose
/// address changed when it was made again; one with another target is a conflict, and so
/// is one whose host side overlaps another's, unless `force`.
pub fn merged(current: &[Mapping], wanted: &[Mapping], force: bool) -> Result<Vec<Mapping>, Error> {
    type HostSide = (&'static str, Vec<u8>, Option<Vec<u8>>);
    let side = |m: &Mapping| -> HostSide { (m.set(), m.key(), m.key_end()) };
    let mut by_key: HashMap<HostSide, usize> = HashMap::new();
    let mut holders = Holders::default();
    let mut out: Vec<Mapping> = current.to_vec();
    let mut pieces: HashSet<usize> = HashSet::new();
    for (index, mapping) in out.iter().enumerate() {
        by_key.insert(side(mapping), index);
        holders.insert(mapping, index);
    }
    for mapping in wanted {
        match by_key.get(&side(mapping)) {
            Some(&index)
                if out[index].data() != mapping.data() && !same_namespace(&out[index], mapping) =>
            {
                return Err(ranges::conflict(mapping, &out[index]));
            }
            Some(&index) => out[index] = mapping.clone(),
            // Another host side of the same kind may still hold one of its ports: a range
            // holding a single port, or the reverse, or two ranges across each other.
            // A range published again over the pieces `rm` left of it takes their place.
            None => {
                while let Some(index) = holders.clash(mapping) {
                    if !mapping.is_range() || !ranges::is_piece_of(&out[index], mapping) {
                        return Err(ranges::conflict(mapping, &out[index]));
                    }
                    holders.remove(&out[index]);
                    by_key.remove(&side(&out[index]));
                    pieces.insert(index);
                }
                by_key.insert(side(mapping), out.len());
                holders.insert(mapping, out.len());
                out.push(mapping.clone());
            }
        }
    }
    // Host sides that are new must not overlap another; one that is there already (a
    // re-publish, a refresh) keeps whatever overlaps it was published with.
    if !force {
        let current_keys: HashSet<(&'static str, Vec<u8>)> =
            current.iter().map(|m| (m.set(), m.key())).collect();
        let new: Vec<Mapping> = wanted
            .iter()
            .filter(|m| !current_keys.contains(&(m.set(), m.key())))
            .cloned()
            .collect();
        overlap::check(current, &new)?;
    }
    Ok(out
        .into_iter()
        .enumerate()
        .filter(|(index, _)| !pieces.contains(index))
        .map(|(_, mapping)| mapping)
        .collect())
}

/// Whether `wanted` is `existing` again after its namespace was made anew with another
/// address: made for the same namespace by name (not by the CNI plugin, whose containers
/// own their ports through their IDs), to the same port, in the same family.
fn same_namespace(existing: &Mapping, wanted: &Mapping) -> bool {
    existing.netns.is_some()
        && existing.netns == wanted.netns
        && existing.to_port == wanted.to_port
        && existing.is_ipv6() == wanted.is_ipv6()
        && existing.container.is_none()
        && wanted.container.is_none()
}

fn warn_repairs(snapshot: &Snapshot) {
    if !snapshot.damaged.is_empty() {
        log::warn!(
            "table inet nsport was changed by something else (chain {}); restoring what nsport wrote",
            snapshot.damaged.join(", chain ")
        );
    }
}

fn kernel_error(error: NetlinkError) -> Error {
    kernel(error)
}

/// A refused batch, named: a clashing mapping element is the conflict it is.
fn named(
    error: NetlinkError,
    changes: &[Change<'_>],
    snapshot: &Snapshot,
    added: &[Mapping],
) -> Error {
    if let NetlinkError::Kernel {
        index: Some(index),
        error: cause,
    } = &error
        && cause.raw_os_error() == Some(libc::EEXIST)
        && let Some(Change::AddElement(element) | Change::CreateElement(element)) =
            changes.get(*index)
        && let Some(mapping) = added
            .iter()
            .find(|m| m.set() == element.set && m.key() == element.key)
    {
        let existing = snapshot
            .mappings
            .iter()
            .find(|(m, _)| m.set() == element.set && m.key() == element.key)
            .map(|(m, _)| m.target_label())
            .unwrap_or_else(|| "another target".to_string());
        return Error::Conflict {
            host: mapping.host_label(),
            existing,
        };
    }
    kernel(error)
}

fn plan_of(
    snapshot: &Snapshot,
    changes: &[Change<'_>],
    delete: &[Element],
    add: &[Element],
) -> Plan {
    let mut notes = Vec::new();
    if snapshot.exists && !snapshot.damaged.is_empty() {
        notes.push(format!(
            "restore chain {} as nsport wrote it",
            snapshot.damaged.join(", chain ")
        ));
    }
    Plan {
        create_table: !snapshot.exists && !changes.is_empty(),
        delete: delete.to_vec(),
        add: add.to_vec(),
        notes,
        ..Plan::default()
    }
}

/// The element changes from one set of mappings to another.
struct Diff {
    added: Vec<Mapping>,
    removed: Vec<Mapping>,
    delete: Vec<Element>,
    add: Vec<Element>,
}

impl Diff {
    /// Hashed: linear in the number of mappings. A mapping whose host side stays but
    /// whose target or metadata changes is deleted and added again in the same batch.
    /// A mapping whose allow-list alone changes keeps its element (and its counters): only
    /// the list's elements change.
    fn between(current: &[Mapping], snapshot: &Snapshot, desired: &[Mapping]) -> Diff {
        let helpers = &snapshot.helpers;
        let desired_set: HashSet<&Mapping> = desired.iter().collect();
        let current_set: HashSet<&Mapping> = current.iter().collect();
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
        let desired_elements: HashSet<Mapping> = desired.iter().map(allow::without_list).collect();
        let current_elements: HashSet<Mapping> = current.iter().map(allow::without_list).collect();
        let (delete_allowed, add_allowed) = allow::allow_diff(&snapshot.allow_elements, desired);
        let mut delete: Vec<Element> = removed
            .iter()
            .map(allow::without_list)
            .filter(|m| !desired_elements.contains(m))
            .map(|m| Element::mapping(&m))
            .collect();
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
        let mut add: Vec<Element> = added
            .iter()
            .map(allow::without_list)
            .filter(|m| !current_elements.contains(m))
            .map(|m| Element::mapping(&m))
            .collect();
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
