//! Read → plan → commit under one ruleset generation.
//!
//! Every change is planned from what was read at generation G and sent with G in its
//! batch; when anything changed the ruleset in between, the kernel refuses the batch whole
//! (`ERESTART`), and the change is read and planned again, a bounded number of times with
//! a growing, jittered pause. Helper elements are always derived from the complete set of
//! mappings read in the same try, so no writer can strip another's.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::kernel::Kernel;
use super::table::{self, Declarations, HelperKey, Snapshot, helpers_for};
use crate::error::{Error, kernel};
use crate::netlink::NetlinkError;
use crate::netlink::nftables::{ChainDump, Change};
use crate::plan::Plan;
use crate::ruleset::{Element, Mapping};

/// How many times a change is read, planned and committed before giving up.
pub const TRIES: u32 = 10;

/// What a committed (or, on a dry run, planned) change did.
#[derive(Debug, Default)]
pub struct Committed {
    pub plan: Plan,
    /// Every mapping after the change, when the change read them all.
    pub after: Option<Vec<Mapping>>,
    /// Mappings that are new or changed, and mappings that went (or were replaced).
    pub added: Vec<Mapping>,
    pub removed: Vec<Mapping>,
    /// The generation the change was committed against: the ruleset is at the next one
    /// right after the commit, unless another writer followed.
    pub genid: u32,
    /// Whether the table existed before the change.
    pub existed: bool,
    /// Every base chain of every table, as read.
    pub chains: Vec<ChainDump>,
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

/// Takes the table from what it holds to what `decide` wants given what it holds: reads
/// every mapping at one generation, plans the smallest batch (hashed, so linear in the
/// number of mappings), commits it against that generation, and tries again from the read
/// when another writer got in between. `decide` may run more than once.
pub fn update(
    kernel: &mut impl Kernel,
    dry_run: bool,
    mut decide: impl FnMut(&[Mapping]) -> Result<Vec<Mapping>, Error>,
) -> Result<Committed, Error> {
    let declarations = Declarations::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            pause(attempt);
        }
        let snapshot = table::read(kernel, true)?;
        let current: Vec<Mapping> = snapshot.mappings.iter().map(|(m, _)| m.clone()).collect();
        let desired: Vec<Mapping> = decide(&current)?.iter().map(Mapping::as_recorded).collect();
        let diff = Diff::between(&current, &snapshot.helpers, &desired);
        let mut changes = Vec::new();
        if !diff.add.is_empty() || snapshot.exists {
            changes = declarations.repairs(&snapshot);
        }
        let element_offset = changes.len();
        changes.extend(diff.delete.iter().map(Change::DelElement));
        changes.extend(diff.add.iter().map(Change::AddElement));
        let plan = plan_of(&snapshot, &changes, &diff, element_offset);
        let committed = Committed {
            plan,
            after: Some(desired),
            added: diff.added,
            removed: diff.removed,
            genid: snapshot.genid,
            existed: snapshot.exists,
            chains: snapshot.chains.clone(),
        };
        if dry_run || changes.is_empty() {
            return Ok(committed);
        }
        warn_repairs(&snapshot);
        match kernel.commit(&changes, Some(snapshot.genid)) {
            Ok(()) => return Ok(committed),
            Err(NetlinkError::Stale) => continue,
            Err(error) => return Err(named(error, &changes, &snapshot, &committed.added)),
        }
    }
    Err(Error::Busy { tries: TRIES })
}

/// Adds `mappings` and the helpers they need without reading the mappings already there:
/// adding never removes what another writer needs, so the batch only has to be refused
/// when a host port is taken. Each mapping element is created exclusively; when one
/// exists already (a conflict, or a re-publish whose metadata must be refreshed), the
/// change falls back to `update`, which reads everything and names the conflict.
pub fn create(
    kernel: &mut impl Kernel,
    mappings: &[Mapping],
    dry_run: bool,
) -> Result<Committed, Error> {
    let mappings: Vec<Mapping> = mappings.iter().map(Mapping::as_recorded).collect();
    let mappings = mappings.as_slice();
    let merge = |current: &[Mapping]| merged(current, mappings);
    if dry_run {
        return update(kernel, true, merge);
    }
    let declarations = Declarations::new();
    let elements: Vec<Element> = mappings.iter().map(Element::mapping).collect();
    let helpers = helpers_for(mappings);
    for attempt in 0..TRIES {
        if attempt > 0 {
            pause(attempt);
        }
        let snapshot = table::read(kernel, false)?;
        let mut changes = declarations.repairs(&snapshot);
        let offset = changes.len();
        changes.extend(elements.iter().map(Change::CreateElement));
        changes.extend(helpers.iter().map(Change::AddElement));
        warn_repairs(&snapshot);
        match kernel.commit(&changes, Some(snapshot.genid)) {
            Ok(()) => {
                let plan = Plan {
                    create_table: !snapshot.exists,
                    add: elements.iter().chain(&helpers).cloned().collect(),
                    ..Plan::default()
                };
                return Ok(Committed {
                    plan,
                    added: mappings.to_vec(),
                    genid: snapshot.genid,
                    existed: snapshot.exists,
                    chains: snapshot.chains,
                    ..Committed::default()
                });
            }
            Err(NetlinkError::Stale) => continue,
            Err(NetlinkError::Kernel {
                index: Some(index),
                error,
            }) if error.raw_os_error() == Some(libc::EEXIST)
                && (offset..offset + elements.len()).contains(&index) =>
            {
                return update(kernel, false, merge);
            }
            Err(error) => return Err(kernel_error(error)),
        }
    }
    Err(Error::Busy { tries: TRIES })
}

/// `current` with `wanted` put in: a mapping of the same host side with the same target is
/// replaced (its metadata refreshed), one with another target is a conflict.
pub fn merged(current: &[Mapping], wanted: &[Mapping]) -> Result<Vec<Mapping>, Error> {
    let mut by_key: HashMap<(&'static str, Vec<u8>), usize> = HashMap::new();
    let mut out: Vec<Mapping> = current.to_vec();
    for (index, mapping) in out.iter().enumerate() {
        by_key.insert((mapping.set(), mapping.key()), index);
    }
    for mapping in wanted {
        match by_key.get(&(mapping.set(), mapping.key())) {
            Some(&index) if out[index].data() != mapping.data() => {
                return Err(Error::Conflict {
                    host: super::host_label(mapping),
                    existing: super::target_label(&out[index]),
                });
            }
            Some(&index) => out[index] = mapping.clone(),
            None => {
                by_key.insert((mapping.set(), mapping.key()), out.len());
                out.push(mapping.clone());
            }
        }
    }
    Ok(out)
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
            .map(|(m, _)| super::target_label(m))
            .unwrap_or_else(|| "another target".to_string());
        return Error::Conflict {
            host: super::host_label(mapping),
            existing,
        };
    }
    kernel(error)
}

fn plan_of(snapshot: &Snapshot, changes: &[Change<'_>], diff: &Diff, offset: usize) -> Plan {
    let mut notes = Vec::new();
    if snapshot.exists && !snapshot.damaged.is_empty() {
        notes.push(format!(
            "restore chain {} as nsport wrote it",
            snapshot.damaged.join(", chain ")
        ));
    }
    Plan {
        create_table: !snapshot.exists && changes.len() > offset,
        delete: diff.delete.clone(),
        add: diff.add.clone(),
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
    fn between(current: &[Mapping], helpers: &HashSet<HelperKey>, desired: &[Mapping]) -> Diff {
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
        let needed_keys: HashSet<(&'static str, &[u8])> =
            needed.iter().map(|e| (e.set, e.key.as_slice())).collect();
        let mut delete: Vec<Element> = removed.iter().map(Element::mapping).collect();
        let mut stale: Vec<&HelperKey> = helpers
            .iter()
            .filter(|(set, key)| !needed_keys.contains(&(*set, key.as_slice())))
            .collect();
        stale.sort();
        delete.extend(
            stale
                .into_iter()
                .filter_map(|(set, key)| Element::helper(set, key)),
        );
        let mut add: Vec<Element> = added.iter().map(Element::mapping).collect();
        add.extend(
            needed
                .into_iter()
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
