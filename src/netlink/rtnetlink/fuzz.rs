//! The rtnetlink answer parser against answers cut short, overrunning, of odd sizes, and
//! random: each is an error or a value, never a panic or a read past the answer.
//!
//! Needs no root and no socket. `NSPORT_FUZZ_CASES` sets the number of random cases.

use std::net::IpAddr;

use proptest::prelude::*;

use super::answer::{self, IFINFOMSG_LEN, RTMSG_LEN};
use super::{RTN_BROADCAST, RTN_LOCAL};
use crate::netlink::attributes::put;
use crate::netlink::messages::{self, Message};

const NESTED: u16 = 0x8000;

fn cases() -> u32 {
    std::env::var("NSPORT_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256)
}

/// The offsets at which `bytes` (a header of `header` bytes, then attributes) can be cut
/// and still be whole: after the header, and after each attribute with or without its
/// padding.
fn boundaries(bytes: &[u8], header: usize) -> Vec<usize> {
    let mut at = vec![header];
    let mut offset = header;
    while offset < bytes.len() {
        let len = usize::from(u16::from_ne_bytes([bytes[offset], bytes[offset + 1]]));
        at.push(offset + len);
        offset = (offset + len).next_multiple_of(4);
        at.push(offset);
    }
    at
}

/// A bridge port veth as the kernel describes it: name, counters to skip, master, peer,
/// and link info whose port data holds the hairpin mode among other settings.
fn port_link(hairpin: u8, port_kind: &[u8]) -> Vec<u8> {
    let mut payload = vec![0; IFINFOMSG_LEN];
    payload[4..8].copy_from_slice(&7u32.to_ne_bytes());
    payload[8..12].copy_from_slice(&0x1043u32.to_ne_bytes());
    put(&mut payload, 3, b"veth-a\0").unwrap();
    put(&mut payload, 4, &1500u32.to_ne_bytes()).unwrap();
    put(&mut payload, 23, &[0xee; 200]).unwrap();
    put(&mut payload, 10, &3u32.to_ne_bytes()).unwrap();
    put(&mut payload, 5, &11u32.to_ne_bytes()).unwrap();
    let mut port = Vec::new();
    put(&mut port, 1, &[3]).unwrap();
    put(&mut port, 4, &[hairpin]).unwrap();
    put(&mut port, 5, &[1]).unwrap();
    let mut info = Vec::new();
    put(&mut info, 1, b"veth\0").unwrap();
    put(&mut info, 4, port_kind).unwrap();
    put(&mut info, 5 | NESTED, &port).unwrap();
    put(&mut payload, 18 | NESTED, &info).unwrap();
    payload
}

fn bridge_link() -> Vec<u8> {
    let mut payload = vec![0; IFINFOMSG_LEN];
    payload[4..8].copy_from_slice(&3u32.to_ne_bytes());
    put(&mut payload, 3, b"br0\0").unwrap();
    let mut info = Vec::new();
    put(&mut info, 1, b"bridge\0").unwrap();
    put(&mut info, 2 | NESTED, &[4, 0, 1, 0]).unwrap();
    put(&mut payload, 18 | NESTED, &info).unwrap();
    payload
}

fn loopback_link() -> Vec<u8> {
    let mut payload = vec![0; IFINFOMSG_LEN];
    payload[4..8].copy_from_slice(&1u32.to_ne_bytes());
    payload[8..12].copy_from_slice(&0x49u32.to_ne_bytes());
    put(&mut payload, 3, b"lo\0").unwrap();
    payload
}

/// An IPv4 address on a point-to-point link: IFA_ADDRESS is the peer, IFA_LOCAL the
/// address of this host.
fn v4_address() -> Vec<u8> {
    let mut payload = vec![libc::AF_INET as u8, 24, 0x80, 0, 0, 0, 0, 0];
    payload[4..8].copy_from_slice(&7u32.to_ne_bytes());
    put(&mut payload, 1, &[10, 77, 0, 2]).unwrap();
    put(&mut payload, 2, &[10, 77, 0, 1]).unwrap();
    put(&mut payload, 3, b"veth-a\0").unwrap();
    payload
}

fn v6_address() -> Vec<u8> {
    let mut payload = vec![libc::AF_INET6 as u8, 64, 0, 253, 0, 0, 0, 0];
    payload[4..8].copy_from_slice(&2u32.to_ne_bytes());
    let mut addr = [0u8; 16];
    addr[0] = 0xfe;
    addr[1] = 0x80;
    addr[15] = 9;
    put(&mut payload, 1, &addr).unwrap();
    put(&mut payload, 6, &[0; 16]).unwrap();
    payload
}

fn route(kind: u8, oif: u32) -> Vec<u8> {
    let mut payload = vec![libc::AF_INET as u8, 32, 0, 0, 254, 0, 0, kind];
    payload.resize(RTMSG_LEN, 0);
    put(&mut payload, 15, &254u32.to_ne_bytes()).unwrap();
    put(&mut payload, 1, &[10, 77, 0, 255]).unwrap();
    put(&mut payload, 4, &oif.to_ne_bytes()).unwrap();
    put(&mut payload, 7, &[10, 77, 0, 1]).unwrap();
    payload
}

fn netlink_message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    crate::netlink::attributes::message(kind, 2, seq, payload).unwrap()
}

#[test]
fn links_are_read() {
    let link = answer::link(&port_link(1, b"bridge\0")).unwrap();
    assert_eq!(link.index, 7);
    assert_eq!(link.name, "veth-a");
    assert_eq!(link.master, Some(3));
    assert_eq!(link.peer, Some(11));
    assert_eq!(link.hairpin, Some(true));
    assert!(!link.is_bridge && !link.is_loopback);
    assert_eq!(
        answer::link(&port_link(0, b"bridge\0")).unwrap().hairpin,
        Some(false)
    );
    let bridge = answer::link(&bridge_link()).unwrap();
    assert!(bridge.is_bridge);
    assert_eq!((bridge.index, bridge.name.as_str()), (3, "br0"));
    assert_eq!((bridge.master, bridge.hairpin), (None, None));
    let lo = answer::link(&loopback_link()).unwrap();
    assert!(lo.is_loopback && !lo.is_bridge);
}

#[test]
fn port_data_of_another_kind_is_not_a_bridge_port() {
    // A bond's port data has its own attribute 4, which is not a hairpin mode.
    assert_eq!(
        answer::link(&port_link(1, b"bond\0")).unwrap().hairpin,
        None
    );
}

#[test]
fn addresses_are_read() {
    let v4 = answer::address(&v4_address()).unwrap().unwrap();
    assert_eq!(v4.addr, "10.77.0.1".parse::<IpAddr>().unwrap());
    assert_eq!((v4.prefix_len, v4.ifindex, v4.global), (24, 7, true));
    let v6 = answer::address(&v6_address()).unwrap().unwrap();
    assert_eq!(v6.addr, "fe80::9".parse::<IpAddr>().unwrap());
    assert_eq!((v6.prefix_len, v6.ifindex, v6.global), (64, 2, false));
    // An IPv4 address message naming only its peer names no address of this host.
    let mut peer_only = v4_address()[..8].to_vec();
    put(&mut peer_only, 1, &[10, 77, 0, 2]).unwrap();
    assert_eq!(answer::address(&peer_only).unwrap(), None);
}

#[test]
fn routes_are_read() {
    let local = answer::route(&route(RTN_LOCAL, 1)).unwrap();
    assert_eq!((local.kind, local.oif), (RTN_LOCAL, Some(1)));
    let broadcast = answer::route(&route(RTN_BROADCAST, 7)).unwrap();
    assert_eq!((broadcast.kind, broadcast.oif), (RTN_BROADCAST, Some(7)));
    let no_oif = answer::route(&route(RTN_LOCAL, 1)[..RTMSG_LEN]).unwrap();
    assert_eq!(no_oif.oif, None);
}

/// Every cut of a valid message is a value when it falls between attributes, and an error
/// anywhere else: inside the header, or inside an attribute.
#[test]
fn answers_cut_short_are_errors() {
    type Parse = fn(&[u8]) -> bool;
    let parsers: [(Vec<u8>, usize, Parse); 5] = [
        (port_link(1, b"bridge\0"), IFINFOMSG_LEN, |p| {
            answer::link(p).is_ok()
        }),
        (bridge_link(), IFINFOMSG_LEN, |p| answer::link(p).is_ok()),
        (v4_address(), 8, |p| answer::address(p).is_ok()),
        (v6_address(), 8, |p| answer::address(p).is_ok()),
        (route(RTN_UNICAST_FOR_TEST, 4), RTMSG_LEN, |p| {
            answer::route(p).is_ok()
        }),
    ];
    for (payload, header, parses) in parsers {
        let whole = boundaries(&payload, header);
        for cut in 0..=payload.len() {
            assert_eq!(
                parses(&payload[..cut]),
                whole.contains(&cut),
                "cut at {cut} of {}",
                payload.len()
            );
        }
    }
}

const RTN_UNICAST_FOR_TEST: u8 = super::RTN_UNICAST;

#[test]
fn values_of_the_wrong_size_are_errors() {
    let mut short_master = loopback_link();
    put(&mut short_master, 10, &[3, 0]).unwrap();
    assert!(answer::link(&short_master).is_err());
    let mut long_peer = loopback_link();
    put(&mut long_peer, 5, &[0; 8]).unwrap();
    assert!(answer::link(&long_peer).is_err());
    let mut short_oif = route(RTN_LOCAL, 1)[..RTMSG_LEN].to_vec();
    put(&mut short_oif, 4, &[1]).unwrap();
    assert!(answer::route(&short_oif).is_err());
    // An empty hairpin mode in a bridge port's data.
    let mut port = Vec::new();
    put(&mut port, 4, &[]).unwrap();
    let mut info = Vec::new();
    put(&mut info, 4, b"bridge\0").unwrap();
    put(&mut info, 5 | NESTED, &port).unwrap();
    let mut empty_mode = loopback_link();
    put(&mut empty_mode, 18 | NESTED, &info).unwrap();
    assert!(answer::link(&empty_mode).is_err());
    // A nested attribute overrunning the attribute that holds it.
    let mut overrun = loopback_link();
    put(&mut overrun, 18 | NESTED, &[12, 0, 1, 0, b'b', b'r', 0, 0]).unwrap();
    assert!(answer::link(&overrun).is_err());
}

#[test]
fn messages_are_walked_with_their_lengths_checked() {
    let mut data = netlink_message(20, 5, &v4_address());
    data.extend(netlink_message(3, 5, &[0; 4]));
    let mut rest = data.as_slice();
    let first = messages::next_message(&mut rest).unwrap().unwrap();
    assert_eq!((first.kind, first.seq), (20, 5));
    assert_eq!(first.payload, v4_address().as_slice());
    let done = messages::next_message(&mut rest).unwrap().unwrap();
    assert_eq!((done.kind, messages::errno(&done).unwrap()), (3, 0));
    assert_eq!(messages::next_message(&mut rest).unwrap(), None);

    // Cut anywhere but between messages, the datagram is an error.
    let first_len = netlink_message(20, 5, &v4_address()).len();
    for cut in 1..data.len() {
        let mut rest = &data[..cut];
        let walked = std::iter::from_fn(|| messages::next_message(&mut rest).transpose())
            .collect::<Result<Vec<_>, _>>();
        assert_eq!(walked.is_ok(), cut == first_len, "cut at {cut}");
    }
    // A length shorter than the header, which would walk in place forever.
    let mut zero = netlink_message(20, 5, &[]);
    zero[..4].copy_from_slice(&0u32.to_ne_bytes());
    assert!(messages::next_message(&mut zero.as_slice()).is_err());
    // An error message without its code.
    let codeless = Message {
        kind: 2,
        seq: 1,
        payload: &[0, 0],
    };
    assert!(messages::errno(&codeless).is_err());
    let refused = netlink_message(2, 1, &(-libc::ENODEV).to_ne_bytes());
    let message = messages::next_message(&mut refused.as_slice())
        .unwrap()
        .unwrap();
    assert_eq!(messages::errno(&message).unwrap(), libc::ENODEV);
}

/// Walks a datagram the way `request` does, parsing every message as each kind.
fn parse_everything(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some(message)) = messages::next_message(&mut rest) {
        let _ = messages::errno(&message);
        let _ = answer::link(message.payload);
        let _ = answer::address(message.payload);
        let _ = answer::route(message.payload);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        parse_everything(&bytes);
        let _ = answer::link(&bytes);
        let _ = answer::address(&bytes);
        let _ = answer::route(&bytes);
    }

    /// Valid answers with a few bytes changed: lengths that lie, flags in the type bits.
    #[test]
    fn damaged_answers_never_panic(
        which in 0usize..4,
        changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let payload = match which {
            0 => port_link(1, b"bridge\0"),
            1 => bridge_link(),
            2 => v4_address(),
            _ => route(RTN_LOCAL, 1),
        };
        let mut data = netlink_message(16, 9, &payload);
        for (at, byte) in changes {
            let len = data.len();
            data[at % len] = byte;
        }
        parse_everything(&data);
        let _ = answer::link(&data[16..]);
    }
}
