//! The rules that look up the maps holding mappings: the publish chain's DNAT, and the
//! chains that count a connection's packets against its mapping's element. One row per
//! map in `MAPPING_MAPS`, in lookup order.

use super::declarations::*;
use super::expr::*;
use super::rules::{
    IPV4_DADDR, IPV4_SADDR, IPV6_DADDR, IPV6_SADDR, TH_DPORT, TH_SPORT, ipv4_field, ipv6_field,
    is_ipv4, is_ipv6, lookup, meta, th_port,
};
use super::*;

/// A map that holds mappings, as the rules look it up: its name, whether its key starts
/// with the host address, whether its data holds a port (an exact map's does; an identity
/// range's, in an interval map, does not: NAT to an address alone keeps the destination
/// port), and the lines `nft list` prints for its publish rule and its request and reply
/// counting rules.
struct MappingMap {
    set: &'static str,
    v6: bool,
    /// Whether its key starts with the interface the packet came in on (a request) or
    /// goes out of (a reply): a mapping published with `--on`.
    with_on: bool,
    with_addr: bool,
    with_port: bool,
    texts: [&'static str; 3],
}

/// The maps that hold mappings, in the order the publish and counting chains look them
/// up: the interface-bound maps first (an interface and an address, then an interface),
/// then the specific-address maps before the any-address ones, and in each kind the exact
/// ports before the ranges (a single port published inside a range of another kind wins).
/// The first map that holds the packet's key decides: `--force` lets a more specific
/// mapping overlap a wider one, and this order makes it win.
const MAPPING_MAPS: &[MappingMap] = &[
    MappingMap {
        set: SET_ONADDR4,
        v6: false,
        with_on: true,
        with_addr: true,
        with_port: true,
        texts: [
            "dnat ip to iifname . ip daddr . meta l4proto . th dport map @onaddr4",
            "iifname . ip daddr . meta l4proto . th dport @onaddr4 return",
            "oifname . ip saddr . meta l4proto . th sport @onaddr4 return",
        ],
    },
    MappingMap {
        set: SET_ON4,
        v6: false,
        with_on: true,
        with_addr: false,
        with_port: true,
        texts: [
            "dnat ip to iifname . meta l4proto . th dport map @on4",
            "meta nfproto ipv4 iifname . meta l4proto . th dport @on4 return",
            "meta nfproto ipv4 oifname . meta l4proto . th sport @on4 return",
        ],
    },
    MappingMap {
        set: SET_ADDR4,
        v6: false,
        with_on: false,
        with_addr: true,
        with_port: true,
        texts: [
            "dnat ip to ip daddr . meta l4proto . th dport map @addr4",
            "ip daddr . meta l4proto . th dport @addr4 return",
            "ip saddr . meta l4proto . th sport @addr4 return",
        ],
    },
    MappingMap {
        set: SET_ADDRRANGE4,
        v6: false,
        with_on: false,
        with_addr: true,
        with_port: false,
        texts: [
            "dnat ip to ip daddr . th dport . meta l4proto map @addrrange4",
            "ip daddr . th dport . meta l4proto @addrrange4 return",
            "ip saddr . th sport . meta l4proto @addrrange4 return",
        ],
    },
    MappingMap {
        set: SET_ANY4,
        v6: false,
        with_on: false,
        with_addr: false,
        with_port: true,
        texts: [
            "dnat ip to meta l4proto . th dport map @any4",
            "meta nfproto ipv4 meta l4proto . th dport @any4 return",
            "meta nfproto ipv4 meta l4proto . th sport @any4 return",
        ],
    },
    MappingMap {
        set: SET_RANGE4,
        v6: false,
        with_on: false,
        with_addr: false,
        with_port: false,
        texts: [
            "dnat ip to th dport . meta l4proto map @range4",
            "meta nfproto ipv4 th dport . meta l4proto @range4 return",
            "meta nfproto ipv4 th sport . meta l4proto @range4 return",
        ],
    },
    MappingMap {
        set: SET_ONADDR6,
        v6: true,
        with_on: true,
        with_addr: true,
        with_port: true,
        texts: [
            "dnat ip6 to iifname . ip6 daddr . meta l4proto . th dport map @onaddr6",
            "iifname . ip6 daddr . meta l4proto . th dport @onaddr6 return",
            "oifname . ip6 saddr . meta l4proto . th sport @onaddr6 return",
        ],
    },
    MappingMap {
        set: SET_ON6,
        v6: true,
        with_on: true,
        with_addr: false,
        with_port: true,
        texts: [
            "dnat ip6 to iifname . meta l4proto . th dport map @on6",
            "meta nfproto ipv6 iifname . meta l4proto . th dport @on6 return",
            "meta nfproto ipv6 oifname . meta l4proto . th sport @on6 return",
        ],
    },
    MappingMap {
        set: SET_ADDR6,
        v6: true,
        with_on: false,
        with_addr: true,
        with_port: true,
        texts: [
            "dnat ip6 to ip6 daddr . meta l4proto . th dport map @addr6",
            "ip6 daddr . meta l4proto . th dport @addr6 return",
            "ip6 saddr . meta l4proto . th sport @addr6 return",
        ],
    },
    MappingMap {
        set: SET_ADDRRANGE6,
        v6: true,
        with_on: false,
        with_addr: true,
        with_port: false,
        texts: [
            "dnat ip6 to ip6 daddr . th dport . meta l4proto map @addrrange6",
            "ip6 daddr . th dport . meta l4proto @addrrange6 return",
            "ip6 saddr . th sport . meta l4proto @addrrange6 return",
        ],
    },
    MappingMap {
        set: SET_ANY6,
        v6: true,
        with_on: false,
        with_addr: false,
        with_port: true,
        texts: [
            "dnat ip6 to meta l4proto . th dport map @any6",
            "meta nfproto ipv6 meta l4proto . th dport @any6 return",
            "meta nfproto ipv6 meta l4proto . th sport @any6 return",
        ],
    },
    MappingMap {
        set: SET_RANGE6,
        v6: true,
        with_on: false,
        with_addr: false,
        with_port: false,
        texts: [
            "dnat ip6 to th dport . meta l4proto map @range6",
            "meta nfproto ipv6 th dport . meta l4proto @range6 return",
            "meta nfproto ipv6 th sport . meta l4proto @range6 return",
        ],
    },
];

/// Loads a mapping map's key into registers: `[ip daddr .] meta l4proto . th dport` (or the
/// source side of a reply), in an interval map `[ip daddr .] th dport . meta l4proto`
/// (`key_order`), with the family matched first where the key does not hold an address.
/// An IPv6 address fills a whole 16-byte register, so what follows it moves to register 2
/// and its next 4-byte slot.
fn mapping_key(map: &MappingMap, request: bool, family_check: bool) -> Vec<Expr> {
    // An interval map's key gets the protocol in network order, as nft writes it.
    let l4proto = |reg: u32| {
        let mut exprs = vec![meta(MetaKey::L4proto, reg)];
        if !map.with_port {
            exprs.push(Expr::Hton {
                reg,
                size: 2,
                len: 1,
            });
        }
        exprs
    };
    // The protocol and the port from register `first` on, in the map's order.
    let service = |first: u32, second: u32, port: u32| match map.with_port {
        true => [l4proto(first), vec![th_port(port, second)]].concat(),
        false => [vec![th_port(port, first)], l4proto(second)].concat(),
    };
    let (v4_addr, v6_addr, port) = if request {
        (IPV4_DADDR, IPV6_DADDR, TH_DPORT)
    } else {
        (IPV4_SADDR, IPV6_SADDR, TH_SPORT)
    };
    let family = if map.v6 { is_ipv6() } else { is_ipv4() };
    let ifname = meta(
        if request {
            MetaKey::Iifname
        } else {
            MetaKey::Oifname
        },
        REG_1,
    );
    if map.with_on {
        // The name fills a whole 16-byte register: what follows starts in register 2.
        return match (map.with_addr, map.v6) {
            (true, false) => [
                family.to_vec(),
                vec![
                    ifname,
                    ipv4_field(v4_addr, 4, REG_2),
                    meta(MetaKey::L4proto, REG32_05),
                    th_port(port, REG32_06),
                ],
            ]
            .concat(),
            (true, true) => [
                family.to_vec(),
                vec![
                    ifname,
                    ipv6_field(v6_addr, REG_2),
                    meta(MetaKey::L4proto, REG_3),
                    th_port(port, REG32_09),
                ],
            ]
            .concat(),
            (false, _) => {
                let key = vec![
                    ifname,
                    meta(MetaKey::L4proto, REG_2),
                    th_port(port, REG32_05),
                ];
                match family_check {
                    true => [family.to_vec(), key].concat(),
                    false => key,
                }
            }
        };
    }
    match (map.with_addr, map.v6) {
        (true, false) => [
            family.to_vec(),
            vec![ipv4_field(v4_addr, 4, REG_1)],
            service(REG32_01, REG32_02, port),
        ]
        .concat(),
        (true, true) => [
            family.to_vec(),
            vec![ipv6_field(v6_addr, REG_1)],
            service(REG_2, REG32_05, port),
        ]
        .concat(),
        (false, _) => {
            let key = service(REG_1, REG32_01, port);
            match family_check {
                true => [family.to_vec(), key].concat(),
                false => key,
            }
        }
    }
}

/// The rules that count a packet against its mapping's element: by the host side, which
/// is the destination of a request before NAT and the source of a reply after it.
pub(super) fn count_rules(chain: &'static str, request: bool) -> Vec<RuleDef> {
    MAPPING_MAPS
        .iter()
        .map(|map| RuleDef {
            chain,
            nft: map.texts[if request { 1 } else { 2 }],
            exprs: [
                mapping_key(map, request, true),
                vec![lookup(map.set, REG_1, None), Expr::Verdict(Verdict::Return)],
            ]
            .concat(),
        })
        .collect()
}

/// `dnat ip to ip daddr . meta l4proto . th dport map @addr4`, `dnat ip to meta l4proto .
/// th dport map @any4` and the like: the map's data is the target address and, for exact
/// ports, the target port after it. The publish chain checks no family before a map keyed
/// without an address, as nft writes it: the NAT of the other family does nothing.
pub(super) fn publish_rules() -> Vec<RuleDef> {
    MAPPING_MAPS
        .iter()
        .map(|map| {
            let reg_port = match (map.with_port, map.v6) {
                (false, _) => None,
                (true, false) => Some(REG32_01),
                (true, true) => Some(REG_2),
            };
            RuleDef {
                chain: CHAIN_PUBLISH,
                nft: map.texts[0],
                exprs: [
                    mapping_key(map, true, false),
                    vec![
                        lookup(map.set, REG_1, Some(REG_1)),
                        Expr::Dnat {
                            ipv6: map.v6,
                            reg_addr: REG_1,
                            reg_port,
                        },
                    ],
                ]
                .concat(),
            }
        })
        .collect()
}
