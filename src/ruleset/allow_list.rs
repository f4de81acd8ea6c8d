//! Source allow-lists as set elements: `limited` holds the host ports (or spans of ports)
//! whose sources are limited, `allow4`/`allow6` the port span and source prefix pairs that
//! may use them. Both are interval sets, so a range and a prefix are one element each.

use super::element::Element;
use super::{SET_ALLOW4, SET_ALLOW6, SET_LIMITED, addr_bytes, addr_from, host_key};
use crate::model::{Mapping, SourcePrefix};
use crate::spec::Proto;

/// `PROTO . PORT` or `PROTO . FIRST-LAST`, from the first 8 bytes of a key and its end.
pub(super) fn service_text(key: &[u8], end: Option<&[u8]>) -> String {
    if key.len() < 8 {
        return String::new();
    }
    let proto = Proto::from_number(key[0]).map_or("?".into(), |p| p.to_string());
    let first = u16::from_be_bytes([key[4], key[5]]);
    match end.filter(|end| end.len() >= 8) {
        Some(end) if end[4..6] != key[4..6] => {
            format!("{proto} . {first}-{}", u16::from_be_bytes([end[4], end[5]]))
        }
        _ => format!("{proto} . {first}"),
    }
}

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
            key: host_key(proto, None, first),
            key_end: Some(host_key(proto, None, last)),
            data: None,
            comment: None,
        }
    }

    /// A source prefix allowed to use limited host ports `first..=last`: the interval of
    /// the ports and the interval of its addresses.
    pub fn allow(proto: Proto, first: u16, last: u16, source: SourcePrefix) -> Element {
        Element {
            set: if source.is_ipv6() {
                SET_ALLOW6
            } else {
                SET_ALLOW4
            },
            key: [host_key(proto, None, first), addr_bytes(source.first())].concat(),
            key_end: Some([host_key(proto, None, last), addr_bytes(source.last())].concat()),
            data: None,
            comment: None,
        }
    }

    /// What an element of `limited` limits: the protocol and the ports.
    pub fn limited_ports(key: &[u8], key_end: &[u8]) -> Option<(Proto, u16, u16)> {
        if key.len() != 8 || key_end.len() != 8 || key[0] != key_end[0] {
            return None;
        }
        let proto = Proto::from_number(key[0])?;
        let first = u16::from_be_bytes([key[4], key[5]]);
        let last = u16::from_be_bytes([key_end[4], key_end[5]]);
        (first <= last).then_some((proto, first, last))
    }

    /// What an element of `allow4`/`allow6` allows: the protocol, the ports and the
    /// source prefix.
    pub fn allowed(key: &[u8], key_end: &[u8]) -> Option<(Proto, u16, u16, SourcePrefix)> {
        if key.len() != key_end.len() || key.len() < 12 {
            return None;
        }
        let (proto, first, last) = Element::limited_ports(&key[..8], &key_end[..8])?;
        let prefix = SourcePrefix::from_range(addr_from(&key[8..])?, addr_from(&key_end[8..])?)?;
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
            "add element inet nsport limited { udp . 5353 }"
        );
        assert_eq!(
            elements[1].nft_add(),
            "add element inet nsport allow4 { udp . 5353 . 10.0.0.0/8 }"
        );
        assert_eq!(
            elements[1].key,
            [17, 0, 0, 0, 0x14, 0xe9, 0, 0, 10, 0, 0, 0]
        );
        assert_eq!(
            elements[1].key_end.as_deref(),
            Some(&[17, 0, 0, 0, 0x14, 0xe9, 0, 0, 10, 255, 255, 255][..])
        );
        assert_eq!(elements[2].set, SET_ALLOW6);
        let back = Element::allowed(&elements[2].key, elements[2].key_end.as_ref().unwrap());
        assert_eq!(
            back,
            Some((Proto::Udp, 5353, 5353, "2001:db8::/32".parse().unwrap()))
        );
    }
}
