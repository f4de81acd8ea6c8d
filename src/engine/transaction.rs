//! Read → plan → commit under one ruleset generation.
//!
//! Every change is planned from what was read at generation G and sent with G in its
//! batch; when anything changed the ruleset in between, the kernel refuses the batch whole
//! (`ERESTART`), and the change is read and planned again, a bounded number of times with
//! a growing, jittered pause. Helper elements are always derived from what was read in the
//! same try, so no writer can strip another's.
//!
//! Three ways in, by what a change must read (the latter two in `create.rs` and
//! `remove_by_key.rs`, the plan of the first in `diff.rs`):
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
use super::ranges::{self, Holders};
use super::table::{self, Declarations, Snapshot};
use crate::error::{Error, kernel};
use crate::host::settings::StillNeeded;
use crate::netlink::NetlinkError;
use crate::netlink::nftables::{ChainDump, Change};
use crate::plan::Plan;
use crate::ruleset::{Element, Mapping};

pub use super::create::create;
use super::diff::Diff;
pub use super::remove_by_key::remove;

/// How many times a change is read, planned and committed before giving up.
pub const TRIES: u32 = 10;

/// The layout that brought the range maps: a table of an older one held a range as one
/// element per port.
const RANGES_LAYOUT: u32 = 3;

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
pub(super) enum Try<T> {
    Done(T),
    Again,
}

/// Runs `attempt` until it is done or `TRIES` tries were refused as stale.
pub(super) fn retrying<T>(mut attempt: impl FnMut() -> Result<Try<T>, Error>) -> Result<T, Error> {
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
        let mut desired: Vec<Mapping> = Mapping::all_recorded(decide(&current)?);
        // An older table is rebuilt in the current layout by the very batch that changes it,
        // its runs of identity ports (one element each before layout 3) as ranges. Single
        // ports published as such in a table of layout 3 stay single.
        let migrating = snapshot.exists && snapshot.layout.is_older();
        if migrating && snapshot.layout.version < RANGES_LAYOUT {
            desired = ranges::coalesce(&desired);
        }
        allow::check_shared_lists(&current, &desired)?;
        let Diff {
            added,
            removed,
            delete,
            add,
        } = Diff::between(&current, &snapshot, &desired);
        ranges::check_overlaps(&desired, &added)?;
        let rebuild = match migrating {
            true => Some(Rebuild::new(kernel, &desired)?),
            false => None,
        };
        // The plan owns the elements and the batch borrows them: 50,000 elements are not
        // copied to be reported.
        let mut plan = Plan {
            delete,
            add,
            notes: repair_notes(&snapshot),
            ..Plan::default()
        };
        if migrating {
            plan.notes
                .push(layout::migration_note(snapshot.layout.version));
        }
        let (create_table, committed_now) = {
            let changes = match &rebuild {
                Some(rebuild) => rebuild.changes(&declarations),
                None => with_repairs(&declarations, &snapshot, &plan.delete, &plan.add),
            };
            let committed_now = match dry_run || changes.is_empty() {
                true => Some(Moved::Not),
                false => commit(kernel, &changes, &snapshot, &added)?.then(|| Moved::of(&changes)),
            };
            (!snapshot.exists && !changes.is_empty(), committed_now)
        };
        // Refused as stale: read and plan again.
        let Some(changed) = committed_now else {
            return Ok(Try::Again);
        };
        plan.create_table = create_table;
        let committed = Committed {
            migrated_from: migrating.then_some(snapshot.layout.version),
            plan,
            still_needed: Some(StillNeeded::of_mappings(&desired)),
            added,
            removed,
            genid: snapshot.genid,
            existed: snapshot.exists,
            chains: snapshot.chains.clone(),
            warnings: Vec::new(),
        };
        Ok(Try::Done((committed, desired, changed)))
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

/// What a change's commit, checked against the generation of its read, did to that
/// generation. The kernel moves it on for a batch that made a transaction and leaves it
/// for one that made none (every message adding what was there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Moved {
    /// Nothing was committed.
    Not,
    /// The batch held a change that is always a transaction (an element created
    /// exclusively or deleted, a rule added, a chain or the table deleted): the
    /// generation moved on by one, to this batch's.
    ByOne,
    /// The batch may have changed nothing: only reading the generation again tells.
    Unknown,
}

impl Moved {
    /// What committing `changes` did, told from the changes alone when it can be.
    pub(super) fn of(changes: &[Change<'_>]) -> Moved {
        let always = |change: &Change<'_>| match change {
            Change::CreateElement(_)
            | Change::DelElement(_)
            | Change::AddRule(_)
            | Change::DelChain(_)
            | Change::DelTable => true,
            Change::AddTable { exclusive } => *exclusive,
            Change::AddChain(_)
            | Change::FlushChain(_)
            | Change::AddSet(_)
            | Change::AddElement(_) => false,
        };
        match changes.iter().any(always) {
            true => Moved::ByOne,
            false => Moved::Unknown,
        }
    }
}

/// The generation the ruleset is at after a change read at `genid` committed, checked
/// against it, what `moved` says, while that commit is provably the last: what the counts
/// can be trusted at. Told without asking the kernel when the batch must have moved the
/// generation (a publish creates its elements exclusively) or committed nothing: a later
/// writer then leaves the ruleset at another generation, and the next change reads
/// everything. A batch that may have changed nothing is asked after; another writer's
/// commit in the microseconds between that batch and the question is the one case this
/// cannot tell from the batch's own.
pub(super) fn after(kernel: &mut impl Kernel, genid: u32, moved: Moved) -> Option<u32> {
    let next = crate::netlink::nftables::next_generation(genid);
    match moved {
        Moved::Not => Some(genid),
        Moved::ByOne => Some(next),
        Moved::Unknown => kernel
            .generation()
            .ok()
            .filter(|now| *now == next || *now == genid),
    }
}

/// Whether a host port of `mappings` has a source allow-list (read from `limited` alone).
pub(super) fn touches_limited(
    kernel: &mut impl Kernel,
    mappings: &[Mapping],
) -> Result<bool, Error> {
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

/// The table's repairs (or its creation), then the element changes: deletions first, so
/// that an element deleted and added again in one batch ends up with its new comment.
///
/// Every element `add` holds was absent at the generation the batch is checked against
/// (`Diff` leaves out what the full read found), so it is created exclusively: a batch
/// that commits then provably moved the generation by one, and the counts follow it
/// without asking the kernel, where a read afterwards could take another writer's commit
/// in between for this one.
pub(super) fn with_repairs<'a>(
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
    changes.extend(add.iter().map(Change::CreateElement));
    changes
}

/// Commits against the snapshot's generation: `Ok(true)` when applied, `Ok(false)` when
/// the generation was stale, and a refusal named.
pub(super) fn commit(
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

pub(super) fn warn_repairs(snapshot: &Snapshot) {
    if !snapshot.damaged.is_empty() {
        log::warn!(
            "table inet nsport was changed by something else (chain {}); restoring what nsport wrote",
            snapshot.damaged.join(", chain ")
        );
    }
}

pub(super) fn kernel_error(error: NetlinkError) -> Error {
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

pub(super) fn plan_of(
    snapshot: &Snapshot,
    changes: &[Change<'_>],
    delete: &[Element],
    add: &[Element],
) -> Plan {
    Plan {
        create_table: !snapshot.exists && !changes.is_empty(),
        delete: delete.to_vec(),
        add: add.to_vec(),
        notes: repair_notes(snapshot),
        ..Plan::default()
    }
}

/// What a plan says about the table's own damage, which its batch repairs.
fn repair_notes(snapshot: &Snapshot) -> Vec<String> {
    let mut notes = Vec::new();
    if snapshot.exists && !snapshot.damaged.is_empty() {
        notes.push(format!(
            "restore chain {} as nsport wrote it",
            snapshot.damaged.join(", chain ")
        ));
    }
    notes
}
