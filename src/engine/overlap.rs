//! Docker's overlap rule: two mappings whose host sides could match the same packet
//! conflict, as two sockets bound to the same port would. A mapping's host side is a port
//! and protocol in one family, narrowed by an address, an interface, both, or neither;
//! two of them overlap when every narrowing they both have agrees (the wildcard overlaps
//! everything, `--on eth0` overlaps an address-only mapping because the address may be on
//! eth0, two interfaces never overlap). Published anyway (`--force`), the more specific
//! one wins where they overlap, in the order `publish` looks the maps up: an interface and
//! an address, an interface, an address, any.
//!
//! The check reads little: a new mapping's candidates are found by getting the exact keys
//! that could hold one in the other maps, and only the maps of narrower host sides (few in
//! practice) are dumped whole, once per try.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};

use super::kernel::Kernel;
use super::table::mapping_of;
use crate::error::{Error, kernel};
use crate::ruleset::{
    Mapping, SET_ADDR4, SET_ADDR6, SET_ADDRRANGE4, SET_ADDRRANGE6, SET_ANY4, SET_ANY6, SET_ON4,
    SET_ON6, SET_ONADDR4, SET_ONADDR6, SET_RANGE4, SET_RANGE6, host_key_on,
};

/// The error that names the mapping `wanted` overlaps: its host side, its target and,
/// for the CNI plugin's, its container.
pub fn refused(wanted: &Mapping, holder: &Mapping) -> Error {
    let mut existing = holder.target_label();
    if let Some(id) = &holder.container {
        existing.push_str(&format!(" for container {id}"));
    }
    Error::Overlap {
        host: wanted.host_label(),
        holder: holder.host_label(),
        existing,
    }
}

/// A host port's family, protocol and number as one key of `ByPort`.
fn port_key(mapping: &Mapping, port: u16) -> u32 {
    u32::from(mapping.is_ipv6()) << 24 | u32::from(mapping.proto.number()) << 16 | u32::from(port)
}

/// The hash of a `port_key`: a multiply that spreads it over every bit, its high half
/// folded into the low one that picks the bucket. The keys are at most 2^25 small numbers,
/// so SipHash's defence against chosen keys buys nothing here, and it cost a range of
/// 10,000 ports 9 million instructions.
#[derive(Default)]
struct PortHasher(u64);

impl Hasher for PortHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0 << 8 | u64::from(*byte);
        }
    }

    fn write_u32(&mut self, key: u32) {
        self.0 = u64::from(key);
    }

    fn finish(&self) -> u64 {
        let spread = (self.0 ^ 0x5851_F42D_4C95_7F2D).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        spread ^ spread >> 32
    }
}

type PortMap<V> = HashMap<u32, V, BuildHasherDefault<PortHasher>>;

/// Mappings by port, protocol and family, where overlaps can be: single ports by port,
/// ranges (few) searched. A port's first mapping is kept apart from any others of it
/// (other addresses, interfaces), which are few: a list for each port would be an
/// allocation for each of a range's 10,000 ports.
#[derive(Default)]
pub struct ByPort<'a> {
    first: PortMap<&'a Mapping>,
    more: PortMap<Vec<&'a Mapping>>,
    ranges: Vec<&'a Mapping>,
}

impl<'a> ByPort<'a> {
    pub fn new(mappings: impl IntoIterator<Item = &'a Mapping>) -> ByPort<'a> {
        let mut by_port = ByPort::default();
        for mapping in mappings {
            by_port.insert(mapping);
        }
        by_port
    }

    pub fn insert(&mut self, mapping: &'a Mapping) {
        if mapping.is_range() {
            self.ranges.push(mapping);
            return;
        }
        let key = port_key(mapping, mapping.host_port);
        match self.first.entry(key) {
            Entry::Vacant(vacant) => {
                vacant.insert(mapping);
            }
            Entry::Occupied(_) => self.more.entry(key).or_default().push(mapping),
        }
    }

    /// The mappings that overlap `mapping`.
    pub fn overlapping<'s>(
        &'s self,
        mapping: &'s Mapping,
    ) -> impl Iterator<Item = &'a Mapping> + 's {
        let singles = mapping.host_ports().flat_map(move |port| {
            let key = port_key(mapping, port);
            let more = self.more.get(&key).into_iter().flatten();
            self.first.get(&key).into_iter().chain(more).copied()
        });
        singles
            .chain(self.ranges.iter().copied())
            .filter(move |other| mapping.overlaps_as_sockets(other))
    }
}

/// Refuses the first of `wanted` that overlaps one of `others` or an earlier one of
/// `wanted`, naming the mapping it overlaps.
pub fn check(others: &[Mapping], wanted: &[Mapping]) -> Result<(), Error> {
    let mut by_port = ByPort::new(others);
    by_port.first.reserve(wanted.len());
    for mapping in wanted {
        if let Some(holder) = by_port.overlapping(mapping).next() {
            return Err(refused(mapping, holder));
        }
        by_port.insert(mapping);
    }
    Ok(())
}

/// For each mapping, the mappings that take part of its traffic (more specific ones that
/// overlap it) and those it takes part of the traffic of: what `ls` shows of mappings
/// published over each other with `--force`.
pub fn shadowing(mappings: &[Mapping]) -> Vec<(Vec<&Mapping>, Vec<&Mapping>)> {
    let by_port = ByPort::new(mappings);
    mappings
        .iter()
        .map(|mapping| {
            let (mut by, mut over) = (Vec::new(), Vec::new());
            for other in by_port.overlapping(mapping) {
                match other.rank() > mapping.rank() {
                    true => by.push(other),
                    false => over.push(other),
                }
            }
            (by, over)
        })
        .collect()
}

/// The maps that hold mappings, each with the shape of its host sides: whether they are
/// IPv6, bound to an interface, narrowed to an address, and ranges.
const MAPS: [(&str, bool, bool, bool, bool); 12] = [
    (SET_ANY4, false, false, false, false),
    (SET_ADDR4, false, false, true, false),
    (SET_ON4, false, true, false, false),
    (SET_ONADDR4, false, true, true, false),
    (SET_RANGE4, false, false, false, true),
    (SET_ADDRRANGE4, false, false, true, true),
    (SET_ANY6, true, false, false, false),
    (SET_ADDR6, true, false, true, false),
    (SET_ON6, true, true, false, false),
    (SET_ONADDR6, true, true, true, false),
    (SET_RANGE6, true, false, false, true),
    (SET_ADDRRANGE6, true, false, true, true),
];

/// A mapping in the table that overlaps one of `wanted`, with that one, read at the
/// generation the caller read. A single port meets a wider host side of an exact map in
/// one exact key, which is got; every other map it could meet (narrower host sides, and
/// ranges) is dumped, each once, and searched. A wildcard publish thus reads only the
/// maps of specific addresses, interfaces and ranges, whatever the number of wildcards; a
/// map `may_hold` says is empty is not read at all.
pub fn in_table(
    kernel: &mut impl Kernel,
    wanted: &[Mapping],
    may_hold: &dyn Fn(&str) -> bool,
) -> Result<Option<(Mapping, Mapping)>, Error> {
    let mut dumped: HashMap<&'static str, Vec<Mapping>> = HashMap::new();
    for mapping in wanted {
        let (on, addr) = (mapping.on.is_some(), mapping.host_addr.is_some());
        for &(set, v6, set_on, set_addr, range) in &MAPS {
            // Another family, or the same shape (a clash of its own, not an overlap).
            if v6 != mapping.is_ipv6() || (set_on == on && set_addr == addr) || !may_hold(set) {
                continue;
            }
            let wider = (!set_on || on) && (!set_addr || addr);
            if wider && !range && !mapping.is_range() {
                let key = host_key_on(
                    mapping.on.as_deref().filter(|_| set_on),
                    mapping.proto,
                    mapping.host_addr.filter(|_| set_addr),
                    mapping.host_port,
                );
                let element = kernel.element(set, &key).map_err(kernel_error)?;
                if let Some(holder) = element.and_then(|e| mapping_of(set, &e)) {
                    return Ok(Some((mapping.clone(), holder)));
                }
                continue;
            }
            if !dumped.contains_key(set) {
                let elements = kernel.elements(set).map_err(kernel_error)?;
                let mappings = elements.iter().filter_map(|e| mapping_of(set, e)).collect();
                dumped.insert(set, mappings);
            }
            if let Some(holder) = dumped[set]
                .iter()
                .find(|other| mapping.overlaps_as_sockets(other))
            {
                return Ok(Some((mapping.clone(), holder.clone())));
            }
        }
    }
    Ok(None)
}

fn kernel_error(error: crate::netlink::NetlinkError) -> Error {
    kernel(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Proto;

    fn side(on: Option<&str>, addr: Option<&str>, port: u16) -> Mapping {
        Mapping {
            proto: Proto::Tcp,
            host_addr: addr.map(|a| a.parse().unwrap()),
            on: on.map(String::from),
            host_port: port,
            host_port_end: None,
            to_addr: if addr.is_some_and(|a| a.contains(':')) {
                "2001:db8:1::2".parse().unwrap()
            } else {
                "172.18.0.2".parse().unwrap()
            },
            to_port: 80,
            via: "br0".into(),
            netns: Some("ns1".into()),
            netns_inode: None,
            allow_direct: false,
            container: None,
            container_ifname: None,
            network: None,
            allow_from: Vec::new(),
        }
    }

    #[test]
    fn the_rule_of_two_sockets() {
        let any = side(None, None, 8080);
        let lo = side(None, Some("127.0.0.1"), 8080);
        let other_addr = side(None, Some("192.0.2.1"), 8080);
        let eth0 = side(Some("eth0"), None, 8080);
        let eth1 = side(Some("eth1"), None, 8080);
        let eth0_addr = side(Some("eth0"), Some("192.0.2.1"), 8080);
        let eth1_addr = side(Some("eth1"), Some("192.0.2.1"), 8080);
        let eth0_other = side(Some("eth0"), Some("198.51.100.1"), 8080);
        // Docker's case: the wildcard and one address.
        assert!(any.overlaps_as_sockets(&lo) && lo.overlaps_as_sockets(&any));
        // The wildcard overlaps every narrower host side.
        for narrower in [&eth0, &eth0_addr] {
            assert!(any.overlaps_as_sockets(narrower));
        }
        // Two addresses, two interfaces: distinct sockets.
        assert!(!lo.overlaps_as_sockets(&other_addr));
        assert!(!eth0.overlaps_as_sockets(&eth1));
        assert!(!eth0_addr.overlaps_as_sockets(&eth1_addr));
        // An interface and an address: the address may be on the interface.
        assert!(eth0.overlaps_as_sockets(&lo));
        // An interface and the same interface with an address.
        assert!(eth0.overlaps_as_sockets(&eth0_addr));
        assert!(!eth1.overlaps_as_sockets(&eth0_addr));
        // An address alone and an interface with that address, not another.
        assert!(other_addr.overlaps_as_sockets(&eth0_addr));
        assert!(!other_addr.overlaps_as_sockets(&eth0_other));
        // One host side is not an overlap with itself (that is a conflict of its own).
        assert!(!any.overlaps_as_sockets(&any.clone()));
        // Other ports, protocols and families never overlap.
        assert!(!any.overlaps_as_sockets(&side(None, Some("127.0.0.1"), 8081)));
        let mut udp = lo.clone();
        udp.proto = Proto::Udp;
        assert!(!any.overlaps_as_sockets(&udp));
        assert!(!side(None, Some("2001:db8::1"), 8080).overlaps_as_sockets(&any));
        // The more specific wins: interface and address, interface, address, any.
        let ranks = [&eth0_addr, &eth0, &lo, &any].map(Mapping::rank);
        assert!(ranks.windows(2).all(|pair| pair[0] > pair[1]), "{ranks:?}");
    }

    #[test]
    fn check_names_the_holder_in_either_order() {
        let any = side(None, None, 8080);
        let lo = side(None, Some("127.0.0.1"), 8080);
        for (held, wanted) in [(&any, &lo), (&lo, &any)] {
            let error = check(std::slice::from_ref(held), std::slice::from_ref(wanted))
                .unwrap_err()
                .to_string();
            assert!(error.contains(&held.host_label()), "{error}");
            assert!(error.contains(&wanted.host_label()), "{error}");
            assert!(error.contains("172.18.0.2:80"), "{error}");
        }
        // Within what one command asks for, too.
        assert!(check(&[], &[any.clone(), lo.clone()]).is_err());
        assert!(check(&[], &[lo.clone(), side(None, Some("192.0.2.1"), 8080)]).is_ok());
    }

    #[test]
    fn shadowing_says_who_takes_whose_traffic() {
        let any = side(None, None, 8080);
        let lo = side(None, Some("127.0.0.1"), 8080);
        let eth0 = side(Some("eth0"), None, 8080);
        let all = [any.clone(), lo.clone(), eth0.clone()];
        let shadows = shadowing(&all);
        assert_eq!(shadows[0].0, [&lo, &eth0]);
        assert!(shadows[0].1.is_empty());
        assert_eq!(shadows[1].0, [&eth0]);
        assert_eq!(shadows[1].1, [&any]);
        assert!(shadows[2].0.is_empty());
        assert_eq!(shadows[2].1, [&any, &lo]);
    }
}
