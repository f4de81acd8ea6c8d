//! Port ranges published as one interval element: which mappings clash with which, how
//! `rm` of some ports of a range cuts it, and how a publish of single ports asks the
//! kernel itself whether a range holds one of them.
//!
//! The kernel refuses an interval that starts or ends inside another of the same map
//! (EEXIST, whether it lies inside, across an end or is the same interval with other data),
//! but takes one that encloses another whole: a publish of a range reads its own range map
//! and names such a clash itself. It answers a lookup of one key (GETSETELEM) with the
//! interval that holds it. A single port and a
//! range live in different maps (a hash and an interval map), so the kernel cannot see a
//! clash between them by itself: a publish of single ports looks each up in the range map
//! of its kind, at the generation its batch is committed against, and falls back to the
//! full read that names the clash when a range holds one. (Asking in the batch itself, by
//! creating the port as an interval of one and deleting it again, works too, but a batch
//! that deletes waits for an RCU grace period: three times the cost of a publish.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use super::kernel::Kernel;
use super::table::mapping_of;
use crate::error::Error;
use crate::ruleset::Mapping;
use crate::spec::Proto;

/// The kind and first port of a mapping: mappings of one kind clash when their ports do.
/// A mapping's kind (family, protocol, host address, interface) and first port.
type Start = (bool, Proto, Option<IpAddr>, Option<String>, u16);

fn start_of(mapping: &Mapping) -> Start {
    (
        mapping.is_ipv6(),
        mapping.proto,
        mapping.host_addr,
        mapping.on.clone(),
        mapping.host_port,
    )
}

/// Mappings by kind and first port, each with its last port, for finding the one that
/// holds a port of a new mapping: the mappings indexed never overlap, so only the one
/// starting last before it and the first starting inside it need checking.
#[derive(Default)]
pub struct Holders {
    by_start: BTreeMap<Start, (u16, usize)>,
}

impl Holders {
    pub fn insert(&mut self, mapping: &Mapping, index: usize) {
        self.by_start
            .insert(start_of(mapping), (*mapping.host_ports().end(), index));
    }

    /// Forgets `mapping`, which `insert` indexed.
    pub fn remove(&mut self, mapping: &Mapping) {
        self.by_start.remove(&start_of(mapping));
    }

    /// The index of the mapping that publishes the first port of `mapping` held, if any:
    /// one starting before it and reaching into it, or else the first starting inside it.
    pub fn clash(&self, mapping: &Mapping) -> Option<usize> {
        let (v6, proto, addr, on, start) = start_of(mapping);
        let end = *mapping.host_ports().end();
        let kind = |port: u16| (v6, proto, addr, on.clone(), port);
        let before = self.by_start.range(kind(0)..kind(start)).next_back();
        if let Some((_, (last, index))) = before
            && *last >= start
        {
            return Some(*index);
        }
        let (_, (_, index)) = self.by_start.range(kind(start)..=kind(end)).next()?;
        Some(*index)
    }
}

/// Whether `part` is a piece of `whole`: the same host side but for its ports, which lie
/// inside `whole`'s, and the same target, reached with the same port offset. What `rm` of
/// some ports of a range leaves are such pieces; publishing the whole range again puts the
/// pieces back together rather than clashing with them.
pub fn is_piece_of(part: &Mapping, whole: &Mapping) -> bool {
    let offset = |m: &Mapping| i32::from(m.to_port) - i32::from(m.host_port);
    let kind = |m: &Mapping| (m.is_ipv6(), m.proto, m.host_addr, m.on.clone());
    kind(part) == kind(whole)
        && whole.host_ports().contains(&part.host_port)
        && whole.host_ports().contains(part.host_ports().end())
        && offset(part) == offset(whole)
        && part.to_addr == whole.to_addr
        && part.via == whole.via
        && part.netns == whole.netns
        && part.container == whole.container
        && part.network == whole.network
}

/// What `rm` of some ports does to the mappings that hold them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Whole mappings that go: single ports, and ranges cut apart.
    pub removed: Vec<Mapping>,
    /// The parts of cut ranges that stay published, each a new element: a range still, or
    /// a single port in the exact map when one port is left.
    pub rest: Vec<Mapping>,
}

/// Cuts `parts` (mappings, or single ports or sub-ranges of ranges, to unpublish) out of
/// `holders` (the mappings that hold them, which do not overlap). Hashed and sorted: a cut
/// of every port of 10,000 single mappings costs what 10,000 lookups do.
pub fn cut(holders: &[Mapping], parts: &[Mapping]) -> Cut {
    let mut index = Holders::default();
    for (at, holder) in holders.iter().enumerate() {
        index.insert(holder, at);
    }
    let mut going: HashMap<usize, Vec<&Mapping>> = HashMap::new();
    for part in parts {
        if let Some(at) = index.clash(part)
            && holders[at].to_addr == part.to_addr
        {
            going.entry(at).or_default().push(part);
        }
    }
    let mut out = Cut::default();
    for (at, holder) in holders.iter().enumerate() {
        let Some(going) = going.get_mut(&at) else {
            continue;
        };
        out.removed.push(holder.clone());
        if !holder.is_range() {
            continue;
        }
        going.sort_by_key(|part| part.host_port);
        let mut next = Some(holder.host_port);
        let last = *holder.host_ports().end();
        for part in going.iter() {
            if let Some(start) = next
                && start < part.host_port
            {
                out.rest.push(holder.part(start, part.host_port - 1));
            }
            let after = part.host_ports().end().checked_add(1);
            next = next.max(after).filter(|_| after.is_some());
        }
        if let Some(start) = next
            && start <= last
        {
            out.rest.push(holder.part(start, last));
        }
    }
    out
}

/// The range map and key in which each single port of `mappings` would be held by a range
/// of its kind.
pub fn range_keys(mappings: &[Mapping]) -> Vec<(&'static str, Vec<u8>)> {
    mappings
        .iter()
        // Mappings on an interface are in exact maps only: no range holds their ports.
        .filter(|mapping| !mapping.is_range() && mapping.on.is_none())
        .map(|mapping| {
            let as_range = Mapping {
                host_port_end: Some(mapping.host_port),
                ..mapping.clone()
            };
            (as_range.set(), as_range.key())
        })
        .collect()
}

/// Whether the kernel finds an element holding any of `keys` (each a map and a key).
pub fn any_held(kernel: &mut impl Kernel, keys: &[(&'static str, Vec<u8>)]) -> Result<bool, Error> {
    for (set, key) in keys {
        if kernel
            .element(set, key)
            .map_err(crate::error::kernel)?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How many single ports a publish looks up in the range maps one by one; beyond it,
/// reading the range maps (few elements, ranges being few) costs less than as many
/// lookups.
pub const MAX_LOOKUPS: usize = 64;

/// `mappings` with every run of consecutive identity ports that differ in nothing else made
/// one range: what a table of an older layout, which had one element per port, becomes
/// when it is rebuilt. The CNI plugin's mappings stay as they are: the plugin checks them
/// one port at a time.
pub fn coalesce(mappings: &[Mapping]) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    let mut runs: HashMap<Mapping, Vec<(u16, u16)>> = HashMap::new();
    for mapping in mappings {
        let identity = mapping.to_port == mapping.host_port;
        if !identity || mapping.container.is_some() || mapping.on.is_some() {
            out.push(mapping.clone());
            continue;
        }
        let shape = Mapping {
            host_port: 0,
            host_port_end: None,
            to_port: 0,
            ..mapping.clone()
        };
        let ports = (mapping.host_port, *mapping.host_ports().end());
        runs.entry(shape).or_default().push(ports);
    }
    for (shape, mut ports) in runs {
        ports.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (start, end) in ports {
            match merged.last_mut() {
                Some(last) if u32::from(last.1) + 1 >= u32::from(start) => {
                    last.1 = last.1.max(end);
                }
                _ => merged.push((start, end)),
            }
        }
        for (start, end) in merged {
            out.push(
                Mapping {
                    host_port: start,
                    to_port: start,
                    ..shape.clone()
                }
                .part(start, end),
            );
        }
    }
    out
}

/// A clash between two mappings, named as a publish names it: the holder's own host ports
/// too when they are not the ones asked for (a range holding a single port, or the
/// reverse).
pub fn conflict(wanted: &Mapping, existing: &Mapping) -> Error {
    let mut holder = existing.target_label();
    if existing.host_label() != wanted.host_label() {
        holder = format!("{holder} by host port {}", existing.host_label());
    }
    Error::Conflict {
        host: wanted.host_label(),
        existing: holder,
    }
}

/// Refuses mappings that are new and publish a host port another mapping of `desired`
/// publishes too: a single port and a range holding it live in different maps, so neither
/// the kernel nor a comparison of keys sees the clash.
///
/// `added` are those of `desired` that are new. Any clash is two mappings of `desired`
/// sharing a port, so a sweep that finds no such pair settles it cheaply; only when it
/// finds one are the new ones checked one by one, to name the clash.
pub fn check_overlaps(desired: &[Mapping], added: &[Mapping]) -> Result<(), Error> {
    if added.is_empty() || !any_share_a_port(desired) {
        return Ok(());
    }
    let new: HashSet<&Mapping> = added.iter().collect();
    let mut holders = Holders::default();
    let kept: Vec<&Mapping> = desired.iter().filter(|m| !new.contains(m)).collect();
    for (index, mapping) in kept.iter().enumerate() {
        holders.insert(mapping, index);
    }
    let mut all = kept;
    for mapping in added {
        if let Some(index) = holders.clash(mapping) {
            return Err(conflict(mapping, all[index]));
        }
        holders.insert(mapping, all.len());
        all.push(mapping);
    }
    Ok(())
}

/// Whether two of `mappings` of one kind (as `start_of` tells it) share a host port. Sorted
/// by first port, two mappings overlap exactly when some mapping starts at or before the
/// last port of the one sorted before it.
fn any_share_a_port(mappings: &[Mapping]) -> bool {
    type Kind<'a> = (bool, Proto, Option<IpAddr>, Option<&'a str>);
    fn kind(m: &Mapping) -> Kind<'_> {
        (m.is_ipv6(), m.proto, m.host_addr, m.on.as_deref())
    }
    let mut spans: HashMap<Kind, Vec<(u16, u16)>> = HashMap::new();
    // Mappings come in runs of one kind: the run's list is found once.
    let mut run: Option<(Kind, Vec<(u16, u16)>)> = None;
    for mapping in mappings {
        let this = kind(mapping);
        if run.as_ref().is_none_or(|(k, _)| *k != this) {
            if let Some((k, list)) = run.take() {
                spans.entry(k).or_default().extend(list);
            }
            run = Some((this, Vec::new()));
        }
        if let Some((_, list)) = &mut run {
            list.push((mapping.host_port, *mapping.host_ports().end()));
        }
    }
    if let Some((k, list)) = run {
        spans.entry(k).or_default().extend(list);
    }
    spans.into_values().any(|mut list| {
        list.sort_unstable();
        list.windows(2).any(|pair| pair[1].0 <= pair[0].1)
    })
}

/// Whether a mapping of the maps `sets` holds a port of one of `mappings` (other than the
/// very same host side, which the exclusive creation reports).
pub fn clashes(
    kernel: &mut impl Kernel,
    sets: &[&'static str],
    mappings: &[Mapping],
) -> Result<bool, Error> {
    let mut holders = Holders::default();
    let mut held = Vec::new();
    for &set in sets {
        for element in kernel.elements(set).map_err(crate::error::kernel)? {
            if let Some(mapping) = mapping_of(set, &element) {
                holders.insert(&mapping, held.len());
                held.push(mapping);
            }
        }
    }
    Ok(mappings.iter().any(|m| holders.clash(m).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn mapping(start: u16, end: Option<u16>) -> Mapping {
        Mapping {
            host_port: start,
            host_port_end: end,
            to_addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            to_port: start,
            ..Mapping::example()
        }
    }

    #[test]
    fn holders_find_a_clash_inside_across_and_around() {
        let mut holders = Holders::default();
        holders.insert(&mapping(20000, Some(29999)), 0);
        holders.insert(&mapping(8080, None), 1);
        assert_eq!(holders.clash(&mapping(20005, None)), Some(0));
        assert_eq!(holders.clash(&mapping(29999, None)), Some(0));
        assert_eq!(holders.clash(&mapping(19000, Some(20000))), Some(0));
        assert_eq!(holders.clash(&mapping(8000, Some(8100))), Some(1));
        assert_eq!(holders.clash(&mapping(30000, None)), None);
        assert_eq!(holders.clash(&mapping(8081, Some(19999))), None);
        let udp = Mapping {
            proto: Proto::Udp,
            ..mapping(20005, None)
        };
        assert_eq!(holders.clash(&udp), None);
    }

    #[test]
    fn older_tables_per_port_elements_coalesce_into_ranges() {
        let mut ports: Vec<Mapping> = (9000..=9002).map(|p| mapping(p, None)).collect();
        ports.push(mapping(9004, None));
        let shifted = Mapping {
            to_port: 80,
            ..mapping(8080, None)
        };
        ports.push(shifted.clone());
        let cni = Mapping {
            container: Some("c".into()),
            ..mapping(7000, None)
        };
        ports.extend([
            cni.clone(),
            Mapping {
                host_port: 7001,
                to_port: 7001,
                ..cni.clone()
            },
        ]);
        let mut out = coalesce(&ports);
        out.sort_by_key(|m| m.host_port);
        assert_eq!(
            out,
            [
                cni.clone(),
                Mapping {
                    host_port: 7001,
                    to_port: 7001,
                    ..cni
                },
                shifted,
                mapping(9000, Some(9002)),
                mapping(9004, None),
            ]
        );
    }

    #[test]
    fn cutting_the_middle_leaves_both_sides() {
        let range = mapping(20000, Some(20010));
        let cut = cut(std::slice::from_ref(&range), &[mapping(20005, None)]);
        assert_eq!(cut.removed, [range]);
        assert_eq!(
            cut.rest,
            [mapping(20000, Some(20004)), mapping(20006, Some(20010))]
        );
    }

    #[test]
    fn cutting_at_the_ends_leaves_single_ports_in_the_exact_map() {
        let range = mapping(20000, Some(20002));
        let cut = cut(
            std::slice::from_ref(&range),
            &[mapping(20000, None), mapping(20002, None)],
        );
        assert_eq!(cut.rest, [mapping(20001, None)]);
        assert_eq!(cut.rest[0].set(), "any4");
        let all = super::cut(std::slice::from_ref(&range), &[mapping(20000, Some(20002))]);
        assert_eq!((all.removed.len(), all.rest.len()), (1, 0));
        let top = mapping(65534, Some(65535));
        let cut = super::cut(std::slice::from_ref(&top), &[mapping(65535, None)]);
        assert_eq!(cut.rest, [mapping(65534, None)]);
    }
}
