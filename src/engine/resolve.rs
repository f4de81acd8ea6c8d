//! From what the user asked for to mappings: the target's address in each family, the
//! interface toward it and its bridge port, and the checks that refuse a publish before
//! anything is changed.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::error::{Error, MAX_IFNAME, kernel};
use crate::host::netns::Namespace;
use crate::host::sockets::HostSockets;
use crate::netlink::rtnetlink;
use crate::ruleset::Mapping;
use crate::spec::PublishSpec;

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
    /// Publish even when a host socket already holds the port (it stops receiving), or
    /// when another mapping overlaps it (a wildcard and a specific address on the same
    /// port): the more specific mapping then wins where they overlap.
    pub force: bool,
    /// Publish only for traffic that arrives on this interface (`--on`), whatever
    /// addresses it has or will get; it need not exist yet.
    pub on: Option<String>,
    /// Only these sources may use the published host ports (`--allow-from`); empty for
    /// every source. A list belongs to a host port: every mapping of the port shares it.
    pub allow_from: Vec<crate::model::SourcePrefix>,
}

/// The target of a publish in one address family, resolved: address, interface toward
/// it, and the bridge port that needs hairpin mode.
pub struct Resolved {
    pub addr: IpAddr,
    pub via: rtnetlink::Link,
    pub netns: Option<(String, u64)>,
    pub bridge_port: Option<rtnetlink::Link>,
}

/// Refuses what Linux would never accept as an interface name (empty, longer than IFNAMSIZ
/// allows, `.` or `..`, holding `/`, `:` or whitespace), and what nft could not read back
/// from an export: anything but printable ASCII, a quote, a backslash or a `*`.
pub fn check_ifname(name: &str) -> Result<(), Error> {
    if name.len() > MAX_IFNAME {
        return Err(Error::IfaceTooLong(name.to_string()));
    }
    // Printable ASCII only, and not `*` (nft's wildcard in interface names) nor what
    // breaks nft's quoting: a name that `nft -f` could not load back is refused here.
    let bad_byte = |b: u8| b"/:\"\\*".contains(&b) || !b.is_ascii_graphic();
    if name.is_empty() || name == "." || name == ".." || name.bytes().any(bad_byte) {
        return Err(Error::BadIfaceName(name.to_string()));
    }
    Ok(())
}

/// Refuses a target that is not one host's unicast address: loopback (the guard would
/// drop what route_localnet let through), unspecified, broadcast, multicast, or
/// link-local (which belongs to its link, and is never DNATed either way).
pub fn check_target(addr: IpAddr) -> Result<(), Error> {
    let why = match addr {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("an IPv4-mapped address"),
        _ => None,
    };
    match why {
        Some(why) => Err(Error::BadTarget { addr, why }),
        None => Ok(()),
    }
}

/// Looks up the route to a target given by address, and refuses the broadcast address of
/// a network the host is on (`172.18.0.255` on a /24): DNAT to it would reach every host
/// there, or none. The kernel's answer says so itself (a route of type broadcast, which
/// it keeps for each network of an interface that is up); for a network whose link is
/// down, the host's addresses are read.
///
/// With `--via` the route is only asked for that: a target the kernel refuses to route
/// (blackhole, prohibit) was accepted through a given interface and still is.
fn route_to_target(addr: IpAddr, via_given: bool) -> Result<Option<rtnetlink::Route>, Error> {
    if via_given && addr.is_ipv6() {
        return Ok(None);
    }
    let route = match rtnetlink::route_to(addr) {
        Err(rtnetlink_error @ crate::netlink::NetlinkError::Kernel { .. }) => match via_given {
            true => None,
            false => return Err(kernel(rtnetlink_error)),
        },
        other => other.map_err(kernel)?,
    };
    match route {
        Some(route) if addr.is_ipv4() && route.kind == rtnetlink::RTN_BROADCAST => {
            Err(broadcast(addr))
        }
        // The kernel keeps a broadcast route only while the network's link is up: the
        // broadcast address of a network on a link that is down routes as any address
        // (through a default route, or the link given with `--via`), and only the host's
        // addresses tell. The dump is read only for a target the lookup did not refuse.
        route => match addr {
            IpAddr::V4(v4) if is_a_network_broadcast(v4)? => Err(broadcast(addr)),
            _ => Ok(route),
        },
    }
}

fn broadcast(addr: IpAddr) -> Error {
    Error::BadTarget {
        addr,
        why: "the broadcast address of a network of this host",
    }
}

/// Whether `v4` is the broadcast address of a network of one of the host's IPv4 addresses
/// (`/31` and `/32` have none): the last address of its network, whatever the state of
/// its link. (A broadcast set apart with `brd` is known by its route while the link is up.)
fn is_a_network_broadcast(v4: std::net::Ipv4Addr) -> Result<bool, Error> {
    if !may_be_a_network_broadcast(v4) {
        return Ok(false);
    }
    Ok(rtnetlink::ipv4_addresses()
        .map_err(kernel)?
        .into_iter()
        .filter_map(|local| match local.addr {
            IpAddr::V4(local_v4) if (1..=30).contains(&local.prefix_len) => {
                Some((local_v4, local.prefix_len))
            }
            _ => None,
        })
        .any(|(local, len)| {
            let host_bits = u32::MAX >> len;
            let network = u32::from(local) & !host_bits;
            u32::from(v4) == network | host_bits
        }))
}

/// Whether `v4` can be the last address of a network of 2 to 2^31 addresses at all: such
/// an address ends in two bits set, so three addresses in four (10.88.0.2, say) are no
/// network's broadcast and need no dump of the host's addresses.
fn may_be_a_network_broadcast(v4: std::net::Ipv4Addr) -> bool {
    u32::from(v4) & 0b11 == 0b11
}

/// Refuses a namespace name nsport could not record exactly: one starting with `#`, the
/// mark of a digest that stands for a name too long to record.
pub fn check_netns_name(name: &str) -> Result<(), Error> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.starts_with('#') {
        "names starting with # are reserved for the digests of long names"
    } else if name.contains('\0') {
        "it holds a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::BadNetnsName(name.to_string(), why))
}

/// Resolves the target in each address family it has: one address for `--to`, the
/// namespace's first global IPv4 and IPv6 addresses for `--netns`.
pub fn resolve(target: &Target, via: Option<&str>) -> Result<Vec<Resolved>, Error> {
    if let Some(name) = via {
        check_ifname(name)?;
    }
    // A target given by address is looked up before anything else is asked, as the
    // broadcast check it carries always was.
    let (targets, netns) = match target {
        Target::Addr(addr) => {
            check_target(*addr)?;
            let route = route_to_target(*addr, via.is_some())?;
            (vec![(*addr, None, route)], None)
        }
        Target::Netns(name) => {
            check_netns_name(name)?;
            let namespace = Namespace::open(name)?;
            let found = namespace.targets()?;
            if found.is_empty() {
                return Err(Error::NoAddress(name.clone()));
            }
            let targets = found
                .into_iter()
                .map(|t| (t.addr, t.peer_ifindex, None))
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
        .map(|(addr, peer, route)| {
            let via = match &given_via {
                Some(link) => link.clone(),
                None => {
                    let route = match route {
                        Some(route) => route,
                        None => rtnetlink::route_to(addr)
                            .map_err(kernel)?
                            .ok_or(Error::NoRoute(addr))?,
                    };
                    // The host's own address: the kernel would deliver it over `lo`.
                    if route.kind == rtnetlink::RTN_LOCAL {
                        return Err(Error::TargetIsLocal(addr));
                    }
                    let index = route.oif.ok_or(Error::NoRoute(addr))?;
                    rtnetlink::link_by_index(index)
                        .map_err(kernel)?
                        .ok_or(Error::NoRoute(addr))?
                }
            };
            if via.is_loopback {
                return Err(match given_via {
                    Some(_) => Error::LoopbackVia(via.name.clone()),
                    None => Error::TargetIsLocal(addr),
                });
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

pub fn local_addresses() -> Result<BTreeSet<IpAddr>, Error> {
    Ok(rtnetlink::addresses()
        .map_err(kernel)?
        .into_iter()
        .map(|addr| addr.addr)
        .collect())
}

/// Refuses an interface to publish on that no traffic could arrive on as asked: a name
/// Linux would refuse, the loopback (the host's own traffic is DNATed on output, where
/// there is no input interface: 127.0.0.1 is how to publish to the host alone), or a
/// loopback host address (the guard drops 127/8 from any interface but `lo`).
pub fn check_on(on: &str, specs: &[PublishSpec]) -> Result<(), Error> {
    check_ifname(on)?;
    if on == "lo" {
        return Err(Error::OnLoopback(on.to_string()));
    }
    for addr in specs.iter().filter_map(|spec| spec.host_addr) {
        if addr.is_loopback() {
            return Err(Error::LoopbackOn {
                addr,
                on: on.to_string(),
            });
        }
        // The address need not be the host's yet, but must be one a host could have:
        // `publish` is only reached for local unicast destinations, and link-local
        // traffic is never DNATed.
        let why = match addr {
            IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
            IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
            IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("an IPv4-mapped address"),
            _ => None,
        };
        if let Some(why) = why {
            return Err(Error::BadHostAddr { addr, why });
        }
    }
    Ok(())
}

/// Refuses a host address that is not one of this host's. Not for mappings bound to an
/// interface: the address may come later (DHCP), which is what `--on` is for.
pub fn check_local(specs: &[PublishSpec]) -> Result<(), Error> {
    // 0.0.0.0 and :: stand for every address of their family, as in Docker.
    let wanted: BTreeSet<IpAddr> = specs
        .iter()
        .filter_map(|spec| spec.host_addr)
        .filter(|addr| !addr.is_unspecified())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    // A route lookup answers whether the host takes an address as its own; only an
    // address it does not (on an interface that is down, or IPv6 still in duplicate
    // address detection) is looked for among the host's addresses, as it always was.
    let mut local: Option<BTreeSet<IpAddr>> = None;
    for addr in wanted {
        if addr.is_loopback() {
            continue;
        }
        let route = match rtnetlink::route_to(addr) {
            Err(crate::netlink::NetlinkError::Kernel { .. }) => None,
            other => other.map_err(kernel)?,
        };
        if route.is_some_and(|route| route.kind == rtnetlink::RTN_LOCAL) {
            continue;
        }
        let local = match &mut local {
            Some(local) => local,
            None => local.insert(local_addresses()?),
        };
        if !local.contains(&addr) {
            return Err(Error::NotLocal(addr));
        }
    }
    Ok(())
}

/// The mappings `specs` ask for: a host-address spec in its address's family, a wildcard
/// spec in every family the target has. Refuses a host port asked for twice with two
/// targets.
pub fn mappings_for(
    resolved: &[Resolved],
    specs: &[PublishSpec],
    allow_direct: bool,
    on: Option<&str>,
) -> Result<Vec<Mapping>, Error> {
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut seen: HashMap<(&'static str, Vec<u8>), usize> = HashMap::new();
    for spec in specs {
        // 0.0.0.0 and :: publish on every address of their family only.
        let host_addr = spec.host_addr.filter(|addr| !addr.is_unspecified());
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
        // An identity range is one interval element; a shifted one is one element per
        // port (see `ranges_as_one`).
        // On an interface, every port is its own element (the interface-bound maps are
        // exact maps).
        let pairs: Vec<(u16, Option<u16>, u16)> = match ranges_as_one(spec) && on.is_none() {
            true => vec![(
                spec.host_ports.start,
                Some(spec.host_ports.end),
                spec.ns_ports.start,
            )],
            false => spec.port_pairs().map(|(h, t)| (h, None, t)).collect(),
        };
        // Sized once: a range of 10,000 ports would otherwise grow (and copy) the list a
        // dozen times.
        mappings.reserve(families.len() * pairs.len());
        for target in families {
            for &(host_port, host_port_end, to_port) in &pairs {
                let mapping = Mapping {
                    proto: spec.proto,
                    host_addr,
                    on: on.map(String::from),
                    host_port,
                    host_port_end,
                    to_addr: target.addr,
                    to_port,
                    via: target.via.name.clone(),
                    netns: target.netns.as_ref().map(|(name, _)| name.clone()),
                    netns_inode: target.netns.as_ref().map(|(_, inode)| *inode),
                    // Plain forwarding to a host given by address protects nothing of
                    // that host's: it may sit on a network nsport does not own.
                    allow_direct: allow_direct || target.netns.is_none(),
                    container: None,
                    container_ifname: None,
                    network: None,
                    allow_from: Vec::new(),
                };
                // One spec cannot name a host port twice; only several can.
                if specs.len() == 1 {
                    mappings.push(mapping);
                    continue;
                }
                match seen.get(&(mapping.set(), mapping.key())) {
                    Some(&first) if mappings[first] != mapping => {
                        return Err(Error::Duplicate {
                            spec: mapping.host_label(),
                            first: mappings[first].target_label(),
                            second: mapping.target_label(),
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
    // Ranges of several specs may overlap other ranges or single ports without sharing
    // a key.
    if specs.len() > 1
        && let Some((first, second)) = overlapping(&mappings)
    {
        return Err(Error::Duplicate {
            spec: second.host_label(),
            first: first.target_label(),
            second: second.target_label(),
        });
    }
    Ok(mappings)
}

/// Whether a spec's ports are published as one interval element: an identity range
/// (`20000-29999:20000-29999`) of more than one port. A shifted range stays one element per
/// port: nftables' NAT could shift ports only with NF_NAT_RANGE_PROTO_OFFSET, which `nft`
/// neither shows nor writes back, so `nft list ruleset` would misstate such a rule.
pub fn ranges_as_one(spec: &PublishSpec) -> bool {
    spec.host_ports == spec.ns_ports && spec.host_ports.end > spec.host_ports.start
}

/// Two different mappings of `mappings` that publish a host port in common, if any: sorted
/// by kind and first port, a clash is always between neighbours.
pub fn overlapping(mappings: &[Mapping]) -> Option<(&Mapping, &Mapping)> {
    let mut sorted: Vec<&Mapping> = mappings.iter().collect();
    sorted.sort_by_key(|m| (m.is_ipv6(), m.proto, m.host_addr, m.host_port));
    let mut last: Option<&Mapping> = None;
    for mapping in sorted {
        if let Some(previous) = last
            && previous.overlaps(mapping)
            && previous != mapping
        {
            return Some((previous, mapping));
        }
        // The one reaching furthest is the one a later mapping could clash with.
        if last.is_none_or(|previous| {
            !previous.is_same_kind(mapping)
                || previous.host_ports().end() < mapping.host_ports().end()
        }) {
            last = Some(mapping);
        }
    }
    None
}

/// The bridge port of a mapping's namespace, found through the namespace it records.
pub fn bridge_port_of(
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

/// Refuses a mapping whose host port a host socket holds, naming the socket's owner. Takes
/// the mappings by reference: `apply` checks the new ones among 50,000 without copying them.
pub fn check_host_ports<'a>(
    mappings: impl IntoIterator<Item = &'a Mapping> + Clone,
) -> Result<(), Error> {
    let sockets = HostSockets::read(mappings.clone())?;
    for mapping in mappings {
        if let Some(owner) = sockets.shadowed_by(mapping) {
            return Err(Error::HostPortInUse {
                host: mapping.host_label(),
                owner,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{check_netns_name, may_be_a_network_broadcast};

    /// Each refused name is told why: an empty `--netns=` used to be told that names
    /// starting with # are reserved.
    #[test]
    fn a_refused_namespace_name_says_why() {
        for (name, why) in [("", "empty"), ("#ab", "reserved"), ("a\0b", "NUL")] {
            let message = check_netns_name(name).unwrap_err().to_string();
            assert!(message.contains(why), "{name:?}: {message}");
        }
        assert!(check_netns_name("ns 1=a/b").is_ok());
    }
    use std::net::Ipv4Addr;

    /// The broadcast of the network of `addr` with a prefix of `len`.
    fn broadcast_of(addr: u32, len: u32) -> u32 {
        addr | (u32::MAX >> len)
    }

    #[test]
    fn only_an_address_ending_in_two_set_bits_can_be_a_networks_broadcast() {
        let samples = [
            0x0a58_0002u32,
            0xac11_0005,
            0xc0a8_0101,
            0x0a4d_0001,
            0xffff_fff0,
        ];
        for addr in samples {
            for len in 1..=30 {
                let broadcast = broadcast_of(addr, len);
                assert!(may_be_a_network_broadcast(Ipv4Addr::from(broadcast)));
            }
        }
        // And each address the check lets go is no network's broadcast, whatever its prefix.
        for low in 0..=255u32 {
            let addr = 0x0a58_0000 | low;
            let is_one = (1..=30).any(|len| broadcast_of(addr, len) == addr);
            assert_eq!(
                may_be_a_network_broadcast(Ipv4Addr::from(addr)),
                is_one,
                "{addr:#x}"
            );
        }
        assert!(!may_be_a_network_broadcast(Ipv4Addr::new(10, 88, 0, 2)));
    }
}
