//! The engine: the only layer that changes the kernel. Every public operation takes this
//! network namespace's writer lock, reads what it plans from at one ruleset generation,
//! commits one batch against that generation (`transaction`), then turns settings on or
//! puts them back in the order that keeps the host safe at every crash point (`finish`).

mod allow;
mod apply;
mod counts;
mod create;
mod diff;
mod finish;
mod flows;
mod flush;
pub mod kernel;
mod layout;
mod list;
mod overlap;
mod publish;
mod ranges;
mod remove;
mod remove_by_key;
mod resolve;
mod table;
mod transaction;

#[cfg(test)]
mod facts_tests;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod finish_tests;
#[cfg(test)]
mod range_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_overlap;

use std::collections::HashMap;

pub use apply::{apply, parse_mappings};
use std::net::IpAddr;

use counts::Counts;
use finish::{finish_or_roll_back, with_notes};
pub use flush::flush;
use kernel::{Kernel, Netlink};
pub use layout::Layout;
pub(crate) use list::stale_flags;
pub use list::{Listing, damaged_chains, export_nft, list, list_status, table_layout};
pub use publish::{publish, publish_dry_run};
pub use remove::{prune, unpublish, unpublish_netns, unpublish_on};
pub use resolve::{PublishOptions, Target};
pub(crate) use resolve::{bridge_port_of, resolve};
pub(crate) use table::{HELPER_SETS, helpers_for};
use transaction::Committed;

use crate::error::{Error, kernel, state};
use crate::host::firewalls;
use crate::host::settings::Settings;
use crate::host::state::{self, WriterLock};
use crate::netlink::NetlinkError;
use crate::netlink::rtnetlink;
use crate::plan::Plan;
use crate::ruleset::Mapping;

/// This namespace's writer lock, with a note of which namespace it belongs to so that a
/// later clean-up can tell when the namespace is gone.
fn writer_lock() -> Result<WriterLock, Error> {
    let lock = WriterLock::take().map_err(state(state::dir()))?;
    if let Err(error) = state::note_namespace_inode(&lock) {
        log::debug!("cannot note this namespace's inode: {error}");
    }
    Ok(lock)
}

fn kernel_error(error: NetlinkError) -> Error {
    kernel(error)
}

/// Runs a change that reads every mapping, under the writer lock, and finishes it.
fn change(
    dry_run: bool,
    decide: impl FnMut(&[Mapping]) -> Result<Vec<Mapping>, Error>,
) -> Result<Plan, Error> {
    let committed = transact(dry_run, &HashMap::new(), |kernel, counts, dry_run| {
        transaction::update(kernel, counts, dry_run, decide)
    })?;
    Ok(committed.plan)
}

/// Runs one transaction as every change does. A dry run only reads and plans, and its plan
/// gets the notes of what the change would turn on. A real one takes the writer lock and
/// the settings record, commits, then turns settings on or puts them back (`finish`).
fn transact(
    dry_run: bool,
    ports: &HashMap<IpAddr, Option<rtnetlink::Link>>,
    run: impl FnOnce(&mut Netlink, &mut Option<Counts>, bool) -> Result<Committed, Error>,
) -> Result<Committed, Error> {
    let mut kernel = Netlink;
    if dry_run {
        let committed = run(&mut kernel, &mut None, true)?;
        return Ok(Committed {
            plan: with_notes(committed.plan.clone(), &committed.added),
            ..committed
        });
    }
    let lock = writer_lock()?;
    let (mut settings, mut counts) = record(&lock)?;
    let mut committed = run(&mut kernel, &mut counts, false)?;
    committed.warnings = forward_warnings(&mut kernel, &committed, &mut counts);
    finish_or_roll_back(&mut kernel, &mut settings, &mut counts, &committed, ports)?;
    Ok(committed)
}

/// The warnings about other tables' forward chains that would drop what a change
/// published: judged from the chains the change read, or, when the counts' facts stood for
/// them, the ones judged when they were last read (nothing changed the ruleset since but
/// nsport, in its own table). Kept in the facts for the next change. A change that
/// published nothing warns of nothing.
fn forward_warnings(
    kernel: &mut impl Kernel,
    committed: &Committed,
    counts: &mut Option<Counts>,
) -> Vec<String> {
    if committed.added.is_empty() {
        return Vec::new();
    }
    let known = counts
        .as_ref()
        .and_then(|counts| counts.facts.as_ref())
        .and_then(|facts| facts.warnings.clone());
    let warnings = match (&committed.chains, known) {
        (Some(chains), _) => firewalls::dropping_forward_chains(chains),
        (None, Some(known)) => known,
        (None, None) => match kernel.base_chains() {
            Ok(chains) => firewalls::dropping_forward_chains(&chains),
            Err(error) => {
                log::debug!("cannot read the base chains of other tables: {error}");
                return Vec::new();
            }
        },
    };
    if let Some(facts) = counts.as_mut().and_then(|counts| counts.facts.as_mut()) {
        facts.warnings = Some(warnings.clone());
    }
    warnings
}

/// The settings record, read under the writer lock, with the counts it keeps. An
/// unreadable record falls back to what the table names (see `Settings::load`).
fn record(lock: &WriterLock) -> Result<(Settings<'_>, Option<Counts>), Error> {
    let settings = Settings::load(lock, || {
        table::read(&mut Netlink, true)
            .map(|snapshot| table::table_interfaces(&snapshot))
            .unwrap_or_default()
    })?;
    let counts = settings
        .originals
        .counts
        .as_ref()
        .and_then(Counts::from_record);
    Ok((settings, counts))
}

/// Rebuilds a table of an older layout in the current one, in one generation-checked batch
/// that keeps every mapping; nothing to do for a table of the current layout, refused for a
/// newer one. Every other change does the same first, in its own batch.
pub fn migrate(dry_run: bool) -> Result<Plan, Error> {
    change(dry_run, |current| Ok(current.to_vec()))
}

/// The CNI plugin's way in: a change decided from every mapping there is.
pub(crate) fn update(
    dry_run: bool,
    decide: impl FnMut(&[Mapping]) -> Result<Vec<Mapping>, Error>,
) -> Result<Plan, Error> {
    change(dry_run, decide)
}

/// Everything but `chosen`.
fn without(all: &[Mapping], chosen: &[Mapping]) -> Vec<Mapping> {
    let chosen: std::collections::HashSet<&Mapping> = chosen.iter().collect();
    all.iter()
        .filter(|m| !chosen.contains(m))
        .cloned()
        .collect()
}
