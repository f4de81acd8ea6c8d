//! `apply` and `export`: making the table hold exactly what a mappings file asks for, and
//! writing the file that asks for what the table holds.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::resolve::{self, Target, resolve};
use super::{list, overlap, transact, transaction};
use crate::error::{Error, kernel};
use crate::host::netns::NamespaceError;
use crate::model::{EntryTarget, MappingsFile, SourcePrefix};
use crate::netlink::rtnetlink;
use crate::plan::Plan;
use crate::ruleset::Mapping;
use crate::ruleset::metadata::{is_digest, same_name};
use crate::spec::PublishSpec;

/// Makes nsport's own mappings exactly those `file` asks for, in one batch. Each entry is
/// resolved as `nsport add` resolves it, now: a namespace's addresses, the interface
/// toward it and its bridge port are read when `apply` runs, so a namespace that was
/// recreated (or got another address) is followed, and a mapping whose namespace was
/// recreated is repaired (its record refreshed, hairpin mode set on the new bridge port).
/// A namespace that does not exist is an error naming it, unless `skip_missing`, which
/// leaves its entries out with a warning. Mappings that match the file are left alone
/// (and their connections and counters with them); CNI mappings are never touched.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let saved = std::fs::read_to_string("/etc/nsport/mappings.json")?;
/// let file = nsport::parse_mappings(&saved)?;
/// let plan = nsport::apply(&file, false, false)?;
/// println!("{} added, {} removed", plan.add.len(), plan.delete.len());
/// # Ok(())
/// # }
/// ```
pub fn apply(file: &MappingsFile, skip_missing: bool, dry_run: bool) -> Result<Plan, Error> {
    let (desired, forced, ports) = resolve_file(file, skip_missing)?;
    let desired = distinct(desired)?;
    let decide = |current: &[Mapping]| decide(current, &desired, &forced);
    let committed = transact(dry_run, &ports, |kernel, counts, dry_run| {
        transaction::update(kernel, counts, dry_run, decide)
    })?;
    if !dry_run && !committed.added.is_empty() {
        for warning in &committed.warnings {
            log::warn!("{warning}");
        }
    }
    Ok(committed.plan)
}

type Resolved = (
    Vec<Mapping>,
    HashSet<Mapping>,
    HashMap<IpAddr, Option<rtnetlink::Link>>,
);

/// Every entry resolved to mappings, through the same steps as `add`; entries with the
/// same target and options are resolved together (one namespace lookup).
fn resolve_file(file: &MappingsFile, skip_missing: bool) -> Result<Resolved, Error> {
    type Group = (
        EntryTarget,
        Option<String>,
        bool,
        bool,
        Option<String>,
        Vec<SourcePrefix>,
    );
    // Groups in the order of their first entry, each with its specs once. A file usually
    // has long runs of entries of one group (an export writes them so), so the group of
    // the entry before is tried first, without hashing the group.
    let mut groups: Vec<(Group, Vec<PublishSpec>, HashSet<PublishSpec>)> = Vec::new();
    let mut group_index: HashMap<Group, usize> = HashMap::new();
    for (index, entry) in file.mappings.iter().enumerate() {
        let at = |why: String| Error::File(format!("mapping {}: {why}", index + 1));
        let target = entry.target().map_err(at)?;
        let spec = entry
            .spec()
            .map_err(|error| at(format!("{:?}: {error}", entry.publish)))?;
        let allow_from =
            crate::model::parse_list(&entry.allow_from).map_err(|error| at(error.to_string()))?;
        if let Some(on) = &entry.on {
            resolve::check_on(on, std::slice::from_ref(&spec))
                .map_err(|error| at(error.to_string()))?;
        }
        // The entry's group is compared with the last one before it is copied.
        let in_last = groups
            .last()
            .is_some_and(|((t, via, direct, force, on, list), _, _)| {
                *t == target
                    && *via == entry.via
                    && *direct == entry.allow_direct
                    && *force == entry.force
                    && *on == entry.on
                    && *list == allow_from
            });
        let slot = match in_last {
            true => groups.len() - 1,
            false => {
                let group = (
                    target,
                    entry.via.clone(),
                    entry.allow_direct,
                    entry.force,
                    entry.on.clone(),
                    allow_from,
                );
                *group_index.entry(group.clone()).or_insert_with(|| {
                    groups.push((group, Vec::new(), HashSet::new()));
                    groups.len() - 1
                })
            }
        };
        let (_, specs, seen) = &mut groups[slot];
        if seen.insert(spec) {
            specs.push(spec);
        }
    }
    let mut desired = Vec::new();
    let mut forced = HashSet::new();
    let mut ports = HashMap::new();
    for (group, specs, _) in &groups {
        let (target, via, allow_direct, force, on, allow_from) = group;
        let target = match target {
            EntryTarget::Netns(name) => Target::Netns(name.clone()),
            EntryTarget::Addr(addr) => Target::Addr(*addr),
        };
        let resolved = match resolve(&target, via.as_deref()) {
            Ok(resolved) => resolved,
            Err(error @ (Error::Namespace(NamespaceError::NotFound(_)) | Error::NoAddress(_)))
                if skip_missing =>
            {
                log::warn!(
                    "skipped {} of the file: {error}",
                    specs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                continue;
            }
            Err(error) => return Err(error),
        };
        if on.is_none() {
            resolve::check_local(specs)?;
        }
        let mut mappings = resolve::mappings_for(&resolved, specs, *allow_direct, on.as_deref())?;
        for mapping in &mut mappings {
            mapping.allow_from = allow_from.clone();
        }
        for r in resolved {
            ports.insert(r.addr, r.bridge_port);
        }
        if *force {
            forced.extend(mappings.iter().map(Mapping::as_recorded));
        }
        // One group (the usual file) hands its mappings over without a copy.
        if desired.is_empty() {
            desired = mappings;
        } else {
            desired.extend(mappings);
        }
    }
    Ok((desired, forced, ports))
}

/// The table's mappings after `apply`: the CNI plugin's as they are, nsport's own those of
/// the file. A host port the file publishes anew must not be held by a host socket
/// (unless the entry says `force`) nor by a CNI mapping.
fn decide(
    current: &[Mapping],
    desired: &[Mapping],
    forced: &HashSet<Mapping>,
) -> Result<Vec<Mapping>, Error> {
    let cni: Vec<&Mapping> = current.iter().filter(|m| m.container.is_some()).collect();
    let cni_keys: HashMap<(&'static str, Vec<u8>), &Mapping> =
        cni.iter().map(|m| ((m.set(), m.key()), *m)).collect();
    let present: HashSet<(&'static str, Vec<u8>)> =
        current.iter().map(|m| (m.set(), m.key())).collect();
    let is_forced = |m: &Mapping| !forced.is_empty() && forced.contains(&m.as_recorded());
    let mut new = Vec::new();
    for mapping in desired {
        let host_side = (mapping.set(), mapping.key());
        if let Some(holder) = cni_keys.get(&host_side) {
            return Err(Error::Conflict {
                host: mapping.host_label(),
                existing: holder.target_label(),
            });
        }
        if !present.contains(&host_side) && !is_forced(mapping) {
            new.push(mapping);
        }
    }
    check_overlaps(&cni, desired, forced)?;
    resolve::check_host_ports(new.iter().copied())?;
    Ok(cni
        .into_iter()
        .cloned()
        .chain(desired.iter().cloned())
        .collect())
}

/// Refuses mappings of the file whose host sides overlap one another, or a CNI mapping's
/// (the wildcard and a specific address on one port, as Docker refuses them), naming both,
/// unless the file marks one of them `force` (for a CNI mapping: the file's one).
fn check_overlaps(
    cni: &[&Mapping],
    desired: &[Mapping],
    forced: &HashSet<Mapping>,
) -> Result<(), Error> {
    let is_forced = |m: &Mapping| forced.contains(&m.as_recorded());
    let mut by_port = overlap::ByPort::new(cni.iter().copied());
    for mapping in desired {
        let holder = by_port
            .overlapping(mapping)
            .find(|other| !is_forced(mapping) && (other.container.is_some() || !is_forced(other)));
        if let Some(holder) = holder {
            return Err(overlap::refused(mapping, holder));
        }
        by_port.insert(mapping);
    }
    Ok(())
}

/// Reads a mappings file: version 1 (what `export` writes) or the array `ls --json`
/// prints.
pub fn parse_mappings(text: &str) -> Result<MappingsFile, Error> {
    MappingsFile::parse(text).map_err(Error::File)
}

impl MappingsFile {
    /// What the table holds now, as a file for `apply`: intent only (see
    /// `MappingsFile::from_mappings`).
    pub fn export() -> Result<MappingsFile, Error> {
        let mut mappings = list()?;
        // A namespace whose name was too long to record is written by its name again,
        // found by the inode it recorded: written by its address instead, it would come
        // back as plain forwarding, without the namespace's protection.
        let names = crate::host::netns::names_by_inode();
        for mapping in &mut mappings {
            if let (Some(recorded), Some(inode)) = (&mapping.netns, mapping.netns_inode)
                && is_digest(recorded)
                && let Some(name) = names.get(&inode).filter(|name| same_name(recorded, name))
            {
                mapping.netns = Some(name.clone());
            }
        }
        let mut vias: HashMap<IpAddr, Option<String>> = HashMap::new();
        for mapping in &mappings {
            if vias.contains_key(&mapping.to_addr) {
                continue;
            }
            let via = match rtnetlink::route_output_interface(mapping.to_addr).map_err(kernel)? {
                Some(index) => rtnetlink::link_by_index(index)
                    .map_err(kernel)?
                    .map(|link| link.name),
                None => None,
            };
            vias.insert(mapping.to_addr, via);
        }
        Ok(MappingsFile::from_mappings(&mappings, |addr| {
            vias.get(&addr).cloned().flatten()
        }))
    }
}

/// The mappings, each once (the same mapping asked for twice, by entries that differ only
/// in `force`, is one); refuses what two entries ask for in contradiction: one host port to
/// two targets. Equal mappings have equal host sides, so one map of host sides finds both.
fn distinct(mappings: Vec<Mapping>) -> Result<Vec<Mapping>, Error> {
    let mut keep = Vec::with_capacity(mappings.len());
    {
        let mut seen: HashMap<(&'static str, Vec<u8>), &Mapping> =
            HashMap::with_capacity(mappings.len());
        for mapping in &mappings {
            match seen.entry((mapping.set(), mapping.key())) {
                Entry::Vacant(vacant) => {
                    vacant.insert(mapping);
                    keep.push(true);
                }
                Entry::Occupied(first) if *first.get() == mapping => keep.push(false),
                Entry::Occupied(first) => {
                    return Err(Error::Duplicate {
                        spec: mapping.host_label(),
                        first: first.get().target_label(),
                        second: mapping.target_label(),
                    });
                }
            }
        }
    }
    let mut keep = keep.into_iter();
    let mut mappings = mappings;
    mappings.retain(|_| keep.next().unwrap_or(true));
    Ok(mappings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host_addr: Option<&str>, container: Option<&str>) -> Mapping {
        Mapping {
            host_addr: host_addr.map(|a| a.parse().unwrap()),
            host_port: 8080,
            to_addr: "172.18.0.2".parse().unwrap(),
            to_port: 80,
            netns: Some("ns1".into()),
            container: container.map(String::from),
            ..Mapping::example()
        }
    }

    #[test]
    fn repeats_are_one_and_a_host_port_to_two_targets_is_refused_naming_both() {
        let port = |host_port: u16, to: &str| Mapping {
            host_port,
            to_addr: to.parse().unwrap(),
            ..Mapping::example()
        };
        let (a, b, c) = (
            port(1, "10.0.0.1"),
            port(2, "10.0.0.1"),
            port(3, "10.0.0.1"),
        );
        let kept = distinct(vec![a.clone(), b.clone(), a.clone(), c.clone(), b.clone()]).unwrap();
        assert_eq!(kept, [a.clone(), b.clone(), c]);
        let other = port(2, "10.0.0.9");
        let error = distinct(vec![a, b, other]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("2/tcp"), "{text}");
        assert!(
            text.contains("10.0.0.1:80") && text.contains("10.0.0.9:80"),
            "{text}"
        );
    }

    #[test]
    fn a_file_overlapping_itself_or_a_container_needs_force_on_its_own_entry() {
        let any = mapping(None, None);
        let lo = mapping(Some("127.0.0.1"), None);
        let none = HashSet::new();
        // Within the file: refused naming both, unless either entry is forced.
        let error = check_overlaps(&[], &[any.clone(), lo.clone()], &none).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("127.0.0.1:8080/tcp") && text.contains("host port 8080/tcp"));
        for forced in [&any, &lo] {
            let forced = HashSet::from([forced.as_recorded()]);
            check_overlaps(&[], &[any.clone(), lo.clone()], &forced).unwrap();
        }
        // Against a CNI mapping: only the file's own entry can say force.
        let container = mapping(None, Some("c1"));
        let error = check_overlaps(&[&container], std::slice::from_ref(&lo), &none).unwrap_err();
        assert!(error.to_string().contains("container c1"), "{error}");
        let forced = HashSet::from([lo.as_recorded()]);
        check_overlaps(&[&container], std::slice::from_ref(&lo), &forced).unwrap();
    }
}
