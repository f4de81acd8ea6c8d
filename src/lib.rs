//! nsport publishes ports of Linux network namespaces on the host, the way `docker run -p`
//! does, by programming one nftables table (`table inet nsport`) directly over netlink.
//!
//! A published port is an element of a map, so the rules never grow: a packet costs one
//! hash lookup however many ports are published. Each call sends one atomic batch: all of
//! it applies or none of it does.
//!
//! ```no_run
//! use nsport::{PublishOptions, Target};
//!
//! # fn main() -> Result<(), nsport::Error> {
//! // Publish port 3000 of namespace `ns1` on every address of the host.
//! let target = Target::Netns("ns1".into());
//! nsport::publish(&target, &PublishOptions::default(), &["3000:3000".parse()?])?;
//! for mapping in nsport::list()? {
//!     println!("{}:{} -> {}:{}", mapping.proto, mapping.host_port, mapping.to_addr, mapping.to_port);
//! }
//! # Ok(())
//! # }
//! ```

pub mod cni;
pub mod doctor;
mod firewalls;
mod host_ports;
pub mod netlink;
pub mod netns;
mod plan;
pub mod ruleset;
mod settings;
pub mod spec;
mod state;
pub mod sysctl;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;

use host_ports::HostSockets;
use netlink::conntrack::{self, Flow};
use netlink::nftables::{self, Change, ElementDump};
use netlink::{NetlinkError, rtnetlink};
use netns::Namespace;
pub use netns::NamespaceError;
pub use plan::Plan;
pub use ruleset::Mapping;
use ruleset::{
    Element, SET_ADDR4, SET_ADDR6, SET_ANY4, SET_ANY6, SET_HAIRPIN4, SET_HAIRPIN6, SET_IFACES,
    SET_TARGETS4, SET_TARGETS6,
};
pub use spec::{HostSpec, Proto, PublishSpec, SpecError, with_port};

/// The longest interface name Linux accepts (IFNAMSIZ less the NUL).
const MAX_IFNAME: usize = 15;

/// Where published ports lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A namespace by name under /run/netns, or by path; nsport reads its addresses.
    Netns(String),
    /// An explicit IPv4 or IPv6 address.
    Addr(IpAddr),
}

/// How to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// The host-side interface toward the target; found by route lookup when `None`.
    pub via: Option<String>,
    /// Let hosts that route to the target's address reach its unpublished ports, as
    /// before nsport turned forwarding on. Off by default.
    pub allow_direct: bool,
    /// Publish even when a host socket already holds the port (it stops receiving).
    pub force: bool,
}

/// A mapping as `ls` shows it: with whether its namespace is gone and which host socket
/// it hides.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// Everything that can go wrong, each with a message that names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(
        "network namespace {0:?} has no global IPv4 or IPv6 address on a non-loopback interface"
    )]
    NoAddress(String),
    #[error("{spec} asks for an {family} host address, but the target has no {family} address")]
    FamilyMismatch { spec: String, family: &'static str },
    #[error("interface name {0:?} is longer than {MAX_IFNAME} bytes")]
    IfaceTooLong(String),
    #[error("interface {0:?} does not exist")]
    NoSuchIface(String),
    #[error("no route to target {0}: give the interface with --via")]
    NoRoute(IpAddr),
    #[error("target {0} is an address of this host, not of a namespace")]
    TargetIsLocal(IpAddr),
    #[error("host address {0} is not an address of this host")]
    NotLocal(IpAddr),
    #[error("{spec} is published twice in one command, to {first} and {second}")]
    Duplicate {
        spec: String,
        first: String,
        second: String,
    },
    #[error("host port {host} is already published to {existing}")]
    Conflict { host: String, existing: String },
    #[error(
        "host port {host} is in use by {owner}; publishing it would cut that socket off (use --force to publish anyway)"
    )]
    HostPortInUse { host: String, owner: String },
    #[error("{0} is not published")]
    NotPublished(String),
    #[error("nsport needs root or CAP_NET_ADMIN")]
    Permission(#[source] io::Error),
    #[error("cannot change nftables")]
    Netlink(#[from] NetlinkError),
    #[error("cannot write {name}")]
    Sysctl {
        name: String,
        #[source]
        error: io::Error,
    },
    #[error("cannot keep the record of changed settings (/run/nsport)")]
    State(#[source] io::Error),
    #[error("invalid mappings file: {0}")]
    File(String),
}

impl Error {
    /// Whether the error is the user's input rather than the system's state (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Spec(_)
                | Error::Namespace(NamespaceError::NotFound(_))
                | Error::NoAddress(_)
                | Error::FamilyMismatch { .. }
                | Error::IfaceTooLong(_)
                | Error::NoSuchIface(_)
                | Error::TargetIsLocal(_)
                | Error::NotLocal(_)
                | Error::Duplicate { .. }
                | Error::NotPublished(_)
                | Error::File(_)
        )
    }
}

/// Turns EPERM from the kernel into the message a user can act on.
fn kernel(error: NetlinkError) -> Error {
    match error.errno() {
        Some(errno @ (libc::EPERM | libc::EACCES)) => {
            Error::Permission(io::Error::from_raw_os_error(errno))
        }
        _ => Error::Netlink(error),
    }
}

/// The same for the record of changed settings, which only root may write.
fn state(error: io::Error) -> Error {
    match error.kind() {
        io::ErrorKind::PermissionDenied => Error::Permission(error),
        _ => Error::State(error),
    }
}

/// The target of a publish in one address family, resolved: address, interface toward
/// it, and the bridge port that needs hairpin mode.
pub(crate) struct Resolved {
    addr: IpAddr,
    pub(crate) via: rtnetlink::Link,
    netns: Option<(String, u64)>,
    bridge_port: Option<rtnetlink::Link>,
}

fn check_ifname(name: &str) -> Result<(), Error> {
    if name.len() > MAX_IFNAME {
        return Err(Error::IfaceTooLong(name.to_string()));
    }
    Ok(())
}

/// Resolves the target in each address family it has: one address for `--to`, the
/// namespace's first global IPv4 and IPv6 addresses for `--netns`.
pub(crate) fn resolve(target: &Target, via: Option<&str>) -> Result<Vec<Resolved>, Error> {
    if let Some(name) = via {
        check_ifname(name)?;
    }
    let (targets, netns) = match target {
        Target::Addr(addr) => (vec![(*addr, None)], None),
        Target::Netns(name) => {
            let namespace = Namespace::open(name)?;
            let found = namespace.targets()?;
            if found.is_empty() {
                return Err(Error::NoAddress(name.clone()));
            }
            let targets = found
                .into_iter()
                .map(|t| (t.addr, t.peer_ifindex))
                .collect();
            (targets, Some((name.clone(), namespace.inode)))
        }
    };
    let given_via = match via {
        Some(name) => Some(
            rtnetlink::link_by_name(name)
                .map_err(kernel)?
                .ok_or_else(|| Error::NoSuchIface(name.to_string()))?,
        ),
        None => None,
    };
    targets
        .into_iter()
        .map(|(addr, peer)| {
            let via = match &given_via {
                Some(link) => link.clone(),
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
            // Behind a bridge, the target's own port needs hairpin mode for the namespace
            // to reach itself when br_netfilter bridges the DNATed packet back. The veth
            // peer is that port.
            let bridge_port = bridge_port(peer, &via)?;
            Ok(Resolved {
                addr,
                via,
                netns: netns.clone(),
                bridge_port,
            })
        })
        .collect()
}

fn local_addresses() -> Result<BTreeSet<IpAddr>, Error> {
    Ok(rtnetlink::addresses()
        .map_err(kernel)?
        .into_iter()
        .map(|addr| addr.addr)
        .collect())
}

fn check_local(specs: &[PublishSpec]) -> Result<(), Error> {
    let wanted: BTreeSet<IpAddr> = specs.iter().filter_map(|spec| spec.host_addr).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let local = local_addresses()?;
    match wanted
        .into_iter()
        .find(|addr| !local.contains(addr) && !addr.is_loopback())
    {
        Some(addr) => Err(Error::NotLocal(addr)),
        None => Ok(()),
    }
}

pub(crate) fn host_label(mapping: &Mapping) -> String {
    let family = if mapping.is_ipv6() { " (IPv6)" } else { "" };
    match mapping.host_addr {
        Some(addr) => format!("{}/{}", with_port(addr, mapping.host_port), mapping.proto),
        None => format!("{}/{}{family}", mapping.host_port, mapping.proto),
    }
}

fn target_label(mapping: &Mapping) -> String {
    let to = with_port(mapping.to_addr, mapping.to_port);
    let mut label = format!("{to} via {}", mapping.via);
    if let Some(netns) = &mapping.netns {
        label.push_str(&format!(" (netns {netns})"));
    }
    label
}

/// The mappings `specs` ask for: a host-address spec in its address's family, a wildcard
/// spec in every family the target has. Refuses a host port asked for twice with two
/// targets.
fn plan(resolved: &[Resolved], specs: &[PublishSpec]) -> Result<Vec<Mapping>, Error> {
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut seen: HashMap<(&'static str, Vec<u8>), usize> = HashMap::new();
    for spec in specs {
        let families: Vec<&Resolved> = match spec.host_addr {
            None => resolved.iter().collect(),
            Some(addr) => {
                let same: Vec<&Resolved> = resolved
                    .iter()
                    .filter(|r| r.addr.is_ipv6() == addr.is_ipv6())
                    .collect();
                if same.is_empty() {
                    return Err(Error::FamilyMismatch {
                        spec: spec.to_string(),
                        family: if addr.is_ipv6() { "IPv6" } else { "IPv4" },
                    });
                }
                same
            }
        };
        for target in families {
            for (host_port, to_port) in spec.port_pairs() {
                let mapping = Mapping {
                    proto: spec.proto,
                    host_addr: spec.host_addr,
                    host_port,
                    to_addr: target.addr,
                    to_port,
                    via: target.via.name.clone(),
                    netns: target.netns.as_ref().map(|(name, _)| name.clone()),
                    netns_inode: target.netns.as_ref().map(|(_, inode)| *inode),
                    allow_direct: false,
                    container: None,
                    container_ifname: None,
                };
                // One spec cannot name a host port twice; only several can.
                if specs.len() == 1 {
                    mappings.push(mapping);
                    continue;
                }
                match seen.get(&(mapping.set(), mapping.key())) {
                    Some(&first) if mappings[first] != mapping => {
                        return Err(Error::Duplicate {
                            spec: host_label(&mapping),
                            first: target_label(&mappings[first]),
                            second: target_label(&mapping),
                        });
                    }
                    Some(_) => {}
                    None => {
                        seen.insert((mapping.set(), mapping.key()), mappings.len());
                        mappings.push(mapping);
                    }
                }
            }
        }
    }
    Ok(mappings)
}

/// Deletes `deletes` and adds `adds` in one batch, creating the table first when it does
/// not exist yet.
///
/// The common case, a table already there, costs one round trip. The table is created
/// exclusively, so that of two first publishes racing, exactly one writes the chains and
/// rules and the other adds only its elements. A refusal carries the index into `adds`.
fn commit_elements(deletes: &[Element], adds: &[Element]) -> Result<(), NetlinkError> {
    let element_changes: Vec<Change> = deletes
        .iter()
        .map(Change::DelElement)
        .chain(adds.iter().map(Change::AddElement))
        .collect();
    let in_adds = |error: NetlinkError| match error {
        NetlinkError::Kernel {
            index: Some(index),
            error,
        } => NetlinkError::Kernel {
            index: index.checked_sub(deletes.len()),
            error,
        },
        other => other,
    };
    match nftables::commit(&element_changes, None) {
        // No table (or an older one without a set): create it, unless there was
        // something to delete, which then is not there either.
        Err(error) if error.errno() == Some(libc::ENOENT) && deletes.is_empty() => {}
        other => return other.map_err(in_adds),
    }
    let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
    let mut changes = vec![Change::AddTable { exclusive: true }];
    changes.extend(chains.iter().map(Change::AddChain));
    changes.extend(sets.iter().map(Change::AddSet));
    changes.extend(rules.iter().map(Change::AddRule));
    let offset = changes.len();
    changes.extend(element_changes.iter().copied());
    match nftables::commit(&changes, None) {
        Err(NetlinkError::Kernel {
            index: Some(0),
            error,
        }) if error.raw_os_error() == Some(libc::EEXIST) => {
            nftables::commit(&element_changes, None).map_err(in_adds)
        }
        Err(NetlinkError::Kernel {
            index: Some(index),
            error,
        }) if index >= offset => Err(NetlinkError::Kernel {
            index: Some(index - offset),
            error,
        }),
        other => other,
    }
}

/// `commit_elements`, turning a refused element into the conflict it is: `adds` starts
/// with the elements of `added`, in order.
fn commit_naming_conflicts(
    deletes: &[Element],
    adds: &[Element],
    added: &[Mapping],
) -> Result<(), Error> {
    match commit_elements(deletes, adds) {
        Ok(()) => Ok(()),
        Err(NetlinkError::Kernel {
            index: Some(index),
            error,
        }) if error.raw_os_error() == Some(libc::EEXIST) && index < added.len() => {
            Err(conflict(&added[index..]))
        }
        Err(error) => Err(kernel(error)),
    }
}

/// A publish, resolved and checked: its targets, its mappings, and the elements they
/// need (mappings first, then interfaces, hairpin pairs and protected targets).
struct Prepared {
    resolved: Vec<Resolved>,
    mappings: Vec<Mapping>,
    elements: Vec<Element>,
}

fn prepare_publish(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<Prepared, Error> {
    let resolved = resolve(target, options.via.as_deref())?;
    check_local(specs)?;
    let mut mappings = plan(&resolved, specs)?;
    for mapping in &mut mappings {
        mapping.allow_direct = options.allow_direct;
    }
    if !options.force {
        check_host_ports(&mappings)?;
    }
    // The mappings of one target share their comment.
    let mut comments: Vec<(IpAddr, String)> = Vec::new();
    let mut elements: Vec<Element> = Vec::with_capacity(mappings.len() + 6);
    for mapping in &mappings {
        let comment = match comments.iter().find(|(addr, _)| *addr == mapping.to_addr) {
            Some((_, comment)) => comment.clone(),
            None => {
                comments.push((mapping.to_addr, mapping.comment()));
                mapping.comment()
            }
        };
        elements.push(Element::mapping_with_comment(mapping, comment));
    }
    elements.extend(helpers_for(&mappings));
    Ok(Prepared {
        resolved,
        mappings,
        elements,
    })
}

/// The helper elements `mappings` need: the interfaces toward their targets, the
/// targets' hairpin pairs, and the targets protected from direct access. No duplicates.
fn helpers_for<'a>(mappings: impl IntoIterator<Item = &'a Mapping>) -> Vec<Element> {
    let mut helpers: Vec<Element> = Vec::new();
    for mapping in mappings {
        let mut needed = vec![
            Element::iface(&mapping.via),
            Element::hairpin(mapping.to_addr),
        ];
        if !mapping.allow_direct {
            needed.push(Element::target(mapping.to_addr));
        }
        for element in needed {
            if !helpers
                .iter()
                .any(|h| h.set == element.set && h.key == element.key)
            {
                helpers.push(element);
            }
        }
    }
    helpers
}

/// Publishes every port of `specs` to `target`, in one atomic batch, and returns the
/// mappings made. Re-publishing an identical mapping succeeds and changes nothing; a host
/// port that leads elsewhere already is a conflict.
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
    // One dump of every base chain answers both the guard check and the other-firewalls
    // warning: a round trip fewer on the path every publish takes.
    let chains = nftables::dump_base_chains().map_err(kernel)?;
    settings::check_guard_given(&chains)?;
    let Prepared {
        resolved,
        mappings,
        elements,
    } = prepare_publish(target, options, specs)?;
    commit_naming_conflicts(&[], &elements, &mappings)?;
    for target in &resolved {
        let own: Vec<Mapping> = mappings
            .iter()
            .filter(|m| m.to_addr == target.addr)
            .cloned()
            .collect();
        if !own.is_empty() {
            settings::turn_on(&target.via.name, target.bridge_port.as_ref(), &own)?;
        }
    }
    forget_new_paths(&mappings)?;
    for warning in firewalls::dropping_forward_chains(&chains) {
        log::warn!("{warning}");
    }
    Ok(mappings)
}

/// What `publish` would change, touching nothing.
pub fn publish_dry_run(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<Plan, Error> {
    let Prepared {
        mappings, elements, ..
    } = prepare_publish(target, options, specs)?;
    Ok(Plan {
        create_table: !nftables::table_exists().map_err(kernel)?,
        add: elements,
        notes: settings::would_turn_on(&mappings),
        ..Plan::default()
    })
}

/// A UDP flow already running to a newly published host port keeps its old path until its
/// conntrack entry goes; TCP flows there are the host's own connections and are left alone,
/// and a TCP-only publish does not read the conntrack table at all.
fn forget_new_paths(added: &[Mapping]) -> Result<(), Error> {
    let udp: Vec<Mapping> = added
        .iter()
        .filter(|m| m.proto == Proto::Udp)
        .cloned()
        .collect();
    forget_flows(&udp, |mapping, flow| {
        flow.reply_src != Some(mapping.to_addr)
    })
}

fn check_host_ports(mappings: &[Mapping]) -> Result<(), Error> {
    let tcp = mappings.iter().any(|m| m.proto == Proto::Tcp);
    let udp = mappings.iter().any(|m| m.proto == Proto::Udp);
    let sockets = HostSockets::read(tcp, udp)?;
    for mapping in mappings {
        if let Some(owner) = sockets.shadowed_by(mapping) {
            return Err(Error::HostPortInUse {
                host: host_label(mapping),
                owner,
            });
        }
    }
    Ok(())
}

/// Names the first of `wanted` whose host port another mapping holds, and that mapping.
/// The kernel names the message it refused, which may carry many elements: the one that
/// clashed is the first whose key is taken by other data.
fn conflict(wanted: &[Mapping]) -> Error {
    for mapping in wanted {
        let existing = nftables::get_element(mapping.set(), &mapping.key())
            .ok()
            .flatten()
            .and_then(|element| mapping_of(mapping.set(), &element));
        if let Some(existing) = existing.filter(|existing| existing.data() != mapping.data()) {
            return Error::Conflict {
                host: host_label(mapping),
                existing: target_label(&existing),
            };
        }
    }
    Error::Conflict {
        host: wanted.first().map(host_label).unwrap_or_default(),
        existing: "another target".to_string(),
    }
}

fn mapping_of(set: &str, element: &ElementDump) -> Option<Mapping> {
    Mapping::from_element(set, &element.key, &element.data, element.comment.as_deref())
}

/// Deletes the conntrack entries of flows to the host side of `mappings` for which
/// `doomed` holds, so their next packet takes the current path.
fn forget_flows(
    mappings: &[Mapping],
    doomed: impl Fn(&Mapping, &Flow) -> bool,
) -> Result<(), Error> {
    if mappings.is_empty() {
        return Ok(());
    }
    let wildcard = mappings.iter().any(|m| m.host_addr.is_none());
    let local = if wildcard {
        local_addresses()?
    } else {
        BTreeSet::new()
    };
    let by_port: HashMap<(u8, u16), Vec<&Mapping>> =
        mappings.iter().fold(HashMap::new(), |mut index, mapping| {
            let key = (mapping.proto.number(), mapping.host_port);
            index.entry(key).or_default().push(mapping);
            index
        });
    let deleted = conntrack::delete_flows(|flow| {
        by_port
            .get(&(flow.proto, flow.dport))
            .into_iter()
            .flatten()
            .any(|mapping| {
                let to_host = match mapping.host_addr {
                    Some(addr) => flow.dst == addr,
                    None => {
                        flow.dst.is_ipv6() == mapping.is_ipv6()
                            && (local.contains(&flow.dst) || flow.dst.is_loopback())
                    }
                };
                to_host && doomed(mapping, flow)
            })
    })
    .map_err(kernel)?;
    if deleted > 0 {
        log::info!("deleted {deleted} conntrack entries");
    }
    Ok(())
}

/// Every mapping in `table inet nsport`, sorted by family, protocol, host address and port.
pub fn list() -> Result<Vec<Mapping>, Error> {
    Ok(list_counted()?
        .into_iter()
        .map(|(mapping, _)| mapping)
        .collect())
}

/// Packets and bytes.
type Counter = (u64, u64);

/// Every mapping with its packet and byte counters, in one dump per map.
fn list_counted() -> Result<Vec<(Mapping, Counter)>, Error> {
    let mut mappings = Vec::new();
    for set in [SET_ANY4, SET_ADDR4, SET_ANY6, SET_ADDR6] {
        for element in nftables::dump_elements(set).map_err(kernel)? {
            if let Some(mapping) = mapping_of(set, &element) {
                mappings.push((mapping, element.counter.unwrap_or_default()));
            }
        }
    }
    mappings.sort_by_key(|(m, _)| (m.is_ipv6(), m.proto, m.host_addr, m.host_port));
    Ok(mappings)
}

/// Every mapping, with whether its namespace is gone and which host socket it hides.
pub fn list_status() -> Result<Vec<Listing>, Error> {
    settings::check_guard()?;
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
        .map(|mapping| match &mapping.netns {
            Some(name) => {
                let now = *namespaces
                    .entry(name)
                    .or_insert_with(|| Namespace::open(name).ok().map(|ns| ns.inode));
                now.is_none() || mapping.netns_inode.is_some_and(|inode| now != Some(inode))
            }
            None => false,
        })
        .collect()
}

/// The elements of the helper sets that exist.
fn existing_helpers() -> Result<Vec<Element>, Error> {
    let mut existing = Vec::new();
    for set in [
        SET_IFACES,
        SET_HAIRPIN4,
        SET_TARGETS4,
        SET_HAIRPIN6,
        SET_TARGETS6,
    ] {
        for element in nftables::dump_elements(set).map_err(kernel)? {
            existing.extend(Element::helper(set, &element.key));
        }
    }
    Ok(existing)
}

/// Takes the table from the mappings `current` to exactly `desired` in one batch: removes
/// what is not desired, adds what is missing, leaves matching mappings (and their
/// connections) alone, and keeps the helper elements to what `desired` needs. Then turns
/// on and puts back settings, and forgets the flows whose path changed.
pub(crate) fn transition(
    current: &[Mapping],
    desired: &[Mapping],
    dry_run: bool,
) -> Result<Plan, Error> {
    let removed: Vec<Mapping> = current
        .iter()
        .filter(|m| !desired.contains(m))
        .cloned()
        .collect();
    let added: Vec<Mapping> = desired
        .iter()
        .filter(|m| !current.contains(m))
        .cloned()
        .collect();
    let needed = helpers_for(desired);
    let existing = existing_helpers()?;
    let same = |a: &Element, b: &Element| a.set == b.set && a.key == b.key;
    let mut delete: Vec<Element> = removed.iter().map(Element::mapping).collect();
    delete.extend(
        existing
            .iter()
            .filter(|e| !needed.iter().any(|n| same(n, e)))
            .cloned(),
    );
    let mut add: Vec<Element> = added.iter().map(Element::mapping).collect();
    add.extend(
        needed
            .iter()
            .filter(|n| !existing.iter().any(|e| same(n, e)))
            .cloned(),
    );
    let plan = Plan {
        create_table: !add.is_empty() && !nftables::table_exists().map_err(kernel)?,
        delete,
        add,
        notes: settings::would_turn_on(&added),
        ..Plan::default()
    };
    if dry_run || plan.is_empty() {
        return Ok(plan);
    }
    commit_naming_conflicts(&plan.delete, &plan.add, &added)?;
    for mapping in &added {
        let via = rtnetlink::link_by_name(&mapping.via).map_err(kernel)?;
        let port = match &via {
            Some(via) => bridge_port_of(mapping, via)?,
            None => None,
        };
        settings::turn_on(&mapping.via, port.as_ref(), std::slice::from_ref(mapping))?;
    }
    settings::put_back_unneeded(desired)?;
    forget_flows(&removed, |mapping, flow| {
        flow.reply_src == Some(mapping.to_addr)
    })?;
    forget_new_paths(&added)?;
    Ok(plan)
}

/// The bridge port of a mapping's namespace, found through the namespace it records.
pub(crate) fn bridge_port_of(
    mapping: &Mapping,
    via: &rtnetlink::Link,
) -> Result<Option<rtnetlink::Link>, Error> {
    let Some(name) = &mapping.netns else {
        return Ok(None);
    };
    let Ok(namespace) = Namespace::open(name) else {
        return Ok(None);
    };
    if mapping
        .netns_inode
        .is_some_and(|inode| inode != namespace.inode)
    {
        return Ok(None);
    }
    let peer = namespace
        .targets()?
        .into_iter()
        .find(|t| t.addr == mapping.to_addr)
        .and_then(|t| t.peer_ifindex);
    bridge_port(peer, via)
}

/// The bridge port with index `peer`, if it is a port of bridge `via`.
fn bridge_port(peer: Option<u32>, via: &rtnetlink::Link) -> Result<Option<rtnetlink::Link>, Error> {
    match peer {
        Some(index) if via.is_bridge => Ok(rtnetlink::link_by_index(index)
            .map_err(kernel)?
            .filter(|port| port.master == Some(via.index))),
        _ => Ok(None),
    }
}

/// The mappings the host sides in `specs` name; all or nothing: when one is not
/// published, the error names it.
fn chosen_by_specs(all: &[Mapping], specs: &[HostSpec]) -> Result<Vec<Mapping>, Error> {
    let mut chosen: Vec<Mapping> = Vec::new();
    for spec in specs {
        for port in spec.ports.ports() {
            // A wildcard host side names the mapping of each address family.
            let found: Vec<&Mapping> = all
                .iter()
                .filter(|m| {
                    m.proto == spec.proto && m.host_addr == spec.host_addr && m.host_port == port
                })
                .collect();
            if found.is_empty() {
                let label = HostSpec {
                    ports: spec::PortRange {
                        start: port,
                        end: port,
                    },
                    ..*spec
                };
                return Err(Error::NotPublished(label.to_string()));
            }
            for mapping in found {
                if !chosen.contains(mapping) {
                    chosen.push(mapping.clone());
                }
            }
        }
    }
    Ok(chosen)
}

/// Everything but `chosen`.
fn without(all: &[Mapping], chosen: &[Mapping]) -> Vec<Mapping> {
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
    if !dry_run {
        settings::check_guard()?;
    }
    let all = list()?;
    let chosen = chosen_by_specs(&all, specs)?;
    transition(&all, &without(&all, &chosen), dry_run)
}

/// Unpublishes every mapping whose target is an address of namespace `name`, or, when
/// the namespace is gone, every mapping made for it by that name.
pub fn unpublish_netns(name: &str, dry_run: bool) -> Result<Plan, Error> {
    if !dry_run {
        settings::check_guard()?;
    }
    let all = list()?;
    let chosen: Vec<Mapping> = match Namespace::open(name) {
        Ok(namespace) => {
            let addrs: Vec<IpAddr> = namespace.targets()?.iter().map(|t| t.addr).collect();
            if addrs.is_empty() {
                return Err(Error::NoAddress(name.to_string()));
            }
            all.iter()
                .filter(|m| addrs.contains(&m.to_addr))
                .cloned()
                .collect()
        }
        Err(NamespaceError::NotFound(_)) => {
            let made_for: Vec<Mapping> = all
                .iter()
                .filter(|m| m.netns.as_deref() == Some(name))
                .cloned()
                .collect();
            if made_for.is_empty() {
                return Err(NamespaceError::NotFound(name.to_string()).into());
            }
            made_for
        }
        Err(error) => return Err(error.into()),
    };
    transition(&all, &without(&all, &chosen), dry_run)
}

/// Unpublishes every mapping whose namespace no longer exists.
pub fn prune() -> Result<Vec<Mapping>, Error> {
    let listings = list_status()?;
    let all: Vec<Mapping> = listings.iter().map(|l| l.mapping.clone()).collect();
    let stale: Vec<Mapping> = listings
        .into_iter()
        .filter(|l| l.stale)
        .map(|l| l.mapping)
        .collect();
    if !stale.is_empty() {
        transition(&all, &without(&all, &stale), false)?;
    }
    Ok(stale)
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
    if !dry_run {
        settings::check_guard()?;
    }
    transition(&list()?, desired, dry_run)
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
        check_ifname(&mapping.via)?;
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

/// The whole table as an `nft -f` script that recreates it, for persisting through
/// nftables.service.
pub fn export_nft() -> Result<String, Error> {
    let mut out = ruleset::table_script();
    for mapping in list()? {
        out.push_str(&Element::mapping(&mapping).nft_add());
        out.push('\n');
    }
    for helper in existing_helpers()? {
        out.push_str(&helper.nft_add());
        out.push('\n');
    }
    Ok(out)
}

/// Deletes `table inet nsport` and puts back every setting nsport changed; succeeds when
/// there is no table.
///
/// ```no_run
/// # fn main() -> Result<(), nsport::Error> {
/// nsport::flush(false)?;
/// assert!(nsport::list()?.is_empty());
/// # Ok(())
/// # }
/// ```
pub fn flush(dry_run: bool) -> Result<Plan, Error> {
    let all = list()?;
    let plan = Plan {
        delete_table: nftables::table_exists().map_err(kernel)?,
        notes: settings::would_put_back(),
        ..Plan::default()
    };
    if dry_run {
        return Ok(plan);
    }
    match nftables::commit(&[Change::DelTable], None) {
        Err(error) if error.errno() == Some(libc::ENOENT) => {}
        other => other.map_err(kernel)?,
    }
    settings::put_back_everything()?;
    forget_flows(&all, |mapping, flow| {
        flow.reply_src == Some(mapping.to_addr)
    })?;
    Ok(plan)
}
