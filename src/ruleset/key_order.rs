//! The order of the protocol and the port in the keys of the table's sets of intervals:
//! the range maps (`range4`, `addrrange4`, `range6`, `addrrange6`) and the allow-lists
//! (`limited`, `allow4`, `allow6`).
//!
//! The kernel keeps a set of intervals keyed by a concatenation as a pipapo table. Its
//! lookup narrows the candidates field by field, and between two fields it walks every
//! element still matching. Led by the protocol, which nearly every element shares, a
//! lookup walked all the ranges of the protocol (100 ranges: 0.4 µs a lookup, once per
//! packet of a connection through one, in the counting chains) and all the prefixes of a
//! port's allow-list (1,000 prefixes: 4–5 µs a new connection). Layout 4 puts the port
//! before the protocol, and in the allow-lists the source before both, so that the first
//! field already picks the few elements that can match. The exact maps are hash tables,
//! where the order costs nothing, and keep `meta l4proto . th dport`.

use crate::spec::Proto;

/// The order of the protocol and the port in a key of a set of intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// Layouts up to 3: `meta l4proto . th dport`, after the address in `addrrange4` and
    /// before the source in `allow4`.
    ProtoFirst,
    /// Layout 4 on: `th dport . meta l4proto`, after the address in `addrrange4` and after
    /// the source in `allow4`.
    PortFirst,
}

/// The order this nsport writes.
pub const WRITTEN: KeyOrder = KeyOrder::PortFirst;

impl KeyOrder {
    /// The order a table of `layout` is written in.
    pub fn of_layout(layout: u32) -> KeyOrder {
        match layout {
            ..=3 => KeyOrder::ProtoFirst,
            _ => KeyOrder::PortFirst,
        }
    }

    /// The 8 bytes of a protocol and a port, each padded to 4, in this order.
    pub fn service(self, proto: Proto, port: u16) -> [u8; 8] {
        let [hi, lo] = port.to_be_bytes();
        match self {
            KeyOrder::ProtoFirst => [proto.number(), 0, 0, 0, hi, lo, 0, 0],
            KeyOrder::PortFirst => [hi, lo, 0, 0, proto.number(), 0, 0, 0],
        }
    }

    /// The protocol and the port of 8 bytes in this order.
    pub fn parse_service(self, bytes: &[u8]) -> Option<(Proto, u16)> {
        if bytes.len() != 8 {
            return None;
        }
        let (proto, port) = match self {
            KeyOrder::ProtoFirst => (bytes[0], [bytes[4], bytes[5]]),
            KeyOrder::PortFirst => (bytes[4], [bytes[0], bytes[1]]),
        };
        Some((Proto::from_number(proto)?, u16::from_be_bytes(port)))
    }
}

/// `PORT . PROTO` or `FIRST-LAST . PROTO`, as nft lists the service of an element written
/// now, from the 8 bytes of its key and of its end.
pub fn service_text(key: &[u8], end: Option<&[u8]>) -> String {
    let Some((proto, first)) = WRITTEN.parse_service(key) else {
        return String::new();
    };
    let last = end
        .and_then(|end| WRITTEN.parse_service(end))
        .map(|(_, last)| last);
    match last.filter(|last| *last != first) {
        Some(last) => format!("{first}-{last} . {proto}"),
        None => format!("{first} . {proto}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_order_reads_back_what_it_writes_and_not_the_other() {
        for order in [KeyOrder::ProtoFirst, KeyOrder::PortFirst] {
            for (proto, port) in [(Proto::Tcp, 8080), (Proto::Udp, 53), (Proto::Sctp, 65535)] {
                let bytes = order.service(proto, port);
                assert_eq!(order.parse_service(&bytes), Some((proto, port)));
            }
        }
        // tcp . 8080 read port first: a port of 0x0600 and the protocol 0x1f (none).
        let proto_first = KeyOrder::ProtoFirst.service(Proto::Tcp, 8080);
        assert_eq!(KeyOrder::PortFirst.parse_service(&proto_first), None);
        assert_eq!(KeyOrder::of_layout(3), KeyOrder::ProtoFirst);
        assert_eq!(KeyOrder::of_layout(crate::ruleset::LAYOUT), WRITTEN);
        assert_eq!(
            service_text(
                &WRITTEN.service(Proto::Tcp, 8000),
                Some(&WRITTEN.service(Proto::Tcp, 8099))
            ),
            "8000-8099 . tcp"
        );
    }
}
