//! Source allow-lists as set elements: `limited` holds the host ports (or spans of ports)
//! whose sources are limited, `allow4`/`allow6` the source prefix and port span pairs that
//! may use them. Both are interval sets, so a range and a prefix are one element each.
//!
//! Their keys lead with the field that picks the fewest elements (layout 4, see
//! `key_order`): `th dport . meta l4proto` and `ip saddr . th dport . meta l4proto`; layout
//! 3's, protocol first and source last, are read in their own order to be migrated.

use super::element::Element;
use super::key_order::{KeyOrder, WRITTEN};
use super::{SET_ALLOW4, SET_ALLOW6, SET_LIMITED, addr_bytes, addr_from};
use crate::model::{Mapping, SourcePrefix};
use crate::spec::Proto;

/// The elements of the source allow-lists `mappings` carry: one `limited` element per host
/// port (or range of ports) that has a list and one `allow4`/`allow6` element per prefix of
/// it, each once, in first-seen order. Mappings of one port have one list, and ports with a
/// list are never in two different spans (the engine refuses both).
pub fn allow_elements_for<'a>(mappings: impl IntoIterator<Item = &'a Mapping>) -> Vec<Element> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for mapping in mappings {
        let (proto, first, last) = mapping.port_span();
        if mapping.allow_from.is_empty() || !seen.insert((proto, first, last)) {
            continue;
        }
        out.push(Element::limited(proto, first, last));
        out.extend(
            mapping
                .allow_from
                .iter()
                .map(|source| Element::allow(proto, first, last, *source)),
        );
    }
    out
}

impl Mapping {
    /// The protocol and the first and last host port.
    pub fn port_span(&self) -> (Proto, u16, u16) {
        (
            self.proto,
            self.host_port,
            self.host_port_end.unwrap_or(self.host_port),
        )
    }
}

impl Element {
    /// Host ports `first..=last` whose sources are limited to a list.
    pub fn limited(proto: Proto, first: u16, last: u16) -> Element {
        Element {
            set: SET_LIMITED,
            key: WRITTEN.service(proto, first).to_vec(),
            key_end: Some(WRITTEN.service(proto, last).to_vec()),
            data: None,
            comment: None,
        }
    }

    /// A source prefix allowed to use limited host ports `first..=last`: the interval of
    /// its addresses and the interval of the ports.
    pub fn allow(proto: Proto, first: u16, last: u16, source: SourcePrefix) -> Element {
        Element {
            set: if source.is_ipv6() {
                SET_ALLOW6
            } else {
                SET_ALLOW4
            },
            key: [
                addr_bytes(source.first()),
                WRITTEN.service(proto, first).to_vec(),
            ]
            .concat(),
            key_end: Some(
                [
                    addr_bytes(source.last()),
                    WRITTEN.service(proto, last).to_vec(),
                ]
                .concat(),
            ),
            data: None,
            comment: None,
        }
    }

    /// What an element of `limited` written in `order` limits: the protocol and the ports.
    pub fn limited_ports(key: &[u8], key_end: &[u8], order: KeyOrder) -> Option<(Proto, u16, u16)> {
        if key.len() != 8 || key_end.len() != 8 {
            return None;
        }
        let (proto, first) = order.parse_service(key)?;
        let (end_proto, last) = order.parse_service(key_end)?;
        (proto == end_proto && first <= last).then_some((proto, first, last))
    }

    /// What an element of `allow4`/`allow6` written in `order` allows: the protocol, the
    /// ports and the source prefix.
    pub fn allowed(
        key: &[u8],
        key_end: &[u8],
        order: KeyOrder,
    ) -> Option<(Proto, u16, u16, SourcePrefix)> {
        if key.len() != key_end.len() || key.len() < 12 {
            return None;
        }
        let (service, addr) = match order {
            KeyOrder::ProtoFirst => (0..8, 8..key.len()),
            KeyOrder::PortFirst => (key.len() - 8..key.len(), 0..key.len() - 8),
        };
        let (proto, first, last) =
            Element::limited_ports(&key[service.clone()], &key_end[service], order)?;
        let prefix =
            SourcePrefix::from_range(addr_from(&key[addr.clone()])?, addr_from(&key_end[addr])?)?;
        Some((proto, first, last, prefix))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::ruleset::element::tests::mapping;

    #[test]
    fn allow_elements_are_intervals_that_read_back() {
        let mut limited = mapping(None);
        limited.allow_from = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let twin = Mapping {
            host_addr: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            ..limited.clone()
        };
        let elements = allow_elements_for([&limited, &twin, &mapping(None)]);
        assert_eq!(elements.len(), 3, "{elements:?}");
        assert_eq!(
            elements[0].nft_add(),
            "add element inet nsport limited { 5353 . udp }"
        );
        assert_eq!(elements[0].key, [0x14, 0xe9, 0, 0, 17, 0, 0, 0]);
        assert_eq!(
            elements[1].nft_add(),
            "add element inet nsport allow4 { 10.0.0.0/8 . 5353 . udp }"
        );
        assert_eq!(
            elements[1].key,
            [10, 0, 0, 0, 0x14, 0xe9, 0, 0, 17, 0, 0, 0]
        );
        assert_eq!(
            elements[1].key_end.as_deref(),
            Some(&[10, 255, 255, 255, 0x14, 0xe9, 0, 0, 17, 0, 0, 0][..])
        );
        assert_eq!(elements[2].set, SET_ALLOW6);
        let back = Element::allowed(
            &elements[2].key,
            elements[2].key_end.as_ref().unwrap(),
            WRITTEN,
        );
        assert_eq!(
            back,
            Some((Proto::Udp, 5353, 5353, "2001:db8::/32".parse().unwrap()))
        );
    }

    /// Layout 3's keys, as its tables hold them, read back in its order (to be migrated),
    /// and not taken for anything in the order written now.
    #[test]
    fn layout_3_keys_read_in_their_own_order() {
        let old = KeyOrder::of_layout(3);
        assert_eq!(old, KeyOrder::ProtoFirst);
        assert_eq!(KeyOrder::of_layout(crate::ruleset::LAYOUT), WRITTEN);
        // limited { tcp . 8000-8099 }
        let (key, end) = (
            [6, 0, 0, 0, 0x1f, 0x40, 0, 0],
            [6, 0, 0, 0, 0x1f, 0xa3, 0, 0],
        );
        assert_eq!(
            Element::limited_ports(&key, &end, old),
            Some((Proto::Tcp, 8000, 8099))
        );
        assert_eq!(Element::limited_ports(&key, &end, WRITTEN), None);
        // allow4 { tcp . 8080 . 192.0.2.0/24 }
        let key = [6, 0, 0, 0, 0x1f, 0x90, 0, 0, 192, 0, 2, 0];
        let end = [6, 0, 0, 0, 0x1f, 0x90, 0, 0, 192, 0, 2, 255];
        assert_eq!(
            Element::allowed(&key, &end, old),
            Some((Proto::Tcp, 8080, 8080, "192.0.2.0/24".parse().unwrap()))
        );
        assert_eq!(Element::allowed(&key, &end, WRITTEN), None);
        // Each element written now reads back as itself in the order written.
        let source: SourcePrefix = "192.0.2.0/24".parse().unwrap();
        let written = Element::allow(Proto::Tcp, 8000, 8099, source);
        assert_eq!(
            Element::allowed(&written.key, written.key_end.as_ref().unwrap(), WRITTEN),
            Some((Proto::Tcp, 8000, 8099, source))
        );
        let written = Element::limited(Proto::Udp, 53, 53);
        assert_eq!(
            Element::limited_ports(&written.key, written.key_end.as_ref().unwrap(), WRITTEN),
            Some((Proto::Udp, 53, 53))
        );
    }
}
