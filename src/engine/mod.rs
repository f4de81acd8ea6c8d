//! The engine: the only layer that changes the kernel. Every public operation takes this
//! network namespace's writer lock, reads what it plans from at one ruleset generation,
//! commits one batch against that generation (`transaction`), then turns settings on or
//! puts them back in the order that keeps the host safe at every crash point (`finish`).

mod flows;
pub mod kernel;
mod resolve;
mod table;
mod transaction;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use kernel::{Kernel, Netlink};
pub use resolve::{PublishOptions, Target};
pub(crate) use resolve::{bridge_port_of, resolve};
use serde::Serialize;
use table::{Counter, Snapshot};
use transaction::Committed;

use crate::error::{Error, kernel, state};
use crate::host::firewalls;
use crate::host::netns::{Namespace, NamespaceError};
use crate::host::settings::{self, Settings, TargetNeeds};
use crate::host::sockets::HostSockets;
use crate::host::state::{self, WriterLock};
use crate::netlink::NetlinkError;
use crate::netlink::nftables::Change;
use crate::netlink::rtnetlink;
use crate::plan::Plan;
use crate::ruleset::metadata::{is_digest, same_name};
use crate::ruleset::{self, Element, Mapping};
use crate::spec::{self, HostSpec, Proto, PublishSpec, with_port};

/// A mapping as `ls` shows it: with whether its namespace is gone and which host socket
/// it hides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    #[serde(flatten)]
    pub mapping: Mapping,
    /// The namespace the mapping was made for no longer exists (or is another one now).
    pub stale: bool,
    /// A host socket on the same port that the mapping hides from its clients.
    pub shadows: Option<String>,
    /// Whether the host reaches it through its loopback: 127.0.0.1 for IPv4 wildcard and
    /// 127.0.0.1 publishes; never `[::1]`, which Linux cannot DNAT.
    pub loopback: bool,
    /// Packets through the mapping, both directions, since it was published.
    pub packets: u64,
    /// Bytes through the mapping, both directions, since it was published.
    pub bytes: u64,
}

pub(crate) fn host_label(mapping: &Mapping) -> String {
    let family = if mapping.is_ipv6() { " (IPv6)" } else { "" };
    match mapping.host_addr {
        Some(addr) => format!("{}/{}", with_port(addr, mapping.host_port), mapping.proto),
        None => format!("{}/{}{family}", mapping.host_port, mapping.proto),
    }
}

pub(crate) fn target_label(mapping: &Mapping) -> String {
    let to = with_port(mapping.to_addr, mapping.to_port);
    let mut label = format!("{to} via {}", mapping.via);
    if let Some(netns) = &mapping.netns {
        label.push_str(&format!(" (netns {netns})"));
    }
    label
}

/// This namespace's writer lock, with a note of which namespace it belongs to so that a
/// later clean-up can tell when the namespace is gone.
fn writer_lock() -> Result<WriterLock, Error> {
    let lock = WriterLock::take().map_err(state(state::dir()))?;
    if let Err(error) = state::note_namespace_inode() {
        log::debug!("cannot note this namespace's inode: {error}");
    }
    Ok(lock)
}

/// Publishes every port of `specs` to `target`, in one atomic batch, and returns the
/// mappings made. Re-publishing a mapping with the same host side and target succeeds and
/// refreshes what it records (namespace, options); a host port that leads elsewhere
/// already is a conflict.
///
/// ```no_run
/// use nsport::{PublishOptions, Target};
/// # fn main() -> Result<(), nsport::Error> {
/// let specs = ["8080:80".parse()?, "127.0.0.1:5353:53/udp".parse()?];
/// let made = nsport::publish(&Target::Netns("ns1".into()), &PublishOptions::default(), &specs)?;
/// assert_eq!(made[0].host_port, 8080);
/// # Ok(())
/// # }
/// ```
pub fn publish(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<Vec<Mapping>, Error> {
    let (resolved, mappings) = prepare_publish(target, options, specs)?;
    let lock = writer_lock()?;
    let mut kernel = Netlink;
    let committed = transaction::create(&mut kernel, &mappings, false)?;
    let ports: HashMap<IpAddr, Option<rtnetlink::Link>> = resolved
        .into_iter()
        .map(|r| (r.addr, r.bridge_port))
        .collect();
    finish_or_roll_back(&mut kernel, &lock, &committed, &ports)?;
    for warning in firewalls::dropping_forward_chains(&committed.chains) {
        log::warn!("{warning}");
    }
    Ok(mappings)
}

fn prepare_publish(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<(Vec<resolve::Resolved>, Vec<Mapping>), Error> {
    let resolved = resolve(target, options.via.as_deref())?;
    resolve::check_local(specs)?;
    let mappings = resolve::mappings_for(&resolved, specs, options.allow_direct)?;
    if !options.force {
        resolve::check_host_ports(&mappings)?;
    }
    Ok((resolved, mappings))
}

/// What `publish` would change, touching nothing: read at the current generation, so a
/// conflict is reported as the real command would report it, and re-publishing what is
/// there already previews as nothing to change.
pub fn publish_dry_run(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<Plan, Error> {
    let (_, mappings) = prepare_publish(target, options, specs)?;
    let committed = transaction::create(&mut Netlink, &mappings, true)?;
    Ok(with_notes(committed))
}

fn with_notes(committed: Committed) -> Plan {
    let mut plan = committed.plan;
    plan.notes.extend(settings::would_turn_on(&committed.added));
    plan
}

/// Turns on what the committed change needs, puts back what it no longer needs, and
/// forgets the flows whose path changed. When turning on fails (the record cannot be
/// saved, say), the mappings the change added are taken out again, so that the command
/// either did all it was asked or, as far as it can, nothing.
fn finish_or_roll_back(
    kernel: &mut impl Kernel,
    lock: &WriterLock,
    committed: &Committed,
    ports: &HashMap<IpAddr, Option<rtnetlink::Link>>,
) -> Result<(), Error> {
    let error = match finish(kernel, lock, committed, ports) {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    if committed.added.is_empty() || !committed.removed.is_empty() {
        return Err(Error::Unfinished(Box::new(error)));
    }
    let added = &committed.added;
    let undo = transaction::update(kernel, false, |current| {
        Ok(current
            .iter()
            .filter(|m| !added.contains(m))
            .cloned()
            .collect())
    });
    let put_back = undo.and_then(|undone| {
        let mut settings = Settings::load(lock, Vec::new())?;
        match &undone.still_needed {
            Some(needed) => settings.put_back_unneeded(needed),
            None => Ok(()),
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
    lock: &WriterLock,
    committed: &Committed,
    ports: &HashMap<IpAddr, Option<rtnetlink::Link>>,
) -> Result<(), Error> {
    let vias = committed.added.iter().map(|m| m.via.clone());
    let mut settings = Settings::load(lock, vias)?;
    if !committed.existed && !settings.originals.is_empty() {
        // What the record names was set for a table someone else deleted since.
        log::warn!(
            "table inet nsport was deleted by something else; putting back: {}",
            settings.would_put_back().join(", ")
        );
        settings.put_back_everything()?;
    }
    let needs = target_needs(&committed.added, ports)?;
    let exposing = committed.added.iter().any(Mapping::serves_loopback);
    settings.turn_on(&needs)?;
    if exposing {
        verify_guard(kernel, committed.genid, &mut settings)?;
    }
    if let Some(needed) = &committed.still_needed {
        settings.put_back_unneeded(needed)?;
    }
    flows::forget(&committed.removed, &committed.added);
    Ok(())
}

/// After route_localnet went on: the guard committed with the change must still be there.
/// When the ruleset is still at the generation the change made, nothing touched it;
/// otherwise the table is read again, and a missing or edited guard puts the setting back.
fn verify_guard(
    kernel: &mut impl Kernel,
    genid: u32,
    settings: &mut Settings<'_>,
) -> Result<(), Error> {
    if kernel.generation().map_err(kernel_error)? == genid.wrapping_add(1) {
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

fn kernel_error(error: NetlinkError) -> Error {
    kernel(error)
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

/// Runs a change that reads every mapping, under the writer lock, and finishes it.
fn change(
    dry_run: bool,
    decide: impl FnMut(&[Mapping]) -> Result<Vec<Mapping>, Error>,
) -> Result<Plan, Error> {
    let mut kernel = Netlink;
    if dry_run {
        return Ok(with_notes(transaction::update(&mut kernel, true, decide)?));
    }
    let lock = writer_lock()?;
    let committed = transaction::update(&mut kernel, false, decide)?;
    finish_or_roll_back(&mut kernel, &lock, &committed, &HashMap::new())?;
    Ok(committed.plan)
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
    // Each host port is looked up by key in the maps it can be in; the mappings found
    // there, and the helper elements, are all the removal reads.
    let mut keys: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut sides: Vec<(HostSpec, std::ops::Range<usize>)> = Vec::new();
    for spec in specs {
        for port in spec.ports.ports() {
            let start = keys.len();
            for set in ruleset::host_sets(spec.host_addr) {
                let host_addr = spec.host_addr.filter(|addr| !addr.is_unspecified());
                keys.push((set, ruleset::host_key(spec.proto, host_addr, port)));
            }
            let side = HostSpec {
                ports: spec::PortRange {
                    start: port,
                    end: port,
                },
                ..*spec
            };
            sides.push((side, start..keys.len()));
        }
    }
    let choose = |found: &[Option<Mapping>]| {
        let mut chosen: Vec<Mapping> = Vec::new();
        let mut seen: std::collections::HashSet<&Mapping> = std::collections::HashSet::new();
        for (side, range) in &sides {
            let here: Vec<&Mapping> = found[range.clone()].iter().flatten().collect();
            if here.is_empty() {
                return Err(Error::NotPublished(side.to_string()));
            }
            for mapping in here {
                if seen.insert(mapping) {
                    chosen.push(mapping.clone());
                }
            }
        }
        Ok(chosen)
    };
    let mut kernel = Netlink;
    if dry_run {
        let committed = transaction::remove(&mut kernel, &keys, true, choose)?;
        return Ok(with_notes(committed));
    }
    let lock = writer_lock()?;
    let committed = transaction::remove(&mut kernel, &keys, false, choose)?;
    finish_or_roll_back(&mut kernel, &lock, &committed, &HashMap::new())?;
    Ok(committed.plan)
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
/// records of network namespaces that are gone.
pub fn prune() -> Result<Vec<Mapping>, Error> {
    let mut pruned = Vec::new();
    change(false, |all| {
        let stale = stale_flags(all);
        pruned = all
            .iter()
            .zip(&stale)
            .filter(|(_, stale)| **stale)
            .map(|(m, _)| m.clone())
            .collect();
        Ok(without(all, &pruned))
    })?;
    remove_gone_records();
    Ok(pruned)
}

fn remove_gone_records() {
    match state::remove_records_of_gone_namespaces(&crate::host::netns::inode_is_alive) {
        Ok(0) => {}
        Ok(removed) => log::info!("removed the records of {removed} namespaces that are gone"),
        Err(error) => log::warn!("cannot clean up {}: {error}", state::dir().display()),
    }
}

/// Makes the table hold exactly `desired`, in one batch: the file format is what
/// `nsport ls --json` prints, so a listing saved earlier is applied back unchanged.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let saved = std::fs::read_to_string("/etc/nsport/mappings.json")?;
/// let desired = nsport::parse_mappings(&saved)?;
/// let plan = nsport::apply(&desired, false)?;
/// println!("{} added, {} removed", plan.add.len(), plan.delete.len());
/// # Ok(())
/// # }
/// ```
pub fn apply(desired: &[Mapping], dry_run: bool) -> Result<Plan, Error> {
    check_mappings(desired)?;
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for mapping in desired {
        if seen.insert(&mapping.via, ()).is_none()
            && rtnetlink::link_by_name(&mapping.via)
                .map_err(kernel)?
                .is_none()
        {
            return Err(Error::NoSuchIface(mapping.via.clone()));
        }
    }
    change(dry_run, |_| Ok(desired.to_vec()))
}

/// Reads mappings in the format of `nsport ls --json`; fields it does not need (counters,
/// status) are ignored.
pub fn parse_mappings(text: &str) -> Result<Vec<Mapping>, Error> {
    serde_json::from_str(text).map_err(|error| Error::File(error.to_string()))
}

/// Refuses a file that could not have come from nsport.
fn check_mappings(mappings: &[Mapping]) -> Result<(), Error> {
    let mut seen: HashMap<(&'static str, Vec<u8>), &Mapping> = HashMap::new();
    for mapping in mappings {
        resolve::check_ifname(&mapping.via)?;
        resolve::check_target(mapping.to_addr)?;
        if let Some(ifname) = &mapping.container_ifname {
            resolve::check_ifname(ifname)?;
        }
        if mapping.via.is_empty() {
            return Err(Error::File(format!(
                "{} has no \"via\" interface",
                host_label(mapping)
            )));
        }
        if mapping
            .host_addr
            .is_some_and(|addr| addr.is_ipv6() != mapping.is_ipv6())
        {
            return Err(Error::File(format!(
                "{} mixes IPv4 and IPv6",
                host_label(mapping)
            )));
        }
        if mapping.host_port == 0 || mapping.to_port == 0 {
            return Err(Error::File(format!("{} has port 0", host_label(mapping))));
        }
        if let Some(first) = seen.insert((mapping.set(), mapping.key()), mapping)
            && first != mapping
        {
            return Err(Error::Duplicate {
                spec: host_label(mapping),
                first: target_label(first),
                second: target_label(mapping),
            });
        }
    }
    Ok(())
}

/// Every mapping in `table inet nsport`, sorted by family, protocol, host address and port.
pub fn list() -> Result<Vec<Mapping>, Error> {
    Ok(table::read(&mut Netlink, true)?
        .mappings
        .into_iter()
        .map(|(mapping, _)| mapping)
        .collect())
}

/// Repairs what a read found broken, without planning any other change: route_localnet
/// left on for a table someone deleted is put back, and chains someone emptied or edited
/// get nsport's rules again. A read-only command does this before it answers, so that what
/// it reports is what protects the host.
fn repair_found(snapshot: &Snapshot) -> Result<(), Error> {
    if snapshot.exists && snapshot.damaged.is_empty() {
        return Ok(());
    }
    if !snapshot.exists && !state::dir().exists() {
        return Ok(());
    }
    let lock = writer_lock()?;
    let mut kernel = Netlink;
    if !snapshot.exists {
        let mut settings = Settings::load(&lock, Vec::new())?;
        if !settings.originals.is_empty() {
            log::warn!(
                "table inet nsport was deleted by something else; putting back: {}",
                settings.would_put_back().join(", ")
            );
            settings.put_back_everything()?;
        }
        return Ok(());
    }
    let declarations = table::Declarations::new();
    let changes = declarations.repairs(snapshot);
    log::warn!(
        "table inet nsport was changed by something else (chain {}); restoring what nsport wrote",
        snapshot.damaged.join(", chain ")
    );
    match kernel.commit(&changes, Some(snapshot.genid)) {
        // Someone changed the ruleset since the read: the next command repairs from a
        // fresh read.
        Ok(()) | Err(NetlinkError::Stale) => Ok(()),
        Err(error) => Err(kernel_error(error)),
    }
}

/// Every mapping with its packet and byte counters, repairing what protects them first.
fn list_counted() -> Result<Vec<(Mapping, Counter)>, Error> {
    let snapshot = table::read(&mut Netlink, true)?;
    repair_found(&snapshot)?;
    Ok(snapshot.mappings)
}

/// Every mapping, with whether its namespace is gone and which host socket it hides.
pub fn list_status() -> Result<Vec<Listing>, Error> {
    let mappings = list_counted()?;
    let tcp = mappings.iter().any(|(m, _)| m.proto == Proto::Tcp);
    let udp = mappings.iter().any(|(m, _)| m.proto == Proto::Udp);
    let sockets = HostSockets::read(tcp, udp)?;
    let plain: Vec<Mapping> = mappings.iter().map(|(m, _)| m.clone()).collect();
    let stale = stale_flags(&plain);
    Ok(mappings
        .into_iter()
        .zip(stale)
        .map(|((mapping, (packets, bytes)), stale)| Listing {
            shadows: sockets.shadowed_by(&mapping),
            stale,
            loopback: mapping.serves_loopback(),
            packets,
            bytes,
            mapping,
        })
        .collect())
}

/// For each mapping, whether the namespace it was made for is gone (or is another one of
/// the same name now).
pub(crate) fn stale_flags(mappings: &[Mapping]) -> Vec<bool> {
    let mut namespaces: HashMap<&str, Option<u64>> = HashMap::new();
    mappings
        .iter()
        .map(|mapping| match (&mapping.netns, mapping.netns_inode) {
            // A name too long to record: its inode is what is left to go by.
            (Some(name), Some(inode)) if is_digest(name) => {
                !crate::host::netns::inode_is_alive(inode)
            }
            (Some(name), _) if is_digest(name) => false,
            (Some(name), _) => {
                let now = *namespaces
                    .entry(name)
                    .or_insert_with(|| Namespace::open(name).ok().map(|ns| ns.inode));
                now.is_none() || mapping.netns_inode.is_some_and(|inode| now != Some(inode))
            }
            (None, _) => false,
        })
        .collect()
}

/// Which chains of the table are not what nsport wrote (none when intact), and whether
/// the table exists: what `doctor` reports.
pub fn damaged_chains() -> Result<Option<Vec<&'static str>>, Error> {
    let snapshot = table::read(&mut Netlink, false)?;
    Ok(snapshot.exists.then_some(snapshot.damaged))
}

/// The whole table as an `nft -f` script that recreates it, for persisting through
/// nftables.service.
pub fn export_nft() -> Result<String, Error> {
    let snapshot = table::read(&mut Netlink, true)?;
    let mut out = ruleset::table_script();
    for (mapping, _) in &snapshot.mappings {
        out.push_str(&Element::mapping(mapping).nft_add());
        out.push('\n');
    }
    let mut helpers: Vec<_> = snapshot.helpers.iter().collect();
    helpers.sort_by(|a, b| a.0.cmp(b.0));
    for ((set, key), users) in helpers {
        if let Some(helper) = Element::helper(set, key) {
            let helper = match users {
                Some(users) => helper.used_by(*users),
                None => helper,
            };
            out.push_str(&helper.nft_add());
            out.push('\n');
        }
    }
    Ok(out)
}

/// Deletes `table inet nsport` and puts back every setting nsport changed; succeeds when
/// there is no table. The record is read before anything is deleted, and the settings go
/// back before the guard does: an unreadable record falls back to route_localnet 0 on
/// every interface the table names.
///
/// ```no_run
/// # fn main() -> Result<(), nsport::Error> {
/// nsport::flush(false)?;
/// assert!(nsport::list()?.is_empty());
/// # Ok(())
/// # }
/// ```
pub fn flush(dry_run: bool) -> Result<Plan, Error> {
    let lock = writer_lock()?;
    let mut kernel = Netlink;
    let mut snapshot = table::read(&mut kernel, true)?;
    let mut ifaces = table::table_interfaces(&snapshot);
    ifaces.extend(snapshot.mappings.iter().map(|(m, _)| m.via.clone()));
    let mut settings = Settings::load(&lock, ifaces)?;
    let plan = Plan {
        delete_table: snapshot.exists,
        notes: settings.would_put_back(),
        ..Plan::default()
    };
    if dry_run {
        return Ok(plan);
    }
    settings.put_back_everything()?;
    let all: Vec<Mapping> = plan_mappings(&snapshot);
    let mut tries = 0;
    while snapshot.exists {
        match kernel.commit(&[Change::DelTable], Some(snapshot.genid)) {
            Ok(()) => break,
            Err(error) if error.errno() == Some(libc::ENOENT) => break,
            Err(NetlinkError::Stale) if tries + 1 < transaction::TRIES => {
                tries += 1;
                snapshot = table::read(&mut kernel, false)?;
            }
            Err(NetlinkError::Stale) => return Err(Error::Busy { tries: tries + 1 }),
            Err(error) => return Err(kernel_error(error)),
        }
    }
    flows::forget(&all, &[]);
    remove_gone_records();
    if settings.originals.is_empty()
        && let Err(error) = lock.remove_files()
    {
        log::warn!("cannot remove the settings record: {error}");
    }
    Ok(plan)
}

fn plan_mappings(snapshot: &Snapshot) -> Vec<Mapping> {
    snapshot.mappings.iter().map(|(m, _)| m.clone()).collect()
}
