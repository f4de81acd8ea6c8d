//! After a change is committed: settings turned on in the order that keeps the host safe,
//! settings put back when nothing needs them, flows forgotten; and when turning on fails,
//! the change taken back.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::counts::Counts;
use super::kernel::Kernel;
use super::resolve::bridge_port_of;
use super::transaction::{self, Committed, Moved};
use super::{flows, kernel_error, table};
use crate::error::{Error, kernel};
use crate::host::settings::{self, Settings, TargetNeeds};
use crate::netlink::NetlinkError;
use crate::netlink::nftables::Change;
use crate::netlink::rtnetlink;
use crate::plan::Plan;
use crate::ruleset::{self, Element, Mapping};

pub(super) fn with_notes(mut plan: Plan, added: &[Mapping]) -> Plan {
    let opening = settings::forwarding_off(added);
    plan.add
        .extend(opening.iter().map(|ipv6| Element::closed(*ipv6)));
    plan.notes.extend(settings::would_turn_on(added));
    plan
}

/// Turns on what the committed change needs, puts back what it no longer needs, and
/// forgets the flows whose path changed. When turning on fails (the record cannot be
/// saved, say), the mappings the change added are taken out again, so that the command
/// either did all it was asked or, as far as it can, nothing.
pub(super) fn finish_or_roll_back(
    kernel: &mut impl Kernel,
    settings: &mut Settings<'_>,
    counts: &mut Option<Counts>,
    committed: &Committed,
    ports: &HashMap<IpAddr, Option<rtnetlink::Link>>,
) -> Result<(), Error> {
    settings.originals.counts = counts.as_ref().map(Counts::to_record);
    let error = match finish(kernel, settings, counts, committed, ports) {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    if committed.added.is_empty() || !committed.removed.is_empty() {
        return Err(Error::Unfinished(Box::new(error)));
    }
    let added = &committed.added;
    let undo = transaction::update(kernel, counts, false, |current| {
        Ok(current
            .iter()
            .filter(|m| !added.contains(m))
            .cloned()
            .collect())
    });
    let put_back = undo.and_then(|undone| {
        settings.originals.counts = counts.as_ref().map(Counts::to_record);
        match &undone.still_needed {
            Some(needed) => settings.put_back_unneeded(needed).map(drop),
            None => settings.save(),
        }
    });
    match put_back {
        Ok(()) => Err(Error::RolledBack(Box::new(error))),
        Err(undo_error) => {
            log::warn!("could not take the change back: {undo_error:#}");
            Err(Error::Unfinished(Box::new(error)))
        }
    }
}

fn finish(
    kernel: &mut impl Kernel,
    settings: &mut Settings<'_>,
    counts: &mut Option<Counts>,
    committed: &Committed,
    ports: &HashMap<IpAddr, Option<rtnetlink::Link>>,
) -> Result<(), Error> {
    // The counts first: whatever fails later, they describe the table as committed.
    settings.save()?;
    if let Some(from) = committed.migrated_from {
        log::warn!(
            "table inet nsport was in layout {from}; it was rebuilt in layout {} with every \
             mapping (their counters start again)",
            crate::ruleset::LAYOUT
        );
    }
    if !committed.existed && !settings.originals.changes_nothing() {
        // What the record names was set for a table someone else deleted since.
        log::warn!(
            "table inet nsport was deleted by something else; putting back {}",
            settings.put_back_summary()
        );
        settings.put_back_everything()?;
    }
    let needs = target_needs(&committed.added, ports)?;
    // The generation nsport's own last commit made: the counts' one, which was read back
    // right after the commit. Without counts nothing is vouched for: the generation one
    // past the change's read would also be where a single commit of another writer left
    // it (or the change committed nothing), so the guard is read rather than assumed.
    let mut own = counts.as_ref().map(|counts| counts.genid);
    let mut exposing = committed.added.iter().any(Mapping::serves_loopback);
    // Forwarding that nsport turns on must open nothing but the published ports: the
    // family is closed in the table before the setting goes on.
    let forwarding = settings::forwarding_of(&committed.added);
    let opening = forwarding.off;
    if !opening.is_empty() {
        let closed: Vec<Element> = opening.iter().map(|v6| Element::closed(*v6)).collect();
        let changes: Vec<Change> = closed.iter().map(Change::CreateElement).collect();
        own = commit_own(kernel, &changes, own).map_err(kernel_error)?;
        // Saved by `turn_on` below, which records the forwarding it is about to turn on.
        follow_in_record(counts, settings, own);
        exposing = true;
    }
    let localnet_on = settings.turn_on(&needs, &forwarding.on)?;
    if let Some(needed) = &committed.still_needed {
        exposing |= settings.turn_on_missing(needed, &localnet_on)?;
    }
    if exposing {
        verify_guard(kernel, own, settings)?;
    }
    if let Some(needed) = &committed.still_needed {
        let reopened = settings.put_back_unneeded(needed)?;
        // Forwarding is back off: the family's closing goes after it, as protections do.
        let closed: Vec<Element> = reopened.iter().map(|v6| Element::closed(*v6)).collect();
        let changes: Vec<Change> = closed.iter().map(Change::DelElement).collect();
        if !changes.is_empty() {
            match commit_own(kernel, &changes, own) {
                Ok(after) => {
                    if follow_in_record(counts, settings, after) {
                        settings.save()?;
                    }
                }
                // Nothing was committed: the generation did not move.
                Err(error) if error.errno() == Some(libc::ENOENT) => {}
                Err(error) => return Err(kernel_error(error)),
            }
        }
    }
    flows::forget(&committed.removed, &committed.added);
    Ok(())
}

/// Commits one of finish's own batches (the `closed` elements), against `own`, the
/// generation nsport's own last commit made. Returns the generation the ruleset is at
/// when it is provably this batch's: the kernel took it against `own`, so nothing came in
/// between. Elements are created exclusively, so that a batch the kernel takes moved the
/// generation on by one (see `transaction::Moved`): closing a family that is closed
/// already (forwarding was turned off by hand) is refused, applies nothing, and is sent
/// again without that element. When another writer (an `nft` run, which takes no writer
/// lock) moved the generation first, the batch is sent again unchecked, since closing a
/// family must not wait on anyone, and no generation is vouched for: the next change then
/// reads and checks everything, as after any other writer.
pub(super) fn commit_own(
    kernel: &mut impl Kernel,
    changes: &[Change<'_>],
    own: Option<u32>,
) -> Result<Option<u32>, NetlinkError> {
    let mut changes = changes.to_vec();
    if let Some(own) = own {
        match commit_all_but_present(kernel, &mut changes, Some(own)) {
            Ok(()) if changes.is_empty() => return Ok(Some(own)),
            Ok(()) => return Ok(transaction::after(kernel, own, Moved::of(&changes))),
            Err(NetlinkError::Stale) => {}
            Err(error) => return Err(error),
        }
    }
    commit_all_but_present(kernel, &mut changes, None)?;
    Ok(None)
}

/// Commits `changes`, leaving out each element created exclusively that is there already;
/// `changes` ends as what was committed, empty when everything was there. A batch refused
/// with EEXIST applied nothing. Which element the kernel refused is not taken from its
/// error: a kernel before 5.19 names only the message, which holds every element of a set
/// (both families' `closed`), so each element created is looked up instead.
fn commit_all_but_present(
    kernel: &mut impl Kernel,
    changes: &mut Vec<Change<'_>>,
    genid: Option<u32>,
) -> Result<(), NetlinkError> {
    while !changes.is_empty() {
        let error = match kernel.commit(changes, genid) {
            Err(error @ NetlinkError::Kernel { .. }) if error.errno() == Some(libc::EEXIST) => {
                error
            }
            result => return result,
        };
        let before = changes.len();
        let mut absent = Vec::with_capacity(before);
        for change in changes.drain(..) {
            let there = match change {
                Change::CreateElement(element) => {
                    kernel.element(element.set, &element.key)?.is_some()
                }
                _ => false,
            };
            if !there {
                absent.push(change);
            }
        }
        if absent.len() == before {
            return Err(error);
        }
        *changes = absent;
    }
    Ok(())
}

/// Moves the counts on to the generation `commit_own` vouched for, so that the next change
/// trusts them (and the chains their generation verified) without reading everything;
/// finish's batches touch no helper element and no chain, so the counts stay exact.
/// Whether they moved, and the settings record needs them.
pub(super) fn follow(counts: &mut Option<Counts>, own: Option<u32>) -> bool {
    let (Some(counts), Some(own)) = (counts.as_mut(), own) else {
        return false;
    };
    if crate::netlink::nftables::next_generation(counts.genid) != own {
        return false;
    }
    counts.genid = own;
    true
}

/// `follow`, and the record given the counts when they moved.
fn follow_in_record(
    counts: &mut Option<Counts>,
    settings: &mut Settings<'_>,
    own: Option<u32>,
) -> bool {
    let moved = follow(counts, own);
    if moved {
        settings.originals.counts = counts.as_ref().map(Counts::to_record);
    }
    moved
}

/// After route_localnet went on: the guard committed with the change must still be there.
/// When the ruleset is still at the generation nsport's own last commit made, nothing
/// touched it; otherwise the table is read again, and a missing or edited guard puts the
/// setting back.
fn verify_guard(
    kernel: &mut impl Kernel,
    own: Option<u32>,
    settings: &mut Settings<'_>,
) -> Result<(), Error> {
    if let Some(own) = own
        && kernel.generation().map_err(kernel_error)? == own
    {
        return Ok(());
    }
    let snapshot = table::read(kernel, false)?;
    if snapshot.exists && !snapshot.damaged.contains(&ruleset::CHAIN_GUARD) {
        return Ok(());
    }
    settings.put_back_everything()?;
    Err(Error::Netlink(NetlinkError::Kernel {
        index: None,
        error: std::io::Error::other(
            "the guard chain of table inet nsport was removed while route_localnet was being turned on; route_localnet was put back",
        ),
    }))
}

/// Groups mappings by target, with the bridge port of each: from the resolved publish when
/// known, else looked up once per target (not once per mapping: an `apply` of thousands of
/// ports behind a few namespaces does a few lookups).
fn target_needs<'a>(
    mappings: &'a [Mapping],
    ports: &HashMap<IpAddr, Option<rtnetlink::Link>>,
) -> Result<Vec<TargetNeeds<'a>>, Error> {
    let mut groups: BTreeMap<(&str, IpAddr), Vec<&Mapping>> = BTreeMap::new();
    for mapping in mappings {
        groups
            .entry((mapping.via.as_str(), mapping.to_addr))
            .or_default()
            .push(mapping);
    }
    let mut links: HashMap<&str, Option<rtnetlink::Link>> = HashMap::new();
    let mut needs = Vec::new();
    for ((via, addr), group) in groups {
        let bridge_port = match ports.get(&addr) {
            Some(port) => port.clone(),
            None => {
                let link = match links.get(via) {
                    Some(link) => link.clone(),
                    None => {
                        let link = rtnetlink::link_by_name(via).map_err(kernel)?;
                        links.insert(via, link.clone());
                        link
                    }
                };
                match link {
                    Some(link) => bridge_port_of(group[0], &link)?,
                    None => None,
                }
            }
        };
        needs.push(TargetNeeds {
            via,
            bridge_port,
            mappings: group,
        });
    }
    Ok(needs)
}
