//! The table's rules, each with the line `nft list` prints for it: which packets are
//! published, guarded, masqueraded, kept private and counted.

use std::net::Ipv6Addr;

use super::declarations::*;
use super::expr::*;
use super::mapping_rules::{count_rules, publish_rules};
use super::*;

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const RTN_LOCAL: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;
const CT_STATE_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// Offsets into the IPv4 header and the transport header.
pub(super) const IPV4_SADDR: u32 = 12;
pub(super) const IPV4_DADDR: u32 = 16;
pub(super) const TH_SPORT: u32 = 0;
pub(super) const TH_DPORT: u32 = 2;
pub(super) const IPV6_SADDR: u32 = 8;
pub(super) const IPV6_DADDR: u32 = 24;

pub(super) fn lookup(set: &'static str, sreg: u32, dreg: Option<u32>) -> Expr {
    Expr::Lookup {
        set,
        set_id: set_id(set),
        sreg,
        dreg,
        invert: false,
    }
}

pub(super) fn meta(key: MetaKey, dreg: u32) -> Expr {
    Expr::Meta { key, dreg }
}

fn is_family(nfproto: u8) -> [Expr; 2] {
    [
        meta(MetaKey::Nfproto, REG_1),
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: vec![nfproto],
        },
    ]
}

pub(super) fn is_ipv4() -> [Expr; 2] {
    is_family(NFPROTO_IPV4)
}

pub(super) fn is_ipv6() -> [Expr; 2] {
    is_family(NFPROTO_IPV6)
}

pub(super) fn ipv6_field(offset: u32, dreg: u32) -> Expr {
    Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len: 16,
        dreg,
    }
}

/// `ip6 saddr/daddr fe80::/10 return`, as nft compiles it: mask the whole address.
fn link_local_return(offset: u32) -> Vec<Expr> {
    let mut mask = [0u8; 16];
    mask[..2].copy_from_slice(&[0xff, 0xc0]);
    let mut prefix = [0u8; 16];
    prefix[..2].copy_from_slice(&[0xfe, 0x80]);
    [
        is_ipv6().to_vec(),
        vec![
            ipv6_field(offset, REG_1),
            Expr::Bitwise {
                reg: REG_1,
                mask: mask.to_vec(),
                xor: vec![0; 16],
            },
            Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: prefix.to_vec(),
            },
            Expr::Verdict(Verdict::Return),
        ],
    ]
    .concat()
}

/// `ip saddr/daddr 169.254.0.0/16 return`, as nft compiles it: the first two bytes.
fn link_local4_return(offset: u32) -> Vec<Expr> {
    [
        is_ipv4().to_vec(),
        vec![
            ipv4_field(offset, 2, REG_1),
            Expr::Cmp {
                op: CmpOp::Eq,
                sreg: REG_1,
                data: vec![169, 254],
            },
            Expr::Verdict(Verdict::Return),
        ],
    ]
    .concat()
}

pub(super) fn ipv4_field(offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len,
        dreg,
    }
}

pub(super) fn th_port(offset: u32, dreg: u32) -> Expr {
    Expr::Payload {
        base: PayloadBase::Transport,
        offset,
        len: 2,
        dreg,
    }
}

/// `ct status dnat`, `ct state established,related`: any of the bits set.
fn ct_any(key: CtKey, bits: u32) -> [Expr; 3] {
    [
        Expr::Ct { key, dreg: REG_1 },
        Expr::Bitwise {
            reg: REG_1,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            op: CmpOp::Neq,
            sreg: REG_1,
            data: vec![0; 4],
        },
    ]
}

fn ct_status_dnat() -> [Expr; 3] {
    ct_any(CtKey::Status, IPS_DST_NAT)
}

/// `ip saddr/daddr 127.0.0.0/8`, which nft compiles to a one-byte comparison.
fn is_loopback_net(offset: u32) -> [Expr; 2] {
    [
        ipv4_field(offset, 1, REG_1),
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: vec![127],
        },
    ]
}

fn local_daddr_jump_publish() -> Vec<Expr> {
    vec![
        Expr::FibDaddrType { dreg: REG_1 },
        Expr::Cmp {
            op: CmpOp::Eq,
            sreg: REG_1,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
        Expr::Verdict(Verdict::Jump(CHAIN_PUBLISH)),
    ]
}

/// `ct direction original|reply ct status dnat jump CHAIN`.
fn jump_if_dnat(chain: &'static str, nft: &'static str, reply: bool, to: &'static str) -> RuleDef {
    RuleDef {
        chain,
        nft,
        exprs: [
            vec![
                Expr::Ct {
                    key: CtKey::Direction,
                    dreg: REG_1,
                },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    sreg: REG_1,
                    data: vec![u8::from(reply)],
                },
            ],
            ct_status_dnat().to_vec(),
            vec![Expr::Verdict(Verdict::Jump(to))],
        ]
        .concat(),
    }
}

/// The rules, in chain order.
pub fn rules() -> Vec<RuleDef> {
    let mut rules = base_rules();
    rules.extend(count_rules(CHAIN_COUNT_REQUEST, true));
    rules.extend(count_rules(CHAIN_COUNT_REPLY, false));
    let request = "ct direction original ct status dnat jump count_request";
    let reply = "ct direction reply ct status dnat jump count_reply";
    rules.push(jump_if_dnat(
        "requests_in",
        request,
        false,
        CHAIN_COUNT_REQUEST,
    ));
    rules.push(jump_if_dnat(
        "requests_out",
        request,
        false,
        CHAIN_COUNT_REQUEST,
    ));
    rules.push(jump_if_dnat("replies_in", reply, true, CHAIN_COUNT_REPLY));
    rules.push(jump_if_dnat("replies_out", reply, true, CHAIN_COUNT_REPLY));
    rules
}

/// The rules that publish, guard and keep namespaces private.
fn base_rules() -> Vec<RuleDef> {
    let mut rules = vec![
        RuleDef {
            chain: CHAIN_GUARD,
            nft: r#"iifname != "lo" ip daddr 127.0.0.0/8 drop"#,
            exprs: [
                vec![
                    meta(MetaKey::Iifname, REG_1),
                    Expr::Cmp {
                        op: CmpOp::Neq,
                        sreg: REG_1,
                        data: ifname_bytes("lo").to_vec(),
                    },
                ],
                is_ipv4().to_vec(),
                is_loopback_net(IPV4_DADDR).to_vec(),
                vec![Expr::Verdict(Verdict::Drop)],
            ]
            .concat(),
        },
        // Loopback sources are always allowed through an allow-list (a local process can
        // reach the target directly anyway); that holds only while 127/8 sources come from
        // the host itself, which route_localnet on an interface toward a namespace would
        // otherwise let a neighbour forge.
        RuleDef {
            chain: CHAIN_GUARD,
            nft: r#"iifname != "lo" ip saddr 127.0.0.0/8 drop"#,
            exprs: [
                vec![
                    meta(MetaKey::Iifname, REG_1),
                    Expr::Cmp {
                        op: CmpOp::Neq,
                        sreg: REG_1,
                        data: ifname_bytes("lo").to_vec(),
                    },
                ],
                is_ipv4().to_vec(),
                is_loopback_net(IPV4_SADDR).to_vec(),
                vec![Expr::Verdict(Verdict::Drop)],
            ]
            .concat(),
        },
        RuleDef {
            chain: CHAIN_PREROUTING,
            nft: "fib daddr type local jump publish",
            exprs: local_daddr_jump_publish(),
        },
        RuleDef {
            chain: CHAIN_OUTPUT,
            nft: "fib daddr type local jump publish",
            exprs: local_daddr_jump_publish(),
        },
        // Link-local traffic belongs to its link; [::1] cannot be DNATed at all (Linux has
        // no route_localnet for IPv6), so it is left to reach the host's own sockets.
        RuleDef {
            chain: CHAIN_PUBLISH,
            nft: "ip saddr 169.254.0.0/16 return",
            exprs: link_local4_return(IPV4_SADDR),
        },
        RuleDef {
            chain: CHAIN_PUBLISH,
            nft: "ip daddr 169.254.0.0/16 return",
            exprs: link_local4_return(IPV4_DADDR),
        },
        RuleDef {
            chain: CHAIN_PUBLISH,
            nft: "ip6 saddr fe80::/10 return",
            exprs: link_local_return(IPV6_SADDR),
        },
        RuleDef {
            chain: CHAIN_PUBLISH,
            nft: "ip6 daddr fe80::/10 return",
            exprs: link_local_return(IPV6_DADDR),
        },
        RuleDef {
            chain: CHAIN_PUBLISH,
            nft: "ip6 daddr ::1 return",
            exprs: [
                is_ipv6().to_vec(),
                vec![
                    ipv6_field(IPV6_DADDR, REG_1),
                    Expr::Cmp {
                        op: CmpOp::Eq,
                        sreg: REG_1,
                        data: Ipv6Addr::LOCALHOST.octets().to_vec(),
                    },
                    Expr::Verdict(Verdict::Return),
                ],
            ]
            .concat(),
        },
    ];
    rules.extend([false, true].map(allow_list_return));
    rules.extend(publish_rules());
    rules.push(loopback_masquerade());
    rules.extend([false, true].map(hairpin_masquerade));
    rules.extend([false, true].map(neighbour_masquerade));
    rules.extend(forward_accepts());
    rules.extend([false, true].map(direct_access_drop));
    rules.push(closed_forwarding_drop());
    rules
}

/// A port with a source allow-list, used from a source not on it and not the host's
/// loopback, leaves the chain before any DNAT: the packet meets the host as it would if
/// the port were not published (a reset, or an ICMP port unreachable). Two lookups in sets
/// of intervals, each keyed by its most selective field first (see `allow_list`).
fn allow_list_return(v6: bool) -> RuleDef {
    // `th dport . meta l4proto` from register `port` on, the protocol in network order, as
    // nft loads it for a set of intervals, so that `nft -f` of an export makes the very
    // rule nsport writes.
    let service = |port: u32, proto: u32| {
        [
            th_port(TH_DPORT, port),
            meta(MetaKey::L4proto, proto),
            Expr::Hton {
                reg: proto,
                size: 2,
                len: 1,
            },
        ]
    };
    // The source fills register 1 (16 bytes) or its first 4-byte register; the service
    // follows it.
    let (nft, loopback, saddr, source, after_source, allow) = if v6 {
        (
            "th dport . meta l4proto @limited ip6 saddr != ::1 ip6 saddr . th dport . meta l4proto != @allow6 return",
            Ipv6Addr::LOCALHOST.octets().to_vec(),
            ipv6_field(IPV6_SADDR, REG_1),
            ipv6_field(IPV6_SADDR, REG_1),
            service(REG_2, REG32_05),
            SET_ALLOW6,
        )
    } else {
        (
            "th dport . meta l4proto @limited ip saddr != 127.0.0.0/8 ip saddr . th dport . meta l4proto != @allow4 return",
            vec![127],
            ipv4_field(IPV4_SADDR, 1, REG_1),
            ipv4_field(IPV4_SADDR, 4, REG_1),
            service(REG32_01, REG32_02),
            SET_ALLOW4,
        )
    };
    RuleDef {
        chain: CHAIN_PUBLISH,
        nft,
        exprs: [
            service(REG_1, REG32_01).to_vec(),
            vec![lookup(SET_LIMITED, REG_1, None)],
            is_family(if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }).to_vec(),
            vec![
                saddr,
                Expr::Cmp {
                    op: CmpOp::Neq,
                    sreg: REG_1,
                    data: loopback,
                },
                source,
            ],
            after_source.to_vec(),
            vec![
                Expr::Lookup {
                    set: allow,
                    set_id: set_id(allow),
                    sreg: REG_1,
                    dreg: None,
                    invert: true,
                },
                Expr::Verdict(Verdict::Return),
            ],
        ]
        .concat(),
    }
}

/// What the per-target rules of one address family read: the family match, where the
/// addresses sit in the header, and the family's sets.
struct FamilyRules {
    is_family: [Expr; 2],
    saddr: Expr,
    daddr: fn(u32) -> Expr,
    hairpin: &'static str,
    reach: &'static str,
    targets: &'static str,
}

fn family_rules(v6: bool) -> FamilyRules {
    if v6 {
        FamilyRules {
            is_family: is_ipv6(),
            saddr: ipv6_field(IPV6_SADDR, REG_1),
            daddr: |reg| ipv6_field(IPV6_DADDR, reg),
            hairpin: SET_HAIRPIN6,
            reach: SET_REACH6,
            targets: SET_TARGETS6,
        }
    } else {
        FamilyRules {
            is_family: is_ipv4(),
            saddr: ipv4_field(IPV4_SADDR, 4, REG_1),
            daddr: |reg| ipv4_field(IPV4_DADDR, 4, reg),
            hairpin: SET_HAIRPIN4,
            reach: SET_REACH4,
            targets: SET_TARGETS4,
        }
    }
}

/// `iifname . ip daddr`: the interface a packet came in on and the target it goes to, as
/// the key of the `reach` sets.
fn iifname_daddr(family: &FamilyRules) -> [Expr; 2] {
    [meta(MetaKey::Iifname, REG_1), (family.daddr)(REG_2)]
}

/// Replies to a DNATed 127.0.0.1 connection must come back through the host: a 127/8
/// source means nothing anywhere else.
fn loopback_masquerade() -> RuleDef {
    RuleDef {
        chain: CHAIN_POSTROUTING,
        nft: "ct status dnat ip saddr 127.0.0.0/8 masquerade",
        exprs: [
            ct_status_dnat().to_vec(),
            is_ipv4().to_vec(),
            is_loopback_net(IPV4_SADDR).to_vec(),
            vec![Expr::Masquerade],
        ]
        .concat(),
    }
}

/// A namespace reaching its own published port: the DNATed packet goes back where it came
/// from, so the reply would skip the host unless the source is the host.
fn hairpin_masquerade(v6: bool) -> RuleDef {
    let family = family_rules(v6);
    RuleDef {
        chain: CHAIN_POSTROUTING,
        nft: if v6 {
            "ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade"
        } else {
            "ct status dnat ip saddr . ip daddr @hairpin4 masquerade"
        },
        exprs: [
            ct_status_dnat().to_vec(),
            family.is_family.to_vec(),
            vec![
                family.saddr.clone(),
                (family.daddr)(if v6 { REG_2 } else { REG32_01 }),
                lookup(family.hairpin, REG_1, None),
                Expr::Masquerade,
            ],
        ]
        .concat(),
    }
}

/// A client on the target's own network (a neighbour on its bridge, or a host beside a
/// plain forwarding target) reaching a published port: the target would answer it
/// directly, bypassing the host's NAT, unless the source is the host. Keyed by the target
/// and its interface, so clients from anywhere else keep their addresses.
fn neighbour_masquerade(v6: bool) -> RuleDef {
    let family = family_rules(v6);
    RuleDef {
        chain: CHAIN_POSTROUTING,
        nft: if v6 {
            "ct status dnat iifname . ip6 daddr @reach6 masquerade"
        } else {
            "ct status dnat iifname . ip daddr @reach4 masquerade"
        },
        exprs: [
            ct_status_dnat().to_vec(),
            family.is_family.to_vec(),
            iifname_daddr(&family).to_vec(),
            vec![lookup(family.reach, REG_1, None), Expr::Masquerade],
        ]
        .concat(),
    }
}

/// What a published port lets through, and the replies of what a target started.
fn forward_accepts() -> [RuleDef; 2] {
    [
        RuleDef {
            chain: CHAIN_FORWARD,
            nft: "ct status dnat accept",
            exprs: [
                ct_status_dnat().to_vec(),
                vec![Expr::Verdict(Verdict::Accept)],
            ]
            .concat(),
        },
        RuleDef {
            chain: CHAIN_FORWARD,
            nft: "ct state established,related accept",
            exprs: [
                ct_any(CtKey::State, CT_STATE_ESTABLISHED_RELATED).to_vec(),
                vec![Expr::Verdict(Verdict::Accept)],
            ]
            .concat(),
        },
    ]
}

/// Direct access: once forwarding is on, a protected target is reached only from its own
/// interface (its network's neighbours) or through a published port, never by routing to
/// its address from another network.
fn direct_access_drop(v6: bool) -> RuleDef {
    let family = family_rules(v6);
    RuleDef {
        chain: CHAIN_FORWARD,
        nft: if v6 {
            "ip6 daddr @targets6 iifname . ip6 daddr != @reach6 drop"
        } else {
            "ip daddr @targets4 iifname . ip daddr != @reach4 drop"
        },
        exprs: [
            family.is_family.to_vec(),
            vec![(family.daddr)(REG_1), lookup(family.targets, REG_1, None)],
            iifname_daddr(&family).to_vec(),
            vec![
                Expr::Lookup {
                    set: family.reach,
                    set_id: set_id(family.reach),
                    sreg: REG_1,
                    dreg: None,
                    invert: true,
                },
                Expr::Verdict(Verdict::Drop),
            ],
        ]
        .concat(),
    }
}

/// Forwarding that nsport turned on opens nothing but the published ports: in a family
/// whose forwarding was off before, a forwarded connection that no published port started
/// may only come from an interface toward a published namespace (its own connections
/// out, and bridged traffic, which br_netfilter shows as coming from the bridge).
fn closed_forwarding_drop() -> RuleDef {
    RuleDef {
        chain: CHAIN_FORWARD,
        nft: "meta nfproto @closed iifname != @inside drop",
        exprs: vec![
            meta(MetaKey::Nfproto, REG_1),
            lookup(SET_CLOSED, REG_1, None),
            meta(MetaKey::Iifname, REG_1),
            Expr::Lookup {
                set: SET_INSIDE,
                set_id: set_id(SET_INSIDE),
                sreg: REG_1,
                dreg: None,
                invert: true,
            },
            Expr::Verdict(Verdict::Drop),
        ],
    }
}
