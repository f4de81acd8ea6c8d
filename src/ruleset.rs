//! What `table inet nsport` should contain, as plain data.
//!
//! Nothing here talks to the kernel: `crate::netlink` turns these values into nftables
//! messages. The rules are fixed; a published port is only a map element, so the per-packet
//! cost is one hash lookup however many ports are published.
//!
//! ```text
//! table inet nsport {
//!   map any4  { type inet_proto . inet_service : ipv4_addr . inet_service; }
//!   map addr4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
//!   map any6, addr6, set hairpin6, targets6: the same for IPv6
//!   set hairpin4 { type ipv4_addr . ipv4_addr; }
//!   set ifaces { type ifname; }
//!   set targets4 { type ipv4_addr; }
//!   chain guard { type filter hook prerouting priority raw; ... }
//!   chain prerouting { type nat hook prerouting priority dstnat; ... }
//!   chain output { type nat hook output priority -100; ... }
//!   chain publish { ... }
//!   chain postrouting { type nat hook postrouting priority srcnat; ... }
//!   chain forward { type filter hook forward priority filter; ... }
//! }
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::spec::Proto;

/// The one table nsport owns, in the `inet` family.
pub const TABLE: &str = "nsport";

pub const SET_ANY4: &str = "any4";
pub const SET_ADDR4: &str = "addr4";
pub const SET_HAIRPIN4: &str = "hairpin4";
pub const SET_IFACES: &str = "ifaces";
pub const SET_TARGETS4: &str = "targets4";
pub const SET_ANY6: &str = "any6";
pub const SET_ADDR6: &str = "addr6";
pub const SET_HAIRPIN6: &str = "hairpin6";
pub const SET_TARGETS6: &str = "targets6";

/// The 16-byte register 1 and the 4-byte registers that follow it (`reg 9`, `reg 10` in
/// `nft --debug=netlink`), numbered as the kernel numbers them.
pub const REG_1: u32 = 1;
pub const REG_2: u32 = 2;
pub const REG32_01: u32 = 9;
pub const REG32_02: u32 = 10;
pub const REG32_05: u32 = 13;
pub const REG_VERDICT: u32 = 0;

/// `IFNAMSIZ`: interface names are compared as 16 NUL-padded bytes.
pub const IFNAME_LEN: usize = 16;

/// nftables' datatype numbers (nftables `include/datatype.h`), which `nft list` uses to
/// print keys; a concatenation packs them six bits apart.
mod datatype {
    pub const IPADDR: u32 = 7;
    pub const IP6ADDR: u32 = 8;
    pub const INET_PROTOCOL: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    pub const IFNAME: u32 = 41;

    pub const fn concat(types: &[u32]) -> u32 {
        let mut packed = 0;
        let mut i = 0;
        while i < types.len() {
            packed = (packed << 6) | types[i];
            i += 1;
        }
        packed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

/// A chain; base chains carry their hook, priority and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDef {
    pub name: &'static str,
    pub base: Option<(Hook, i32, ChainType)>,
}

/// A named set or map, with the user data `nft` itself writes for the same declaration so
/// that `nft list` prints it back as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    pub name: &'static str,
    /// The declared type, as `nft list` prints it.
    pub nft_type: &'static str,
    /// The transaction-local id by which rules in the same batch refer to a new set.
    pub id: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// `Some((type, len))` for a map.
    pub data: Option<(u32, u32)>,
    /// Every element gets its own packet and byte counter.
    pub counter: bool,
    pub userdata: Vec<u8>,
}

impl SetDef {
    pub fn is_map(&self) -> bool {
        self.data.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Nfproto,
    L4proto,
    Iifname,
    Oifname,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Network,
    Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    State,
    Direction,
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(&'static str),
}

/// One nftables expression, in the order the kernel evaluates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        op: CmpOp,
        sreg: u32,
        data: Vec<u8>,
    },
    /// `fib daddr type`: the routing type (local, unicast, …) of the destination.
    FibDaddrType {
        dreg: u32,
    },
    Ct {
        key: CtKey,
        dreg: u32,
    },
    Bitwise {
        reg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Lookup {
        set: &'static str,
        set_id: u32,
        sreg: u32,
        dreg: Option<u32>,
        /// `!= @set`: matches when the key is not in the set.
        invert: bool,
    },
    /// `dnat ip to` (or `ip6`) the address in `reg_addr` and the port in `reg_port`.
    Dnat {
        ipv6: bool,
        reg_addr: u32,
        reg_port: u32,
    },
    Masquerade,
    Verdict(Verdict),
}

/// A rule, with the line `nft list` prints for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDef {
    pub chain: &'static str,
    pub nft: &'static str,
    pub exprs: Vec<Expr>,
}

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const RTN_LOCAL: u32 = 2;
const IPS_DST_NAT: u32 = 0x20;
const CT_STATE_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// Offsets into the IPv4 header and the transport header.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;
const TH_SPORT: u32 = 0;
const TH_DPORT: u32 = 2;
const IPV6_SADDR: u32 = 8;
const IPV6_DADDR: u32 = 24;

pub const CHAIN_GUARD: &str = "guard";
pub const CHAIN_PREROUTING: &str = "prerouting";
pub const CHAIN_OUTPUT: &str = "output";
pub const CHAIN_PUBLISH: &str = "publish";
pub const CHAIN_POSTROUTING: &str = "postrouting";
pub const CHAIN_FORWARD: &str = "forward";
pub const CHAIN_COUNT_REQUEST: &str = "count_request";
pub const CHAIN_COUNT_REPLY: &str = "count_reply";

/// The chains, in the order `nft list` shows them.
pub fn chains() -> Vec<ChainDef> {
    vec![
        // Raw priority: the guard must see 127/8 packets before conntrack and NAT do.
        ChainDef {
            name: CHAIN_GUARD,
            base: Some((Hook::Prerouting, -300, ChainType::Filter)),
        },
        ChainDef {
            name: CHAIN_PREROUTING,
            base: Some((Hook::Prerouting, -100, ChainType::Nat)),
        },
        ChainDef {
            name: CHAIN_OUTPUT,
            base: Some((Hook::Output, -100, ChainType::Nat)),
        },
        ChainDef {
            name: CHAIN_PUBLISH,
            base: None,
        },
        ChainDef {
            name: CHAIN_POSTROUTING,
            base: Some((Hook::Postrouting, 100, ChainType::Nat)),
        },
        ChainDef {
            name: CHAIN_FORWARD,
            base: Some((Hook::Forward, 0, ChainType::Filter)),
        },
        // Per-mapping counters. NAT sees only a connection's first packet (counted by its
        // map lookup); the rest are counted by the same keys before NAT in the request
        // direction (priority -150) and after it in the reply direction (priority 110).
        ChainDef {
            name: CHAIN_COUNT_REQUEST,
            base: None,
        },
        ChainDef {
            name: CHAIN_COUNT_REPLY,
            base: None,
        },
        ChainDef {
            name: "requests_in",
            base: Some((Hook::Prerouting, -150, ChainType::Filter)),
        },
        ChainDef {
            name: "requests_out",
            base: Some((Hook::Output, -150, ChainType::Filter)),
        },
        ChainDef {
            name: "replies_in",
            base: Some((Hook::Input, 110, ChainType::Filter)),
        },
        ChainDef {
            name: "replies_out",
            base: Some((Hook::Postrouting, 110, ChainType::Filter)),
        },
    ]
}

/// A TLV of nftables' user data: type, length, value.
fn udata(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, u8::try_from(value.len()).expect("short user data")];
    out.extend_from_slice(value);
    out
}

/// The user data `nft` writes for a `type` declaration: the byte order of key and data
/// (0 for concatenations, 1 for host order) and, for concatenations, an empty `typeof`
/// record that nft uses to remember the concatenation's shape.
fn set_userdata(key_byteorder: u32, data_byteorder: Option<u32>, concat: bool) -> Vec<u8> {
    const KEYBYTEORDER: u8 = 0;
    const DATABYTEORDER: u8 = 1;
    const KEY_TYPEOF: u8 = 3;
    const DATA_TYPEOF: u8 = 4;
    const DATA_INTERVAL: u8 = 6;
    // Nested: expression kind 13 (concatenation) with no members.
    let empty_concat = [udata(0, &13u32.to_le_bytes()), udata(1, &[])].concat();
    let mut out = udata(KEYBYTEORDER, &key_byteorder.to_le_bytes());
    if let Some(order) = data_byteorder {
        out.extend(udata(DATABYTEORDER, &order.to_le_bytes()));
    }
    if concat {
        out.extend(udata(KEY_TYPEOF, &empty_concat));
    }
    if data_byteorder.is_some() {
        out.extend(udata(DATA_TYPEOF, &empty_concat));
        out.extend(udata(DATA_INTERVAL, &0u32.to_le_bytes()));
    }
    out
}

/// The maps and sets of one address family: any-address and one-address maps, hairpin
/// pairs, and targets protected from direct access, with their set ids.
fn family_sets(v6: bool, ids: [u32; 4]) -> [SetDef; 4] {
    use datatype::*;
    let (addr, addr_len) = if v6 { (IP6ADDR, 16) } else { (IPADDR, 4) };
    let target = Some((concat(&[addr, INET_SERVICE]), addr_len + 4));
    let pick = |v4: &'static str, v6_name: &'static str| if v6 { v6_name } else { v4 };
    let map = |name, nft_type, id, key_type, key_len| SetDef {
        name,
        nft_type,
        id,
        key_type,
        key_len,
        data: target,
        counter: true,
        userdata: set_userdata(0, Some(0), true),
    };
    [
        // map any4 { type inet_proto . inet_service : ipv4_addr . inet_service; }
        map(
            pick(SET_ANY4, SET_ANY6),
            pick(
                "inet_proto . inet_service : ipv4_addr . inet_service",
                "inet_proto . inet_service : ipv6_addr . inet_service",
            ),
            ids[0],
            concat(&[INET_PROTOCOL, INET_SERVICE]),
            8,
        ),
        // map addr4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
        map(
            pick(SET_ADDR4, SET_ADDR6),
            pick(
                "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
                "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service",
            ),
            ids[1],
            concat(&[addr, INET_PROTOCOL, INET_SERVICE]),
            addr_len + 8,
        ),
        // set hairpin4 { type ipv4_addr . ipv4_addr; }
        SetDef {
            name: pick(SET_HAIRPIN4, SET_HAIRPIN6),
            nft_type: pick("ipv4_addr . ipv4_addr", "ipv6_addr . ipv6_addr"),
            id: ids[2],
            key_type: concat(&[addr, addr]),
            key_len: 2 * addr_len,
            data: None,
            counter: false,
            userdata: set_userdata(0, None, true),
        },
        // set targets4 { type ipv4_addr; }
        SetDef {
            name: pick(SET_TARGETS4, SET_TARGETS6),
            nft_type: pick("ipv4_addr", "ipv6_addr"),
            id: ids[3],
            key_type: addr,
            key_len: addr_len,
            data: None,
            counter: false,
            userdata: set_userdata(2, None, false),
        },
    ]
}

/// The sets and maps, in the order `nft list` shows them.
pub fn sets() -> Vec<SetDef> {
    let [any4, addr4, hairpin4, targets4] = family_sets(false, [1, 2, 3, 5]);
    // set ifaces { type ifname; }
    let ifaces = SetDef {
        name: SET_IFACES,
        nft_type: "ifname",
        id: 4,
        key_type: datatype::IFNAME,
        key_len: IFNAME_LEN as u32,
        data: None,
        counter: false,
        userdata: set_userdata(1, None, false),
    };
    let mut sets = vec![any4, addr4, hairpin4, ifaces, targets4];
    sets.extend(family_sets(true, [6, 7, 8, 9]));
    sets
}

fn set_id(name: &str) -> u32 {
    sets()
        .iter()
        .find(|set| set.name == name)
        .map(|set| set.id)
        .expect("a set of the table")
}

fn lookup(set: &'static str, sreg: u32, dreg: Option<u32>) -> Expr {
    Expr::Lookup {
        set,
        set_id: set_id(set),
        sreg,
        dreg,
        invert: false,
    }
}

fn meta(key: MetaKey, dreg: u32) -> Expr {
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

fn is_ipv4() -> [Expr; 2] {
    is_family(NFPROTO_IPV4)
}

fn is_ipv6() -> [Expr; 2] {
    is_family(NFPROTO_IPV6)
}

fn ipv6_field(offset: u32, dreg: u32) -> Expr {
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

fn ipv4_field(offset: u32, len: u32, dreg: u32) -> Expr {
    Expr::Payload {
        base: PayloadBase::Network,
        offset,
        len,
        dreg,
    }
}

fn th_dport(dreg: u32) -> Expr {
    th_port(TH_DPORT, dreg)
}

fn th_port(offset: u32, dreg: u32) -> Expr {
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

/// The rules that count a packet against its mapping's element: by the host side, which
/// is the destination of a request before NAT and the source of a reply after it.
fn count_rules(chain: &'static str, texts: [&'static str; 4], request: bool) -> Vec<RuleDef> {
    let (v4_addr, v6_addr, port) = if request {
        (IPV4_DADDR, IPV6_DADDR, TH_DPORT)
    } else {
        (IPV4_SADDR, IPV6_SADDR, TH_SPORT)
    };
    let counted = |set| vec![lookup(set, REG_1, None), Expr::Verdict(Verdict::Return)];
    let any = |family: [Expr; 2], set| {
        [
            family.to_vec(),
            vec![meta(MetaKey::L4proto, REG_1), th_port(port, REG32_01)],
            counted(set),
        ]
        .concat()
    };
    let [addr4, any4, addr6, any6] = texts;
    vec![
        RuleDef {
            chain,
            nft: addr4,
            exprs: [
                is_ipv4().to_vec(),
                vec![
                    ipv4_field(v4_addr, 4, REG_1),
                    meta(MetaKey::L4proto, REG32_01),
                    th_port(port, REG32_02),
                ],
                counted(SET_ADDR4),
            ]
            .concat(),
        },
        RuleDef {
            chain,
            nft: any4,
            exprs: any(is_ipv4(), SET_ANY4),
        },
        RuleDef {
            chain,
            nft: addr6,
            exprs: [
                is_ipv6().to_vec(),
                vec![
                    ipv6_field(v6_addr, REG_1),
                    meta(MetaKey::L4proto, REG_2),
                    th_port(port, REG32_05),
                ],
                counted(SET_ADDR6),
            ]
            .concat(),
        },
        RuleDef {
            chain,
            nft: any6,
            exprs: any(is_ipv6(), SET_ANY6),
        },
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
    rules.extend(count_rules(
        CHAIN_COUNT_REQUEST,
        [
            "ip daddr . meta l4proto . th dport @addr4 return",
            "meta nfproto ipv4 meta l4proto . th dport @any4 return",
            "ip6 daddr . meta l4proto . th dport @addr6 return",
            "meta nfproto ipv6 meta l4proto . th dport @any6 return",
        ],
        true,
    ));
    rules.extend(count_rules(
        CHAIN_COUNT_REPLY,
        [
            "ip saddr . meta l4proto . th sport @addr4 return",
            "meta nfproto ipv4 meta l4proto . th sport @any4 return",
            "ip6 saddr . meta l4proto . th sport @addr6 return",
            "meta nfproto ipv6 meta l4proto . th sport @any6 return",
        ],
        false,
    ));
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

/// `dnat ip to ip daddr . meta l4proto . th dport map @addr4` and
/// `dnat ip to meta l4proto . th dport map @any4`, or the same for IPv6. An IPv6 address
/// fills a whole 16-byte register, so what follows it moves to register 2 and its next
/// 4-byte slot.
fn publish_rules(v6: bool) -> [RuleDef; 2] {
    let (family, daddr, addr_set, any_set) = if v6 {
        (
            is_ipv6(),
            ipv6_field(IPV6_DADDR, REG_1),
            SET_ADDR6,
            SET_ANY6,
        )
    } else {
        (
            is_ipv4(),
            ipv4_field(IPV4_DADDR, 4, REG_1),
            SET_ADDR4,
            SET_ANY4,
        )
    };
    let (proto_reg, port_reg) = if v6 {
        (REG_2, REG32_05)
    } else {
        (REG32_01, REG32_02)
    };
    let dnat = Expr::Dnat {
        ipv6: v6,
        reg_addr: REG_1,
        reg_port: if v6 { REG_2 } else { REG32_01 },
    };
    let texts = if v6 {
        [
            "dnat ip6 to ip6 daddr . meta l4proto . th dport map @addr6",
            "dnat ip6 to meta l4proto . th dport map @any6",
        ]
    } else {
        [
            "dnat ip to ip daddr . meta l4proto . th dport map @addr4",
            "dnat ip to meta l4proto . th dport map @any4",
        ]
    };
    [
        RuleDef {
            chain: CHAIN_PUBLISH,
            nft: texts[0],
            exprs: [
                family.to_vec(),
                vec![
                    daddr,
                    meta(MetaKey::L4proto, proto_reg),
                    th_dport(port_reg),
                    lookup(addr_set, REG_1, Some(REG_1)),
                    dnat.clone(),
                ],
            ]
            .concat(),
        },
        RuleDef {
            chain: CHAIN_PUBLISH,
            nft: texts[1],
            exprs: vec![
                meta(MetaKey::L4proto, REG_1),
                th_dport(REG32_01),
                lookup(any_set, REG_1, Some(REG_1)),
                dnat,
            ],
        },
    ]
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
    rules.extend(publish_rules(false));
    rules.extend(publish_rules(true));
    rules.extend([
        RuleDef {
            chain: CHAIN_POSTROUTING,
            nft: "ip saddr 127.0.0.0/8 oifname @ifaces masquerade",
            exprs: [
                is_ipv4().to_vec(),
                is_loopback_net(IPV4_SADDR).to_vec(),
                vec![
                    meta(MetaKey::Oifname, REG_1),
                    lookup(SET_IFACES, REG_1, None),
                    Expr::Masquerade,
                ],
            ]
            .concat(),
        },
        RuleDef {
            chain: CHAIN_POSTROUTING,
            nft: "ct status dnat ip saddr . ip daddr @hairpin4 masquerade",
            exprs: [
                ct_status_dnat().to_vec(),
                is_ipv4().to_vec(),
                vec![
                    ipv4_field(IPV4_SADDR, 4, REG_1),
                    ipv4_field(IPV4_DADDR, 4, REG32_01),
                    lookup(SET_HAIRPIN4, REG_1, None),
                    Expr::Masquerade,
                ],
            ]
            .concat(),
        },
        RuleDef {
            chain: CHAIN_POSTROUTING,
            nft: "ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade",
            exprs: [
                ct_status_dnat().to_vec(),
                is_ipv6().to_vec(),
                vec![
                    ipv6_field(IPV6_SADDR, REG_1),
                    ipv6_field(IPV6_DADDR, REG_2),
                    lookup(SET_HAIRPIN6, REG_1, None),
                    Expr::Masquerade,
                ],
            ]
            .concat(),
        },
        RuleDef {
            chain: CHAIN_POSTROUTING,
            nft: "ct status dnat iifname @ifaces oifname @ifaces masquerade",
            exprs: [
                ct_status_dnat().to_vec(),
                vec![
                    meta(MetaKey::Iifname, REG_1),
                    lookup(SET_IFACES, REG_1, None),
                    meta(MetaKey::Oifname, REG_1),
                    lookup(SET_IFACES, REG_1, None),
                    Expr::Masquerade,
                ],
            ]
            .concat(),
        },
        // Direct access: once forwarding is on, nothing from outside the published
        // namespaces' interfaces reaches their addresses unless a published port sent it.
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
        RuleDef {
            chain: CHAIN_FORWARD,
            nft: "iifname != @ifaces ip daddr @targets4 drop",
            exprs: [
                vec![
                    meta(MetaKey::Iifname, REG_1),
                    Expr::Lookup {
                        set: SET_IFACES,
                        set_id: set_id(SET_IFACES),
                        sreg: REG_1,
                        dreg: None,
                        invert: true,
                    },
                ],
                is_ipv4().to_vec(),
                vec![
                    ipv4_field(IPV4_DADDR, 4, REG_1),
                    lookup(SET_TARGETS4, REG_1, None),
                    Expr::Verdict(Verdict::Drop),
                ],
            ]
            .concat(),
        },
        RuleDef {
            chain: CHAIN_FORWARD,
            nft: "iifname != @ifaces ip6 daddr @targets6 drop",
            exprs: [
                vec![
                    meta(MetaKey::Iifname, REG_1),
                    Expr::Lookup {
                        set: SET_IFACES,
                        set_id: set_id(SET_IFACES),
                        sreg: REG_1,
                        dreg: None,
                        invert: true,
                    },
                ],
                is_ipv6().to_vec(),
                vec![
                    ipv6_field(IPV6_DADDR, REG_1),
                    lookup(SET_TARGETS6, REG_1, None),
                    Expr::Verdict(Verdict::Drop),
                ],
            ]
            .concat(),
        },
    ]);
    rules
}

/// The whole table, empty, as an `nft -f` script: what nsport creates on first use.
/// It starts by deleting any table of the name, so that loading it twice does not
/// duplicate the rules.
pub fn table_script() -> String {
    let mut out =
        format!("table inet {TABLE}\ndelete table inet {TABLE}\n\ntable inet {TABLE} {{\n");
    for set in sets() {
        let kind = if set.is_map() { "map" } else { "set" };
        out.push_str(&format!(
            "\t{kind} {} {{\n\t\ttype {}\n",
            set.name, set.nft_type
        ));
        if set.counter {
            out.push_str("\t\tcounter\n");
        }
        out.push_str("\t}\n\n");
    }
    let rules = rules();
    let chains = chains();
    for (i, chain) in chains.iter().enumerate() {
        out.push_str(&format!("\tchain {} {{\n", chain.name));
        if let Some((hook, priority, kind)) = chain.base {
            let kind = match kind {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            };
            let hook = match hook {
                Hook::Prerouting => "prerouting",
                Hook::Input => "input",
                Hook::Forward => "forward",
                Hook::Output => "output",
                Hook::Postrouting => "postrouting",
            };
            out.push_str(&format!(
                "\t\ttype {kind} hook {hook} priority {priority}; policy accept;\n"
            ));
        }
        for rule in rules.iter().filter(|rule| rule.chain == chain.name) {
            out.push_str(&format!("\t\t{}\n", rule.nft));
        }
        out.push_str(if i + 1 < chains.len() {
            "\t}\n\n"
        } else {
            "\t}\n"
        });
    }
    out.push_str("}\n");
    out
}

/// An interface name as the kernel compares it: NUL-padded to `IFNAMSIZ`.
pub fn ifname_bytes(name: &str) -> [u8; IFNAME_LEN] {
    let mut out = [0; IFNAME_LEN];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

/// An address's bytes as nftables compares them: network order.
fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn addr_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// One published port: host side, target, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    pub proto: Proto,
    /// `None` when published on every local address of the target's family.
    pub host_addr: Option<IpAddr>,
    pub host_port: u16,
    /// The target; its family is the mapping's family.
    pub to_addr: IpAddr,
    pub to_port: u16,
    /// The host-side interface toward the target.
    pub via: String,
    /// The namespace the target address was read from, when given by `--netns`.
    #[serde(default)]
    pub netns: Option<String>,
    /// That namespace's inode, which tells a deleted and re-created namespace apart.
    #[serde(default)]
    pub netns_inode: Option<u64>,
    /// Published with `--allow-direct`: hosts routing to the target may reach its other
    /// ports.
    #[serde(default)]
    pub allow_direct: bool,
    /// Made by the CNI plugin for this container (`CNI_CONTAINERID`) …
    #[serde(default)]
    pub container: Option<String>,
    /// … and this interface of it (`CNI_IFNAME`).
    #[serde(default)]
    pub container_ifname: Option<String>,
}

impl Mapping {
    pub fn is_ipv6(&self) -> bool {
        self.to_addr.is_ipv6()
    }

    /// The map the mapping lives in.
    pub fn set(&self) -> &'static str {
        match (self.is_ipv6(), self.host_addr.is_some()) {
            (false, false) => SET_ANY4,
            (false, true) => SET_ADDR4,
            (true, false) => SET_ANY6,
            (true, true) => SET_ADDR6,
        }
    }

    /// Whether the mapping can be reached through the host's loopback. Only IPv4 can:
    /// 127.0.0.1 is DNATed with route_localnet on `via`; `[::1]` never is.
    pub fn serves_loopback(&self) -> bool {
        !self.is_ipv6() && self.host_addr.is_none_or(|addr| addr.is_loopback())
    }

    /// The map key: `[ip daddr .] meta l4proto . th dport`, each member padded to 4 bytes.
    pub fn key(&self) -> Vec<u8> {
        let mut key = self.host_addr.map(addr_bytes).unwrap_or_default();
        key.extend_from_slice(&[self.proto.number(), 0, 0, 0]);
        key.extend_from_slice(&self.host_port.to_be_bytes());
        key.extend_from_slice(&[0, 0]);
        key
    }

    /// The map data: `ip . port` of the target.
    pub fn data(&self) -> Vec<u8> {
        let mut data = addr_bytes(self.to_addr);
        data.extend_from_slice(&self.to_port.to_be_bytes());
        data.extend_from_slice(&[0, 0]);
        data
    }

    /// The element comment: readable in `nft list`, and how `ls` recovers `via` and the
    /// namespace, which the map data does not hold.
    pub fn comment(&self) -> String {
        let mut comment = format!("via={}", self.via);
        // Names that would not fit nftables' 128-byte comments are left out; the inode
        // still ties the mapping to its namespace.
        if let Some(netns) = self.netns.as_ref().filter(|name| name.len() <= 64) {
            comment.push_str(" netns=");
            comment.push_str(netns);
        }
        if let Some(inode) = self.netns_inode {
            comment.push_str(&format!(" ino={inode}"));
        }
        if self.allow_direct {
            comment.push_str(" direct=allow");
        }
        if let Some(container) = &self.container {
            let ifname = self.container_ifname.as_deref().unwrap_or_default();
            comment.push_str(&format!(" cni={container}/{ifname}"));
        }
        comment
    }

    /// Rebuilds a mapping from a map element; `None` for an element nsport did not write.
    pub fn from_element(
        set: &str,
        key: &[u8],
        data: &[u8],
        comment: Option<&str>,
    ) -> Option<Mapping> {
        let addr_len = match set {
            SET_ANY4 | SET_ADDR4 => 4,
            SET_ANY6 | SET_ADDR6 => 16,
            _ => return None,
        };
        let (host_addr, rest) = match set {
            SET_ADDR4 | SET_ADDR6 if key.len() == addr_len + 8 => {
                (Some(addr_from(&key[..addr_len])?), &key[addr_len..])
            }
            SET_ANY4 | SET_ANY6 if key.len() == 8 => (None, key),
            _ => return None,
        };
        if data.len() != addr_len + 4 {
            return None;
        }
        let mut via = String::new();
        let mut netns = None;
        let mut netns_inode = None;
        let mut allow_direct = false;
        let mut container = None;
        let mut container_ifname = None;
        for field in comment.unwrap_or_default().split(' ') {
            match field.split_once('=') {
                Some(("cni", value)) => {
                    let (id, ifname) = value.split_once('/').unwrap_or((value, ""));
                    container = Some(id.to_string());
                    container_ifname = (!ifname.is_empty()).then(|| ifname.to_string());
                }
                Some(("via", value)) => via = value.to_string(),
                Some(("netns", value)) => netns = Some(value.to_string()),
                Some(("ino", value)) => netns_inode = value.parse().ok(),
                Some(("direct", "allow")) => allow_direct = true,
                _ => {}
            }
        }
        Some(Mapping {
            proto: Proto::from_number(rest[0])?,
            host_addr,
            host_port: u16::from_be_bytes([rest[4], rest[5]]),
            to_addr: addr_from(&data[..addr_len])?,
            to_port: u16::from_be_bytes([data[addr_len], data[addr_len + 1]]),
            via,
            netns,
            netns_inode,
            allow_direct,
            container,
            container_ifname,
        })
    }
}

/// One element to add to or delete from a set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub set: &'static str,
    pub key: Vec<u8>,
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
            data: Some(mapping.data()),
            comment: Some(comment),
        }
    }

    pub fn iface(name: &str) -> Element {
        Element {
            set: SET_IFACES,
            key: ifname_bytes(name).to_vec(),
            data: None,
            comment: None,
        }
    }

    /// The key as nft writes it, read back from its bytes.
    fn key_text(&self) -> String {
        match self.set {
            SET_IFACES => {
                let name = self.key.split(|b| *b == 0).next().unwrap_or_default();
                format!("{:?}", String::from_utf8_lossy(name))
            }
            SET_HAIRPIN4 | SET_HAIRPIN6 => match addr_from(&self.key[..self.key.len() / 2]) {
                Some(addr) => format!("{addr} . {addr}"),
                None => String::new(),
            },
            SET_TARGETS4 | SET_TARGETS6 => addr_from(&self.key)
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
            // A map key: `[ADDR . ]PROTO . PORT`, the service in its last 8 bytes.
            _ => {
                let cut = self.key.len().saturating_sub(8);
                let (host, service) = self.key.split_at(cut);
                let host = addr_from(host)
                    .map(|addr| format!("{addr} . "))
                    .unwrap_or_default();
                let proto = Proto::from_number(service[0]).map_or("?".into(), |p| p.to_string());
                let port = u16::from_be_bytes([service[4], service[5]]);
                format!("{host}{proto} . {port}")
            }
        }
    }

    /// The map data as nft writes it: `ADDR . PORT`.
    fn data_text(&self) -> Option<String> {
        let data = self.data.as_ref()?;
        let (addr, port) = data.split_at(data.len() - 4);
        let port = u16::from_be_bytes([port[0], port[1]]);
        Some(format!("{} . {port}", addr_from(addr)?))
    }

    /// The element of a helper set (interfaces, hairpin or targets) with this key.
    pub fn helper(set: &str, key: &[u8]) -> Option<Element> {
        let half = key.len() / 2;
        match set {
            SET_IFACES => {
                let name = key.split(|b| *b == 0).next()?;
                Some(Element::iface(std::str::from_utf8(name).ok()?))
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
            data: None,
            comment: None,
        }
    }

    pub fn set_id(&self) -> u32 {
        set_id(self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host_addr: Option<Ipv4Addr>) -> Mapping {
        Mapping {
            proto: Proto::Udp,
            host_addr: host_addr.map(IpAddr::V4),
            host_port: 5353,
            to_addr: IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2)),
            to_port: 53,
            via: "br0".into(),
            netns: Some("ns1".into()),
            netns_inode: Some(4026532000),
            allow_direct: false,
            container: None,
            container_ifname: None,
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

    #[test]
    fn elements_round_trip_to_mappings() {
        for original in [
            mapping(None),
            mapping(Some(Ipv4Addr::new(192, 0, 2, 1))),
            mapping6(None),
            mapping6(Some("2001:db8::1")),
        ] {
            let element = Element::mapping(&original);
            let back = Mapping::from_element(
                element.set,
                &element.key,
                element.data.as_deref().unwrap(),
                element.comment.as_deref(),
            );
            assert_eq!(back, Some(original));
        }
    }

    #[test]
    fn foreign_elements_are_ignored() {
        assert_eq!(
            Mapping::from_element(SET_ANY4, &[6, 0, 0, 0], &[0; 8], None),
            None
        );
        assert_eq!(
            Mapping::from_element(SET_ANY4, &[1, 0, 0, 0, 0, 80, 0, 0], &[0; 8], None),
            None
        );
    }

    #[test]
    fn concatenated_types_match_nft() {
        // Values read from `nft --debug=mnl` for the same declarations.
        let sets = sets();
        assert_eq!(sets[0].key_type, 0x30d);
        assert_eq!(sets[1].key_type, 0x730d);
        assert_eq!(sets[2].key_type, 0x1c7);
        assert_eq!(sets[0].data, Some((0x1cd, 8)));
        assert_eq!(sets[0].userdata.len(), 38);
        assert_eq!(sets[2].userdata.len(), 16);
        assert_eq!(sets[3].userdata, [0, 4, 1, 0, 0, 0]);
    }

    #[test]
    fn loopback_service() {
        assert!(mapping(None).serves_loopback());
        assert!(mapping(Some(Ipv4Addr::LOCALHOST)).serves_loopback());
        assert!(!mapping(Some(Ipv4Addr::new(192, 0, 2, 1))).serves_loopback());
    }
}
