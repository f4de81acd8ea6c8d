//! Elements of the table's sets and maps: a mapping as a map element (key, data and the
//! comment that records where it came from) and the helper elements it needs.

use std::net::IpAddr;

use super::key_order::{self, KeyOrder, service_text};
use super::metadata::Metadata;
use super::{
    IFNAME_LEN, SET_ADDR4, SET_ADDR6, SET_ADDRRANGE4, SET_ADDRRANGE6, SET_ALLOW4, SET_ALLOW6,
    SET_ANY4, SET_ANY6, SET_CLOSED, SET_HAIRPIN4, SET_HAIRPIN6, SET_INSIDE, SET_LIMITED, SET_ON4,
    SET_ON6, SET_ONADDR4, SET_ONADDR6, SET_RANGE4, SET_RANGE6, SET_REACH4, SET_REACH6,
    SET_TARGETS4, SET_TARGETS6, TABLE, addr_bytes, addr_from, declarations::set_id, ifname_bytes,
    put_addr,
};
use crate::model::{Mapping, SourcePrefix};
use crate::spec::Proto;

/// How a mapping is stored as a map element.
impl Mapping {
    /// The map the mapping lives in: exact ports are hashed, ranges are intervals; a
    /// mapping on an interface is in the interface-bound maps (one element per port).
    pub fn set(&self) -> &'static str {
        if self.on.is_some() {
            return map_of(self.is_ipv6(), true, self.host_addr.is_some());
        }
        match (self.is_ipv6(), self.host_addr.is_some(), self.is_range()) {
            (false, false, false) => SET_ANY4,
            (false, true, false) => SET_ADDR4,
            (true, false, false) => SET_ANY6,
            (true, true, false) => SET_ADDR6,
            (false, false, true) => SET_RANGE4,
            (false, true, true) => SET_ADDRRANGE4,
            (true, false, true) => SET_RANGE6,
            (true, true, true) => SET_ADDRRANGE6,
        }
    }

    /// The map a range of this mapping's host side would be in (no range is bound to an
    /// interface): where a single port looks for the range that could hold it.
    pub fn range_set(&self) -> &'static str {
        match (self.is_ipv6(), self.host_addr.is_some()) {
            (false, false) => SET_RANGE4,
            (false, true) => SET_ADDRRANGE4,
            (true, false) => SET_RANGE6,
            (true, true) => SET_ADDRRANGE6,
        }
    }

    /// The map key: `[ip daddr .] meta l4proto . th dport`, each member padded to 4 bytes;
    /// for a range, `[ip daddr .] th dport . meta l4proto` of its first port
    /// (`host_key_in`).
    pub fn key(&self) -> Vec<u8> {
        host_key_in(
            self.set(),
            self.on.as_deref(),
            self.proto,
            self.host_addr,
            self.host_port,
        )
    }

    /// For a range, the key of its last port: the end of the interval.
    pub fn key_end(&self) -> Option<Vec<u8>> {
        let end = self.host_port_end?;
        Some(host_key_in(
            self.set(),
            self.on.as_deref(),
            self.proto,
            self.host_addr,
            end,
        ))
    }

    /// The map data: `ip . port` of the target; for an (identity) range only the address,
    /// so that the NAT keeps each connection's destination port.
    pub fn data(&self) -> Vec<u8> {
        // Sized once, as keys are (`host_key_on`).
        let mut data = Vec::with_capacity(20);
        put_addr(&mut data, self.to_addr);
        if !self.is_range() {
            data.extend_from_slice(&self.to_port.to_be_bytes());
            data.extend_from_slice(&[0, 0]);
        }
        data
    }

    /// The same host side: same map and key (`is_same_kind` and overlapping ports tells
    /// apart mappings that would clash).
    pub fn same_host_side(&self, other: &Mapping) -> bool {
        self.set() == other.set() && self.key() == other.key() && self.key_end() == other.key_end()
    }

    /// Whether the two publish host ports of the same kind (protocol, family, and host
    /// address or none), so that a port of both would be one of them too many.
    pub fn is_same_kind(&self, other: &Mapping) -> bool {
        self.proto == other.proto
            && self.host_addr == other.host_addr
            && self.on == other.on
            && self.is_ipv6() == other.is_ipv6()
    }

    /// Whether the two are of the same kind and publish a host port in common.
    pub fn overlaps(&self, other: &Mapping) -> bool {
        self.is_same_kind(other)
            && self.host_port <= *other.host_ports().end()
            && other.host_port <= *self.host_ports().end()
    }

    /// The element comment: readable in `nft list`, and how `ls` recovers `via` and the
    /// namespace, which the map data does not hold. Every name is encoded (`metadata`).
    pub fn comment(&self) -> String {
        self.metadata().to_comment()
    }

    pub(super) fn metadata(&self) -> Metadata {
        Metadata {
            via: self.via.clone(),
            netns: self.netns.clone(),
            netns_inode: self.netns_inode,
            allow_direct: self.allow_direct,
            container: self.container.clone(),
            container_ifname: self.container_ifname.clone(),
            network: self.network.clone(),
        }
    }

    /// The mapping as it reads back from the table: long names become their digests.
    /// Plans compare mappings in this form, so a mapping already in the table is not
    /// taken for a new one because its namespace's name was too long to record.
    pub fn as_recorded(&self) -> Mapping {
        self.clone().with_metadata(Metadata::parse(&self.comment()))
    }

    /// This mapping with `metadata` in place of its own. Taken apart whole, so that a
    /// field added to `Metadata` cannot be forgotten here.
    pub(super) fn with_metadata(self, metadata: Metadata) -> Mapping {
        let Metadata {
            via,
            netns,
            netns_inode,
            allow_direct,
            container,
            container_ifname,
            network,
        } = metadata;
        Mapping {
            via,
            netns,
            netns_inode,
            allow_direct,
            container,
            container_ifname,
            network,
            ..self
        }
    }

    /// Rebuilds a mapping from a map element (`key_end` empty but for a range's);
    /// `None` for an element nsport did not write.
    pub fn from_element(
        set: &str,
        key: &[u8],
        key_end: &[u8],
        data: &[u8],
        comment: Option<&str>,
    ) -> Option<Mapping> {
        Mapping::from_element_in(key_order::WRITTEN, set, key, key_end, data, comment)
    }

    /// The same for a table whose range maps' keys are in `order` (an older layout's).
    pub fn from_element_in(
        order: KeyOrder,
        set: &str,
        key: &[u8],
        key_end: &[u8],
        data: &[u8],
        comment: Option<&str>,
    ) -> Option<Mapping> {
        // A mapping on an interface: the interface's name, then the key of the map
        // without one.
        if let Some(plain) = without_interface(set) {
            let name = key.get(..IFNAME_LEN)?;
            let name = name.split(|b| *b == 0).next()?;
            let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty())?;
            let mut mapping =
                Mapping::from_element_in(order, plain, &key[IFNAME_LEN..], key_end, data, comment)?;
            mapping.on = Some(name.to_string());
            return Some(mapping);
        }
        let (addr_len, with_addr, range) = match set {
            SET_ANY4 => (4, false, false),
            SET_ADDR4 => (4, true, false),
            SET_ANY6 => (16, false, false),
            SET_ADDR6 => (16, true, false),
            SET_RANGE4 => (4, false, true),
            SET_ADDRRANGE4 => (4, true, true),
            SET_RANGE6 => (16, false, true),
            SET_ADDRRANGE6 => (16, true, true),
            _ => return None,
        };
        let prefix = if with_addr { addr_len } else { 0 };
        if key.len() != prefix + 8 {
            return None;
        }
        let host_addr = match with_addr {
            true => Some(addr_from(&key[..addr_len])?),
            false => None,
        };
        // The exact maps are hash tables and keep the protocol first in every layout.
        let order = if range { order } else { KeyOrder::ProtoFirst };
        let (proto, host_port) = order.parse_service(&key[prefix..])?;
        // A range's end differs from its start in the port only.
        let host_port_end = match range {
            true if key_end.len() == key.len() && key_end[..prefix] == key[..prefix] => {
                let (end_proto, end) = order.parse_service(&key_end[prefix..])?;
                // An interval nsport did not write may end before it starts.
                Some(Some(end).filter(|end| *end >= host_port && end_proto == proto)?)
            }
            true => return None,
            false => None,
        };
        let to_port = match range {
            true if data.len() == addr_len => host_port,
            false if data.len() == addr_len + 4 => {
                u16::from_be_bytes([data[addr_len], data[addr_len + 1]])
            }
            _ => return None,
        };
        let metadata = Metadata::parse(comment.unwrap_or_default());
        Some(Mapping {
            proto,
            host_addr,
            on: None,
            host_port,
            host_port_end,
            to_addr: addr_from(&data[..addr_len])?,
            to_port,
            via: metadata.via,
            netns: metadata.netns,
            netns_inode: metadata.netns_inode,
            allow_direct: metadata.allow_direct,
            container: metadata.container,
            container_ifname: metadata.container_ifname,
            network: metadata.network,
            allow_from: Vec::new(),
        })
    }
}

/// The key of a host port in map `set`: a range map's puts the port before the protocol
/// (`[ip daddr .] th dport . meta l4proto`, see `key_order`), an exact map's the protocol
/// first (`host_key_on`). No range is bound to an interface.
pub fn host_key_in(
    set: &str,
    on: Option<&str>,
    proto: Proto,
    host_addr: Option<IpAddr>,
    port: u16,
) -> Vec<u8> {
    if !is_range_set(set) {
        return host_key_on(on, proto, host_addr, port);
    }
    let mut key = Vec::with_capacity(16 + 8);
    if let Some(addr) = host_addr {
        put_addr(&mut key, addr);
    }
    key.extend_from_slice(&key_order::WRITTEN.service(proto, port));
    key
}

/// The map key of a host side in an exact map: `[ip daddr .] meta l4proto . th dport`,
/// each member padded to 4 bytes.
pub fn host_key(proto: Proto, host_addr: Option<IpAddr>, port: u16) -> Vec<u8> {
    host_key_on(None, proto, host_addr, port)
}

/// The same on an interface: `[iifname .] [ip daddr .] meta l4proto . th dport`, the name
/// NUL-padded to `IFNAMSIZ`.
pub fn host_key_on(
    on: Option<&str>,
    proto: Proto,
    host_addr: Option<IpAddr>,
    port: u16,
) -> Vec<u8> {
    // Sized once: a range of 10,000 ports builds as many keys, and growing each from
    // nothing would allocate it up to four times.
    let mut key = Vec::with_capacity(IFNAME_LEN + 16 + 8);
    if let Some(name) = on {
        key.extend_from_slice(&ifname_bytes(name));
    }
    if let Some(addr) = host_addr {
        put_addr(&mut key, addr);
    }
    key.extend_from_slice(&[proto.number(), 0, 0, 0]);
    key.extend_from_slice(&port.to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

/// The exact-port map of a family that holds host sides with or without an interface and
/// an address.
pub fn map_of(ipv6: bool, on: bool, addr: bool) -> &'static str {
    match (ipv6, on, addr) {
        (false, false, false) => SET_ANY4,
        (false, false, true) => SET_ADDR4,
        (false, true, false) => SET_ON4,
        (false, true, true) => SET_ONADDR4,
        (true, false, false) => SET_ANY6,
        (true, false, true) => SET_ADDR6,
        (true, true, false) => SET_ON6,
        (true, true, true) => SET_ONADDR6,
    }
}

/// The map without an interface whose keys an interface-bound map's keys continue.
fn without_interface(set: &str) -> Option<&'static str> {
    match set {
        SET_ON4 => Some(SET_ANY4),
        SET_ONADDR4 => Some(SET_ADDR4),
        SET_ON6 => Some(SET_ANY6),
        SET_ONADDR6 => Some(SET_ADDR6),
        _ => None,
    }
}

/// The interface-bound maps a host side can be in (`rm --on`): exact ports only.
pub fn host_sets_on(on: bool, host_addr: Option<IpAddr>) -> &'static [&'static str] {
    match (on, host_addr) {
        (false, _) => host_sets(host_addr),
        (true, None) => &[SET_ON4, SET_ON6],
        (true, Some(addr)) if addr.is_unspecified() && addr.is_ipv4() => &[SET_ON4],
        (true, Some(addr)) if addr.is_unspecified() => &[SET_ON6],
        (true, Some(IpAddr::V4(_))) => &[SET_ONADDR4],
        (true, Some(IpAddr::V6(_))) => &[SET_ONADDR6],
    }
}

/// The maps a host side can be in: both families' any-address maps for a wildcard (one
/// family's for `0.0.0.0` or `::`), the one-address maps of the address's family otherwise;
/// each the exact map and the range map.
pub fn host_sets(host_addr: Option<IpAddr>) -> &'static [&'static str] {
    match host_addr {
        None => &[SET_ANY4, SET_RANGE4, SET_ANY6, SET_RANGE6],
        Some(addr) if addr.is_unspecified() && addr.is_ipv4() => &[SET_ANY4, SET_RANGE4],
        Some(addr) if addr.is_unspecified() => &[SET_ANY6, SET_RANGE6],
        Some(IpAddr::V4(_)) => &[SET_ADDR4, SET_ADDRRANGE4],
        Some(IpAddr::V6(_)) => &[SET_ADDR6, SET_ADDRRANGE6],
    }
}

/// Whether a map is an interval map, whose elements are ranges of ports.
pub fn is_range_set(set: &str) -> bool {
    matches!(
        set,
        SET_RANGE4 | SET_ADDRRANGE4 | SET_RANGE6 | SET_ADDRRANGE6
    )
}

impl Mapping {
    /// Whether it is in map `set` and publishes the host side `key` (`host_key_in`).
    pub fn holds(&self, set: &str, key: &[u8]) -> bool {
        if self.set() != set {
            return false;
        }
        if !self.is_range() {
            return self.key() == key;
        }
        // The address and the protocol are the range's, the port inside it.
        let Some(at) = key.len().checked_sub(8) else {
            return false;
        };
        let service = key_order::WRITTEN.parse_service(&key[at..]);
        key.len() == self.key().len()
            && key[..at] == self.key()[..at]
            && service.is_some_and(|(proto, port)| {
                proto == self.proto && self.host_ports().contains(&port)
            })
    }
}

/// One element to add to or delete from a set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    pub set: &'static str,
    pub key: Vec<u8>,
    /// The last key of an interval, in a set of intervals (`flags interval`).
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
}

impl Element {
    pub fn mapping(mapping: &Mapping) -> Element {
        Element::mapping_with_comment(mapping, mapping.comment())
    }

    /// The same with the comment given: many mappings of one publish share it, and
    /// formatting it once per element is most of the cost of a large range.
    pub fn mapping_with_comment(mapping: &Mapping, comment: String) -> Element {
        Element {
            set: mapping.set(),
            key: mapping.key(),
            key_end: mapping.key_end(),
            data: Some(mapping.data()),
            comment: Some(comment),
        }
    }

    /// `via . target`: the target may be reached from the interface it sits behind, and
    /// clients from there are masqueraded so that its replies come back through the host.
    pub fn reach(via: &str, target: IpAddr) -> Element {
        Element {
            set: if target.is_ipv6() {
                SET_REACH6
            } else {
                SET_REACH4
            },
            key: [ifname_bytes(via).as_slice(), &addr_bytes(target)].concat(),
            key_end: None,
            data: None,
            comment: None,
        }
    }

    /// An interface toward published namespaces.
    pub fn inside(via: &str) -> Element {
        Element {
            set: SET_INSIDE,
            key: ifname_bytes(via).to_vec(),
            key_end: None,
            data: None,
            comment: None,
        }
    }

    /// A family whose forwarding nsport turned on.
    pub fn closed(ipv6: bool) -> Element {
        const NFPROTO_IPV4: u8 = 2;
        const NFPROTO_IPV6: u8 = 10;
        Element {
            set: SET_CLOSED,
            key: vec![if ipv6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }],
            key_end: None,
            data: None,
            comment: None,
        }
    }

    /// The key as nft writes it, read back from its bytes.
    fn key_text(&self) -> String {
        match self.set {
            SET_INSIDE => {
                let name = self.key.split(|b| *b == 0).next().unwrap_or_default();
                format!("{:?}", String::from_utf8_lossy(name))
            }
            SET_CLOSED => match self.key.first() {
                Some(10) => "ipv6".to_string(),
                _ => "ipv4".to_string(),
            },
            SET_REACH4 | SET_REACH6 => {
                let (name, addr) = self.key.split_at(IFNAME_LEN.min(self.key.len()));
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                let addr = addr_from(addr).map(|a| a.to_string()).unwrap_or_default();
                format!("{:?} . {addr}", String::from_utf8_lossy(name))
            }
            SET_HAIRPIN4 | SET_HAIRPIN6 => match addr_from(&self.key[..self.key.len() / 2]) {
                Some(addr) => format!("{addr} . {addr}"),
                None => String::new(),
            },
            SET_TARGETS4 | SET_TARGETS6 => addr_from(&self.key)
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
            SET_LIMITED => service_text(&self.key, self.key_end.as_deref()),
            // `SOURCE . PORT . PROTO`: the source's bytes, then the service's 8.
            SET_ALLOW4 | SET_ALLOW6 => {
                let end = self.key_end.as_deref().unwrap_or(&self.key);
                let at = self.key.len().saturating_sub(8);
                let source = SourcePrefix::from_range(
                    addr_from(&self.key[..at]).unwrap_or(IpAddr::from([0u8; 4])),
                    addr_from(&end[..at.min(end.len())]).unwrap_or(IpAddr::from([0u8; 4])),
                );
                let source = source.map(|p| p.to_string()).unwrap_or_default();
                let end_service = end.get(at..).unwrap_or_default();
                format!(
                    "{source} . {}",
                    service_text(&self.key[at..], Some(end_service))
                )
            }
            // A map key: `[IFNAME . ][ADDR . ]PROTO . PORT`, the service in its last 8
            // bytes; an interval's `PORT-PORT`.
            _ => {
                let (on, key) = match without_interface(self.set) {
                    Some(_) => {
                        let (name, rest) = self.key.split_at(IFNAME_LEN.min(self.key.len()));
                        let name = name.split(|b| *b == 0).next().unwrap_or_default();
                        (format!("{:?} . ", String::from_utf8_lossy(name)), rest)
                    }
                    None => (String::new(), self.key.as_slice()),
                };
                let cut = key.len().saturating_sub(8);
                let (host, service) = key.split_at(cut);
                let host = addr_from(host)
                    .map(|addr| format!("{addr} . "))
                    .unwrap_or_default();
                // A range map's key: `[ADDR . ]PORT-PORT . PROTO` (`key_order`).
                if is_range_set(self.set) {
                    let end = self.key_end.as_deref().and_then(|end| end.get(cut..));
                    return format!("{on}{host}{}", service_text(service, end));
                }
                let proto = Proto::from_number(service[0]).map_or("?".into(), |p| p.to_string());
                let port = u16::from_be_bytes([service[4], service[5]]);
                match self
                    .key_end
                    .as_deref()
                    .and_then(|end| end.get(cut + 4..cut + 6))
                {
                    Some(end) => {
                        let end = u16::from_be_bytes([end[0], end[1]]);
                        format!("{on}{host}{proto} . {port}-{end}")
                    }
                    None => format!("{on}{host}{proto} . {port}"),
                }
            }
        }
    }

    /// The map data as nft writes it: `ADDR . PORT`, or `ADDR` alone.
    fn data_text(&self) -> Option<String> {
        let data = self.data.as_ref()?;
        if matches!(data.len(), 4 | 16) {
            return addr_from(data).map(|addr| addr.to_string());
        }
        let (addr, port) = data.split_at(data.len() - 4);
        let port = u16::from_be_bytes([port[0], port[1]]);
        Some(format!("{} . {port}", addr_from(addr)?))
    }

    /// The element of a helper set (reach, hairpin or targets) with this key.
    pub fn helper(set: &str, key: &[u8]) -> Option<Element> {
        let half = key.len() / 2;
        match set {
            SET_INSIDE => {
                let name = key.split(|b| *b == 0).next()?;
                Some(Element::inside(std::str::from_utf8(name).ok()?))
            }
            SET_REACH4 | SET_REACH6 if key.len() > IFNAME_LEN => {
                let (name, addr) = key.split_at(IFNAME_LEN);
                let name = name.split(|b| *b == 0).next()?;
                Some(Element::reach(
                    std::str::from_utf8(name).ok()?,
                    addr_from(addr)?,
                ))
            }
            SET_HAIRPIN4 | SET_HAIRPIN6 => Some(Element::hairpin(addr_from(&key[..half])?)),
            SET_TARGETS4 | SET_TARGETS6 => Some(Element::target(addr_from(key)?)),
            _ => None,
        }
    }

    /// `add element inet nsport SET { KEY [comment "…"] [: DATA] }`
    pub fn nft_add(&self) -> String {
        let comment = self
            .comment
            .as_ref()
            .map(|c| format!(" comment {c:?}"))
            .unwrap_or_default();
        let data = self
            .data_text()
            .map(|d| format!(" : {d}"))
            .unwrap_or_default();
        format!(
            "add element inet {TABLE} {} {{ {}{comment}{data} }}",
            self.set,
            self.key_text()
        )
    }

    /// `delete element inet nsport SET { KEY }`
    pub fn nft_delete(&self) -> String {
        format!(
            "delete element inet {TABLE} {} {{ {} }}",
            self.set,
            self.key_text()
        )
    }

    /// A target protected from direct access.
    pub fn target(target: IpAddr) -> Element {
        Element {
            set: if target.is_ipv6() {
                SET_TARGETS6
            } else {
                SET_TARGETS4
            },
            key: addr_bytes(target),
            key_end: None,
            data: None,
            comment: None,
        }
    }

    /// `target . target`: the namespace reaching its own published port.
    pub fn hairpin(target: IpAddr) -> Element {
        Element {
            set: if target.is_ipv6() {
                SET_HAIRPIN6
            } else {
                SET_HAIRPIN4
            },
            key: [addr_bytes(target), addr_bytes(target)].concat(),
            key_end: None,
            data: None,
            comment: None,
        }
    }

    pub fn set_id(&self) -> u32 {
        set_id(self.set)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    pub(in crate::ruleset) fn mapping(host_addr: Option<Ipv4Addr>) -> Mapping {
        Mapping {
            proto: Proto::Udp,
            host_addr: host_addr.map(IpAddr::V4),
            host_port: 5353,
            to_addr: IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2)),
            to_port: 53,
            netns: Some("ns1".into()),
            netns_inode: Some(4026532000),
            ..Mapping::example()
        }
    }

    #[test]
    fn keys_are_padded_big_endian_concatenations() {
        let any = mapping(None);
        assert_eq!(any.key(), [17, 0, 0, 0, 0x14, 0xe9, 0, 0]);
        assert_eq!(any.data(), [172, 18, 0, 2, 0, 53, 0, 0]);
        let one = mapping(Some(Ipv4Addr::LOCALHOST));
        assert_eq!(one.key(), [127, 0, 0, 1, 17, 0, 0, 0, 0x14, 0xe9, 0, 0]);
    }

    fn mapping6(host_addr: Option<&str>) -> Mapping {
        Mapping {
            host_addr: host_addr.map(|a| a.parse().unwrap()),
            to_addr: "2001:db8:1::2".parse().unwrap(),
            ..mapping(None)
        }
    }

    #[test]
    fn ipv6_keys_and_data() {
        let one = mapping6(Some("2001:db8::1"));
        assert_eq!(one.set(), SET_ADDR6);
        assert_eq!(one.key().len(), 24);
        assert_eq!(one.data().len(), 20);
        assert_eq!(one.data()[16..18], 53u16.to_be_bytes());
        assert_eq!(mapping6(None).set(), SET_ANY6);
        assert!(!mapping6(None).serves_loopback());
    }

    /// A mapping of each host side a single port can have without an interface: any
    /// address or one, in each family.
    fn host_sides() -> [Mapping; 4] {
        [
            mapping(None),
            mapping(Some(Ipv4Addr::new(192, 0, 2, 1))),
            mapping6(None),
            mapping6(Some("2001:db8::1")),
        ]
    }

    #[test]
    fn a_single_ports_range_set_is_the_set_of_its_range() {
        for single in host_sides() {
            let range = Mapping {
                host_port_end: Some(single.host_port + 9),
                ..single.clone()
            };
            assert!(range.is_range());
            assert_eq!(single.range_set(), range.set(), "{single:?}");
        }
    }

    #[test]
    fn elements_round_trip_to_mappings() {
        for original in host_sides() {
            let element = Element::mapping(&original);
            let back = Mapping::from_element(
                element.set,
                &element.key,
                element.key_end.as_deref().unwrap_or_default(),
                element.data.as_deref().unwrap(),
                element.comment.as_deref(),
            );
            assert_eq!(back, Some(original));
        }
    }

    #[test]
    fn interface_bound_keys_round_trip() {
        let on = |addr: Option<&str>, v6: bool| Mapping {
            on: Some("eth0".into()),
            host_addr: addr.map(|a| a.parse().unwrap()),
            ..if v6 { mapping6(None) } else { mapping(None) }
        };
        let plain = on(None, false);
        assert_eq!(plain.set(), SET_ON4);
        assert_eq!(plain.key().len(), 24);
        assert_eq!(&plain.key()[..5], b"eth0\0");
        assert_eq!(on(Some("192.0.2.1"), false).set(), SET_ONADDR4);
        assert_eq!(on(Some("192.0.2.1"), false).key().len(), 28);
        assert_eq!(on(None, true).set(), SET_ON6);
        assert_eq!(on(Some("2001:db8::1"), true).set(), SET_ONADDR6);
        assert_eq!(on(Some("2001:db8::1"), true).key().len(), 40);
        for original in [
            plain,
            on(Some("192.0.2.1"), false),
            on(None, true),
            on(Some("2001:db8::1"), true),
        ] {
            let element = Element::mapping(&original);
            let back = Mapping::from_element(
                element.set,
                &element.key,
                &[],
                element.data.as_deref().unwrap(),
                element.comment.as_deref(),
            );
            assert_eq!(back, Some(original));
        }
        assert_eq!(
            Element::mapping(&on(Some("192.0.2.1"), false)).nft_add(),
            "add element inet nsport onaddr4 { \"eth0\" . 192.0.2.1 . udp . 5353 \
             comment \"via=br0 netns=ns1 ino=4026532000\" : 172.18.0.2 . 53 }"
        );
    }

    #[test]
    fn foreign_elements_are_ignored() {
        assert_eq!(
            Mapping::from_element(SET_ANY4, &[6, 0, 0, 0], &[], &[0; 8], None),
            None
        );
        assert_eq!(
            Mapping::from_element(SET_ANY4, &[1, 0, 0, 0, 0, 80, 0, 0], &[], &[0; 8], None),
            None
        );
    }

    #[test]
    fn loopback_service() {
        assert!(mapping(None).serves_loopback());
        assert!(mapping(Some(Ipv4Addr::LOCALHOST)).serves_loopback());
        assert!(!mapping(Some(Ipv4Addr::new(192, 0, 2, 1))).serves_loopback());
    }
}
