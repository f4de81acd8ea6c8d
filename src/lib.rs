//! nsport publishes ports of Linux network namespaces on the host, the way `docker run -p`
//! does, by programming one nftables table (`table inet nsport`) directly over netlink.
//!
//! A published port is an element of a map, so the rules never grow: a packet costs one
//! hash lookup however many ports are published. Each call sends one atomic batch: all of
//! it applies or none of it does.
//!
//! ```no_run
//! use nsport::{Target, publish, list};
//!
//! # fn main() -> Result<(), nsport::Error> {
//! // Publish port 3000 of namespace `ns1` on every address of the host.
//! let target = Target::Netns("ns1".into());
//! publish(&target, None, &["3000:3000".parse().unwrap()])?;
//! for mapping in list()? {
//!     println!("{}:{} -> {}:{}", mapping.proto, mapping.host_port, mapping.to_addr, mapping.to_port);
//! }
//! # Ok(())
//! # }
//! ```

pub mod netlink;
pub mod netns;
pub mod ruleset;
pub mod spec;
pub mod sysctl;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::Ipv4Addr;

use netlink::nftables::{self, Change};
use netlink::{NetlinkError, rtnetlink};
use netns::Namespace;
pub use netns::NamespaceError;
pub use ruleset::Mapping;
use ruleset::{Element, SET_ADDR4, SET_ANY4};
pub use spec::{HostSpec, Proto, PublishSpec, SpecError};

/// The longest interface name Linux accepts (IFNAMSIZ less the NUL).
const MAX_IFNAME: usize = 15;

/// Where published ports lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A namespace by name under /run/netns, or by path; nsport reads its address.
    Netns(String),
    /// An explicit IPv4 address.
    Addr(Ipv4Addr),
}

/// Everything that can go wrong, each with a message that names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error("network namespace {0:?} has no global IPv4 address on a non-loopback interface")]
    NoAddress(String),
    #[error("interface name {0:?} is longer than {MAX_IFNAME} bytes")]
    IfaceTooLong(String),
    #[error("interface {0:?} does not exist")]
    NoSuchIface(String),
    #[error("no route to target {0}: give the interface with --via")]
    NoRoute(Ipv4Addr),
    #[error("target {0} is an address of this host, not of a namespace")]
    TargetIsLocal(Ipv4Addr),
    #[error("host address {0} is not an address of this host")]
    NotLocal(Ipv4Addr),
    #[error("{spec} is published twice in one command, to {first} and {second}")]
    Duplicate {
        spec: String,
        first: String,
        second: String,
    },
    #[error("host port {host} is already published to {existing}")]
    Conflict { host: String, existing: String },
    #[error("{0} is not published")]
    NotPublished(String),
    #[error("nsport needs root or CAP_NET_ADMIN")]
    Permission(#[source] NetlinkError),
    #[error("cannot change nftables")]
    Netlink(#[from] NetlinkError),
    #[error("cannot write {path}")]
    Sysctl {
        path: String,
        #[source]
        error: io::Error,
    },
}

impl Error {
    /// Whether the error is the user's input rather than the system's state (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Spec(_)
                | Error::Namespace(NamespaceError::NotFound(_))
                | Error::NoAddress(_)
                | Error::IfaceTooLong(_)
                | Error::NoSuchIface(_)
                | Error::TargetIsLocal(_)
                | Error::NotLocal(_)
                | Error::Duplicate { .. }
                | Error::NotPublished(_)
        )
    }
}

/// Turns EPERM from the kernel into the message a user can act on.
fn kernel(error: NetlinkError) -> Error {
    match error.errno() {
        Some(libc::EPERM | libc::EACCES) => Error::Permission(error),
        _ => Error::Netlink(error),
    }
}

/// The target of a publish, resolved: address, interface toward it, and the bridge port
/// that needs hairpin mode.
struct Resolved {
    addr: Ipv4Addr,
    via: rtnetlink::Link,
    netns: Option<String>,
    bridge_port: Option<u32>,
}

fn check_ifname(name: &str) -> Result<(), Error> {
    if name.len() > MAX_IFNAME {
        return Err(Error::IfaceTooLong(name.to_string()));
    }
    Ok(())
}

fn resolve(target: &Target, via: Option<&str>) -> Result<Resolved, Error> {
    if let Some(name) = via {
        check_ifname(name)?;
    }
    let (addr, netns, peer) = match target {
        Target::Addr(addr) => (*addr, None, None),
        Target::Netns(name) => {
            let namespace = Namespace::open(name)?;
            let found = namespace
                .target()?
                .ok_or_else(|| Error::NoAddress(name.clone()))?;
            (found.addr, Some(name.clone()), found.peer_ifindex)
        }
    };
    let via = match via {
        Some(name) => rtnetlink::link_by_name(name)
            .map_err(kernel)?
            .ok_or_else(|| Error::NoSuchIface(name.to_string()))?,
        None => {
            let index = rtnetlink::route_output_interface(addr)
                .map_err(kernel)?
                .ok_or(Error::NoRoute(addr))?;
            rtnetlink::link_by_index(index)
                .map_err(kernel)?
                .ok_or(Error::NoRoute(addr))?
        }
    };
    if via.is_loopback {
        return Err(Error::TargetIsLocal(addr));
    }
    // Behind a bridge, the target's own port needs hairpin mode for the namespace to reach
    // itself when br_netfilter bridges the DNATed packet back. The veth peer is that port.
    let bridge_port = match peer {
        Some(index) if via.is_bridge => rtnetlink::link_by_index(index)
            .map_err(kernel)?
            .filter(|port| port.master == Some(via.index))
            .map(|port| port.index),
        _ => None,
    };
    Ok(Resolved {
        addr,
        via,
        netns,
        bridge_port,
    })
}

fn check_local(specs: &[PublishSpec]) -> Result<(), Error> {
    let wanted: BTreeSet<Ipv4Addr> = specs.iter().filter_map(|spec| spec.host_addr).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let local: BTreeSet<Ipv4Addr> = rtnetlink::ipv4_addresses()
        .map_err(kernel)?
        .into_iter()
        .map(|addr| addr.addr)
        .collect();
    match wanted
        .into_iter()
        .find(|addr| !local.contains(addr) && !addr.is_loopback())
    {
        Some(addr) => Err(Error::NotLocal(addr)),
        None => Ok(()),
    }
}

fn host_label(mapping: &Mapping) -> String {
    match mapping.host_addr {
        Some(addr) => format!("{addr}:{}/{}", mapping.host_port, mapping.proto),
        None => format!("{}/{}", mapping.host_port, mapping.proto),
    }
}

fn target_label(mapping: &Mapping) -> String {
    let mut label = format!(
        "{}:{} via {}",
        mapping.to_addr, mapping.to_port, mapping.via
    );
    if let Some(netns) = &mapping.netns {
        label.push_str(&format!(" (netns {netns})"));
    }
    label
}

/// The chains, sets and rules of a new table, created exclusively so that of two
/// concurrent first publishes exactly one writes them.
fn table_changes<'a>(
    chains: &'a [ruleset::ChainDef],
    sets: &'a [ruleset::SetDef],
    rules: &'a [ruleset::RuleDef],
) -> Vec<Change<'a>> {
    let mut changes = vec![Change::AddTable { exclusive: true }];
    changes.extend(chains.iter().map(Change::AddChain));
    changes.extend(sets.iter().map(Change::AddSet));
    changes.extend(rules.iter().map(Change::AddRule));
    changes
}

/// Publishes every port of `specs` to `target`, in one atomic batch, and returns the
/// mappings made. Re-publishing an identical mapping succeeds and changes nothing.
pub fn publish(
    target: &Target,
    via: Option<&str>,
    specs: &[PublishSpec],
) -> Result<Vec<Mapping>, Error> {
    let resolved = resolve(target, via)?;
    check_local(specs)?;
    let mut mappings = Vec::new();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for spec in specs {
        for (host_port, to_port) in spec.port_pairs() {
            let mapping = Mapping {
                proto: spec.proto,
                host_addr: spec.host_addr,
                host_port,
                to_addr: resolved.addr,
                to_port,
                via: resolved.via.name.clone(),
                netns: resolved.netns.clone(),
            };
            let key = [mapping.set().as_bytes(), &mapping.key()].concat();
            if let Some(&first) = seen.get(&key) {
                let first: &Mapping = &mappings[first];
                if first != &mapping {
                    return Err(Error::Duplicate {
                        spec: host_label(&mapping),
                        first: target_label(first),
                        second: target_label(&mapping),
                    });
                }
                continue;
            }
            seen.insert(key, mappings.len());
            mappings.push(mapping);
        }
    }

    let mut elements: Vec<Element> = mappings.iter().map(Element::mapping).collect();
    elements.push(Element::iface(&resolved.via.name));
    elements.push(Element::hairpin(resolved.addr));

    let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
    let element_changes = elements.iter().map(Change::AddElement);
    let with_table = !nftables::table_exists().map_err(kernel)?;
    let result = if with_table {
        let mut changes = table_changes(&chains, &sets, &rules);
        let offset = changes.len();
        changes.extend(element_changes.clone());
        match nftables::commit(&changes) {
            // Another nsport created the table first: add only the elements.
            Err(NetlinkError::Kernel {
                index: Some(0),
                error,
            }) if error.raw_os_error() == Some(libc::EEXIST) => {
                nftables::commit(&element_changes.collect::<Vec<_>>())
            }
            Err(NetlinkError::Kernel {
                index: Some(i),
                error,
            }) if i >= offset => Err(NetlinkError::Kernel {
                index: Some(i - offset),
                error,
            }),
            other => other,
        }
    } else {
        nftables::commit(&element_changes.collect::<Vec<_>>())
    };
    match result {
        Ok(()) => {}
        Err(NetlinkError::Kernel {
            index: Some(index),
            error,
        }) if error.raw_os_error() == Some(libc::EEXIST) && index < mappings.len() => {
            return Err(conflict(&mappings[index]));
        }
        Err(error) => return Err(kernel(error)),
    }

    apply_settings(&resolved, &mappings)?;
    Ok(mappings)
}

/// Names the mapping that already holds the host port `wanted` asked for.
fn conflict(wanted: &Mapping) -> Error {
    let existing = list().ok().and_then(|all| {
        all.into_iter().find(|m| {
            m.proto == wanted.proto
                && m.host_addr == wanted.host_addr
                && m.host_port == wanted.host_port
        })
    });
    Error::Conflict {
        host: host_label(wanted),
        existing: existing.map_or_else(|| "another target".to_string(), |m| target_label(&m)),
    }
}

/// The kernel settings a publish needs, written after the table (and its guard) exists.
fn apply_settings(resolved: &Resolved, mappings: &[Mapping]) -> Result<(), Error> {
    let sysctl_error = |path: &str| {
        let path = path.to_string();
        move |error| Error::Sysctl { path, error }
    };
    sysctl::enable_ip_forward().map_err(sysctl_error("net.ipv4.ip_forward"))?;
    if mappings.iter().any(Mapping::serves_loopback) {
        let name = &resolved.via.name;
        sysctl::enable_route_localnet(name).map_err(sysctl_error(&format!(
            "net.ipv4.conf.{name}.route_localnet"
        )))?;
    }
    if let Some(port) = resolved.bridge_port {
        rtnetlink::set_hairpin(port, true).map_err(kernel)?;
    }
    Ok(())
}

/// Every mapping in `table inet nsport`, sorted by protocol, host address and port.
pub fn list() -> Result<Vec<Mapping>, Error> {
    let mut mappings = Vec::new();
    for set in [SET_ANY4, SET_ADDR4] {
        for element in nftables::dump_elements(set).map_err(kernel)? {
            mappings.extend(Mapping::from_element(
                set,
                &element.key,
                &element.data,
                element.comment.as_deref(),
            ));
        }
    }
    mappings.sort_by_key(|m| (m.proto, m.host_addr, m.host_port));
    Ok(mappings)
}

/// Removes exactly `remove` from the table in one batch, with the interface and hairpin
/// elements that no remaining mapping needs.
fn remove(all: &[Mapping], remove: &[&Mapping]) -> Result<(), Error> {
    let remaining: Vec<&Mapping> = all.iter().filter(|m| !remove.contains(m)).collect();
    let mut elements: Vec<Element> = remove.iter().map(|m| Element::mapping(m)).collect();
    let gone_ifaces: BTreeSet<&str> = remove.iter().map(|m| m.via.as_str()).collect();
    for iface in gone_ifaces {
        if !remaining.iter().any(|m| m.via == iface) {
            elements.push(Element::iface(iface));
        }
    }
    let gone_targets: BTreeSet<Ipv4Addr> = remove.iter().map(|m| m.to_addr).collect();
    for target in gone_targets {
        if !remaining.iter().any(|m| m.to_addr == target) {
            elements.push(Element::hairpin(target));
        }
    }
    let changes: Vec<Change> = elements.iter().map(Change::DelElement).collect();
    nftables::commit(&changes).map_err(kernel)
}

/// Unpublishes the host ports of `specs`; all or nothing: when one is not published,
/// nothing is removed and the error names it.
pub fn unpublish(specs: &[HostSpec]) -> Result<Vec<Mapping>, Error> {
    let all = list()?;
    let mut chosen: Vec<&Mapping> = Vec::new();
    for spec in specs {
        for port in spec.ports.ports() {
            let found = all.iter().find(|m| {
                m.proto == spec.proto && m.host_addr == spec.host_addr && m.host_port == port
            });
            match found {
                Some(mapping) if !chosen.contains(&mapping) => chosen.push(mapping),
                Some(_) => {}
                None => {
                    let label = HostSpec {
                        ports: spec::PortRange {
                            start: port,
                            end: port,
                        },
                        ..*spec
                    };
                    return Err(Error::NotPublished(label.to_string()));
                }
            }
        }
    }
    remove(&all, &chosen)?;
    Ok(chosen.into_iter().cloned().collect())
}

/// Unpublishes every mapping whose target is the address of namespace `name`.
pub fn unpublish_netns(name: &str) -> Result<Vec<Mapping>, Error> {
    let namespace = Namespace::open(name)?;
    let addr = namespace
        .target()?
        .ok_or_else(|| Error::NoAddress(name.to_string()))?
        .addr;
    let all = list()?;
    let chosen: Vec<&Mapping> = all.iter().filter(|m| m.to_addr == addr).collect();
    if !chosen.is_empty() {
        remove(&all, &chosen)?;
    }
    Ok(chosen.into_iter().cloned().collect())
}

/// Deletes `table inet nsport`; succeeds when there is none.
pub fn flush() -> Result<(), Error> {
    match nftables::commit(&[Change::DelTable]) {
        Err(error) if error.errno() == Some(libc::ENOENT) => Ok(()),
        other => other.map_err(kernel),
    }
}
