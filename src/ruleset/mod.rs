//! What `table inet nsport` should contain, as plain data.
//!
//! Nothing here talks to the kernel: `crate::netlink` turns these values into nftables
//! messages. The rules are fixed; a published port is only a map element, so the per-packet
//! cost is one hash lookup however many ports are published.
//!
//! ```text
//! table inet nsport {
//!   comment "nsport-layout=4"
//!   map any4  { type inet_proto . inet_service : ipv4_addr . inet_service; }
//!   map addr4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
//!   map on4 { type ifname . inet_proto . inet_service : ipv4_addr . inet_service; }
//!   map onaddr4 { type ifname . ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
//!   map range4 { type inet_service . inet_proto : ipv4_addr; flags interval; }
//!   map addrrange4 { type ipv4_addr . inet_service . inet_proto : ipv4_addr; flags interval; }
//!   map any6, addr6, on6, onaddr6, range6, addrrange6, set hairpin6, targets6: the same for IPv6
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

mod allow_list;
pub use allow_list::allow_elements_for;
mod key_order;
pub use key_order::KeyOrder;
mod declarations;
mod element;
mod element_batch;
mod expr;
mod mapping_rules;
pub mod metadata;
mod rules;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use crate::model::Mapping;
pub use declarations::{
    CHAIN_COUNT_REPLY, CHAIN_COUNT_REQUEST, CHAIN_FORWARD, CHAIN_GUARD, CHAIN_OUTPUT,
    CHAIN_POSTROUTING, CHAIN_PREROUTING, CHAIN_PUBLISH, chains, sets,
};
pub use element::{
    Element, host_key, host_key_in, host_key_on, host_sets, host_sets_on, is_range_set, map_of,
};
pub use expr::{
    ChainDef, ChainType, CmpOp, CtKey, Expr, Hook, MetaKey, PayloadBase, RuleDef, SetDef, Verdict,
};
pub use rules::rules;

/// The one table nsport owns, in the `inet` family.
pub const TABLE: &str = "nsport";

/// The layout of the table this nsport writes: which sets, maps, chains and rules it has and
/// how its elements are written. It is recorded in the table's comment (`nsport-layout=N`,
/// nftables' table user data), set when the table is created; a table without one is of
/// layout 1 when it has the set `ifaces`, of layout 2 otherwise (see the engine's `layout`).
///
/// - 1: `set ifaces { type ifname; }` keyed the masquerades and the forward protection;
///   comments held names as they are.
/// - 2: sets keyed per target (`reach4`/`reach6`), `inside` and `closed` for forwarding nsport
///   turned on, IPv4 link-local returns, percent-encoded comments with `net=`.
/// - 3: interval maps `range4`/`addrrange4`/`range6`/`addrrange6`: an identity port range is
///   one element whose data is only the target address; interface-bound maps
///   (`on4`/`onaddr4`, `on6`/`onaddr6`), looked up before the address maps by `publish` and
///   by the counting chains.
/// - 3 also brought source allow-lists: the sets `limited`, `allow4` and `allow6`, the rules
///   that return before DNAT for a source not on a port's list, and the guard against 127/8
///   sources from other interfaces than `lo` (a table without them is repaired by the next
///   change, as a damaged chain is).
/// - 4: the keys of the sets of intervals put the port before the protocol (`th dport .
///   meta l4proto` in the range maps and `limited`, after the address in `addrrange4`),
///   and the allow-lists the source first (`ip saddr . th dport . meta l4proto`): led by
///   the protocol, a lookup walked every range of the protocol and every prefix of a
///   port's list (see `key_order`).
pub const LAYOUT: u32 = 4;

/// How the table's comment names its layout.
pub const LAYOUT_KEY: &str = "nsport-layout=";

/// The table's comment: its layout.
pub fn layout_comment() -> String {
    format!("{LAYOUT_KEY}{LAYOUT}")
}

/// The table's user data as nft writes a table comment: type 0, length, text and a NUL.
pub fn layout_userdata() -> Vec<u8> {
    let comment = layout_comment();
    let mut out = vec![0, u8::try_from(comment.len() + 1).expect("a short comment")];
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    out
}

/// The layout a table's user data records, if it records one: a word `nsport-layout=N` in
/// its comment.
pub fn layout_of_userdata(mut userdata: &[u8]) -> Option<u32> {
    while userdata.len() >= 2 {
        let (kind, len) = (userdata[0], usize::from(userdata[1]));
        let value = userdata.get(2..2 + len)?;
        if kind == 0 {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return std::str::from_utf8(text)
                .ok()?
                .split_whitespace()
                .find_map(|word| word.strip_prefix(LAYOUT_KEY)?.parse().ok());
        }
        userdata = &userdata[2 + len..];
    }
    None
}

pub const SET_ANY4: &str = "any4";
pub const SET_RANGE4: &str = "range4";
pub const SET_ADDRRANGE4: &str = "addrrange4";
pub const SET_RANGE6: &str = "range6";
pub const SET_ADDRRANGE6: &str = "addrrange6";
pub const SET_ADDR4: &str = "addr4";
pub const SET_HAIRPIN4: &str = "hairpin4";
pub const SET_REACH4: &str = "reach4";
pub const SET_TARGETS4: &str = "targets4";
pub const SET_ANY6: &str = "any6";
pub const SET_ADDR6: &str = "addr6";
pub const SET_HAIRPIN6: &str = "hairpin6";
pub const SET_REACH6: &str = "reach6";
pub const SET_INSIDE: &str = "inside";
pub const SET_CLOSED: &str = "closed";
pub const SET_TARGETS6: &str = "targets6";
pub const SET_ON4: &str = "on4";
pub const SET_ONADDR4: &str = "onaddr4";
pub const SET_ON6: &str = "on6";
pub const SET_ONADDR6: &str = "onaddr6";
pub const SET_LIMITED: &str = "limited";
pub const SET_ALLOW4: &str = "allow4";
pub const SET_ALLOW6: &str = "allow6";

/// The 16-byte register 1 and the 4-byte registers that follow it (`reg 9`, `reg 10` in
/// `nft --debug=netlink`), numbered as the kernel numbers them.
pub const REG_1: u32 = 1;
pub const REG_2: u32 = 2;
pub const REG32_01: u32 = 9;
pub const REG32_02: u32 = 10;
pub const REG32_05: u32 = 13;
pub const REG32_06: u32 = 14;
pub const REG32_09: u32 = 17;
pub const REG_3: u32 = 3;
pub const REG_VERDICT: u32 = 0;

/// `IFNAMSIZ`: interface names are compared as 16 NUL-padded bytes.
pub const IFNAME_LEN: usize = 16;

/// The whole table, empty, as an `nft -f` script: what nsport creates on first use.
/// It starts by deleting any table of the name, so that loading it twice does not
/// duplicate the rules.
pub fn table_script() -> String {
    let mut out = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\n\ntable inet {TABLE} {{\n\tcomment \"{}\"\n",
        layout_comment()
    );
    for set in sets() {
        let kind = if set.is_map() { "map" } else { "set" };
        out.push_str(&format!(
            "\t{kind} {} {{\n\t\ttype {}\n",
            set.name, set.nft_type
        ));
        if set.interval {
            out.push_str("\t\tflags interval\n");
        }
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
    let mut bytes = Vec::with_capacity(16);
    put_addr(&mut bytes, addr);
    bytes
}

/// Appends an address's bytes, as `addr_bytes` makes them, to a key or data being built.
fn put_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
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
