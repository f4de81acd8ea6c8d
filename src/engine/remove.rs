//! `rm`, `rm --netns` and `prune`: unpublishing by host side, by namespace, or because the
//! namespace is gone.

use std::collections::HashMap;
use std::net::IpAddr;

use super::list::stale_flags;
use super::{change, ranges, transact, transaction, without};
use crate::error::Error;
use crate::host::netns::{Namespace, NamespaceError};
use crate::host::state;
use crate::plan::Plan;
use crate::ruleset::metadata::same_name;
use crate::ruleset::{self, Mapping};
use crate::spec::{self, HostSpec};

/// Unpublishes the host ports of `specs`, in one batch; all or nothing: when one is not
/// published, nothing is removed and the error names it. Returns what was removed.
///
/// ```no_run
/// # fn main() -> Result<(), nsport::Error> {
/// let removed = nsport::unpublish(&["8080".parse()?, "127.0.0.1:5353/udp".parse()?], false)?;
/// println!("{} mappings removed", removed.delete.len());
/// # Ok(())
/// # }
/// ```
pub fn unpublish(specs: &[HostSpec], dry_run: bool) -> Result<Plan, Error> {
    unpublish_on(None, specs, dry_run)
}

/// The same for host ports published on interface `on` (`add --on`), or on every
/// interface when `None`.
pub fn unpublish_on(on: Option<&str>, specs: &[HostSpec], dry_run: bool) -> Result<Plan, Error> {
    crate::netlink::pinned_for(|| unpublish_pinned(on, specs, dry_run))
}

fn unpublish_pinned(on: Option<&str>, specs: &[HostSpec], dry_run: bool) -> Result<Plan, Error> {
    if let Some(name) = on {
        super::resolve::check_ifname(name)?;
    }
    let not_published = |side: HostSpec| {
        Error::NotPublished(match on {
            Some(name) => format!("{side} on {name}"),
            None => side.to_string(),
        })
    };
    // A range of ports is looked for among every mapping: looking each port up by key
    // would cost a round trip per port and map.
    if specs.iter().any(|spec| spec.ports.start != spec.ports.end) {
        return change(dry_run, |all| {
            let mut parts: Vec<Mapping> = Vec::new();
            let mut holders: Vec<Mapping> = Vec::new();
            for spec in specs {
                let (found, uncovered) = ports_of(all, spec, on);
                if let Some(port) = uncovered {
                    let side = HostSpec {
                        ports: spec::PortRange {
                            start: port,
                            end: port,
                        },
                        ..*spec
                    };
                    return Err(not_published(side));
                }
                for mapping in found {
                    let start = mapping.host_port.max(spec.ports.start);
                    let end = (*mapping.host_ports().end()).min(spec.ports.end);
                    parts.push(mapping.part(start, end));
                    holders.push(mapping.clone());
                }
            }
            let cut = ranges::cut(&holders, &parts);
            let mut rest = without(all, &cut.removed);
            rest.extend(cut.rest);
            Ok(rest)
        });
    }
    // Each host port is looked up by key in the maps it can be in; the mappings found
    // there (in a range map, the range holding the port), and the helper elements, are
    // all the removal reads.
    let mut keys: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut sides: Vec<(HostSpec, std::ops::Range<usize>)> = Vec::new();
    for spec in specs {
        let port = spec.ports.start;
        let start = keys.len();
        for set in ruleset::host_sets_on(on.is_some(), spec.host_addr) {
            let host_addr = spec.host_addr.filter(|addr| !addr.is_unspecified());
            keys.push((
                set,
                ruleset::host_key_in(set, on, spec.proto, host_addr, port),
            ));
        }
        sides.push((*spec, start..keys.len()));
    }
    let choose = |found: &[Option<Mapping>]| {
        let mut chosen: Vec<Mapping> = Vec::new();
        let mut seen: std::collections::HashSet<Mapping> = std::collections::HashSet::new();
        for (side, range) in &sides {
            let here: Vec<&Mapping> = found[range.clone()].iter().flatten().collect();
            if here.is_empty() {
                return Err(not_published(*side));
            }
            for mapping in here {
                // Of a range, only the port asked for goes.
                let part = mapping.part(side.ports.start, side.ports.start);
                let going = if mapping.is_range() {
                    part
                } else {
                    mapping.clone()
                };
                if seen.insert(going.clone()) {
                    chosen.push(going);
                }
            }
        }
        Ok(chosen)
    };
    let committed = transact(dry_run, &HashMap::new(), |kernel, counts, dry_run| {
        transaction::remove(kernel, counts, &keys, dry_run, choose)
    })?;
    Ok(committed.plan)
}

/// The mappings that publish ports of `spec` (in the maps its host side can be in, on
/// interface `on` or on none), and
/// the first of its ports that none publishes, if any.
fn ports_of<'a>(
    all: &'a [Mapping],
    spec: &HostSpec,
    on: Option<&str>,
) -> (Vec<&'a Mapping>, Option<u16>) {
    let sets = ruleset::host_sets_on(on.is_some(), spec.host_addr);
    let host_addr = spec.host_addr.filter(|addr| !addr.is_unspecified());
    let mut found: Vec<&Mapping> = all
        .iter()
        .filter(|m| {
            m.proto == spec.proto
                && m.host_addr == host_addr
                && m.on.as_deref() == on
                && sets.contains(&m.set())
                && m.host_port <= spec.ports.end
                && *m.host_ports().end() >= spec.ports.start
        })
        .collect();
    found.sort_by_key(|m| m.host_port);
    // Both families' mappings of a wildcard count: a port is published when either has it.
    let mut next = Some(spec.ports.start);
    for mapping in &found {
        match next {
            Some(port) if port > spec.ports.end => break,
            Some(port) if mapping.host_port > port => return (found, Some(port)),
            Some(port) => {
                let end = *mapping.host_ports().end();
                if end >= port {
                    next = end.checked_add(1);
                }
            }
            None => break,
        }
    }
    let uncovered = next.filter(|port| *port <= spec.ports.end);
    (found, uncovered)
}

/// Unpublishes every mapping made for namespace `name` (by the name it recorded) or whose
/// target is one of its current addresses.
pub fn unpublish_netns(name: &str, dry_run: bool) -> Result<Plan, Error> {
    let addrs: Option<Vec<IpAddr>> = match Namespace::open(name) {
        Ok(namespace) => Some(namespace.targets()?.iter().map(|t| t.addr).collect()),
        Err(NamespaceError::NotFound(_)) => None,
        Err(error) => return Err(error.into()),
    };
    change(dry_run, |all| {
        let chosen: Vec<Mapping> = all
            .iter()
            .filter(|m| {
                m.netns
                    .as_deref()
                    .is_some_and(|recorded| same_name(recorded, name))
                    || addrs
                        .as_ref()
                        .is_some_and(|addrs| addrs.contains(&m.to_addr))
            })
            .cloned()
            .collect();
        if chosen.is_empty() && addrs.is_none() {
            return Err(NamespaceError::NotFound(name.to_string()).into());
        }
        Ok(without(all, &chosen))
    })
}

/// Unpublishes every mapping whose namespace no longer exists, and removes the settings
/// records of network namespaces that are gone; with `dry_run`, only says what it would
/// unpublish.
pub fn prune(dry_run: bool) -> Result<(Vec<Mapping>, Plan), Error> {
    let mut pruned = Vec::new();
    let plan = change(dry_run, |all| {
        let stale = stale_flags(all);
        pruned = all
            .iter()
            .zip(&stale)
            .filter(|(_, stale)| **stale)
            .map(|(m, _)| m.clone())
            .collect();
        Ok(without(all, &pruned))
    })?;
    if !dry_run {
        remove_gone_records();
    }
    Ok((pruned, plan))
}

pub(super) fn remove_gone_records() {
    match state::remove_records_of_gone_namespaces(&crate::host::netns::inode_is_alive) {
        Ok(0) => {}
        Ok(removed) => log::info!("removed the records of {removed} namespaces that are gone"),
        Err(error) => log::warn!("cannot clean up {}: {error}", state::dir().display()),
    }
}
