//! The table's chains and its sets and maps, with the set ids by which rules in the same
//! batch refer to a new set.

use super::expr::{ChainDef, ChainType, Hook, SetDef};
use super::{
    IFNAME_LEN, SET_ADDR4, SET_ADDR6, SET_ALLOW4, SET_ALLOW6, SET_ANY4, SET_ANY6, SET_CLOSED,
    SET_HAIRPIN4, SET_HAIRPIN6, SET_INSIDE, SET_LIMITED, SET_REACH4, SET_REACH6, SET_TARGETS4,
    SET_TARGETS6,
};

/// nftables' datatype numbers (nftables `include/datatype.h`), which `nft list` uses to
/// print keys; a concatenation packs them six bits apart.
mod datatype {
    pub const IPADDR: u32 = 7;
    pub const IP6ADDR: u32 = 8;
    pub const INET_PROTOCOL: u32 = 12;
    pub const INET_SERVICE: u32 = 13;
    pub const IFNAME: u32 = 41;
    pub const NFPROTO: u32 = 2;

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
fn family_sets(v6: bool, ids: [u32; 5]) -> [SetDef; 5] {
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
        intervals: None,
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
            intervals: None,
            userdata: set_userdata(0, None, true),
        },
        // set reach4 { type ifname . ipv4_addr; }
        SetDef {
            name: pick(SET_REACH4, SET_REACH6),
            nft_type: pick("ifname . ipv4_addr", "ifname . ipv6_addr"),
            id: ids[3],
            key_type: concat(&[IFNAME, addr]),
            key_len: IFNAME_LEN as u32 + addr_len,
            data: None,
            counter: false,
            intervals: None,
            userdata: set_userdata(0, None, true),
        },
        // set targets4 { type ipv4_addr; }
        SetDef {
            name: pick(SET_TARGETS4, SET_TARGETS6),
            nft_type: pick("ipv4_addr", "ipv6_addr"),
            id: ids[4],
            key_type: addr,
            key_len: addr_len,
            data: None,
            counter: false,
            intervals: None,
            userdata: set_userdata(2, None, false),
        },
    ]
}

/// The sets and maps, in the order `nft list` shows them.
pub fn sets() -> Vec<SetDef> {
    let mut sets = family_sets(false, [1, 2, 3, 4, 5]).to_vec();
    sets.extend(family_sets(true, [6, 7, 8, 9, 10]));
    sets.extend([
        // set inside { type ifname; }: interfaces toward published namespaces, the only
        // ones new forwarded connections may come from once nsport turned forwarding on.
        SetDef {
            name: SET_INSIDE,
            nft_type: "ifname",
            id: 11,
            key_type: datatype::IFNAME,
            key_len: IFNAME_LEN as u32,
            data: None,
            counter: false,
            intervals: None,
            userdata: set_userdata(1, None, false),
        },
        // set closed { type nf_proto; }: the families whose forwarding nsport turned on.
        SetDef {
            name: SET_CLOSED,
            nft_type: "nf_proto",
            id: 12,
            key_type: datatype::NFPROTO,
            key_len: 1,
            data: None,
            counter: false,
            intervals: None,
            userdata: set_userdata(0, None, false),
        },
    ]);
    sets.extend(allow_sets());
    sets
}

/// The source allow-lists (`--allow-from`), as sets of intervals so that a prefix is one
/// element and a lookup costs the same whatever the number of ports and prefixes: `limited`
/// holds the host ports that have a list, `allow4`/`allow6` each port with each prefix of
/// its list. Every row is one declaration: name, nft type, set id, key type, field lengths.
fn allow_sets() -> Vec<SetDef> {
    use datatype::*;
    let rows: [(&'static str, &'static str, u32, u32, &'static [u8]); 3] = [
        // set limited { type inet_proto . inet_service; flags interval; }
        (
            SET_LIMITED,
            "inet_proto . inet_service",
            13,
            concat(&[INET_PROTOCOL, INET_SERVICE]),
            &[1, 2],
        ),
        // set allow4 { type inet_proto . inet_service . ipv4_addr; flags interval; }
        (
            SET_ALLOW4,
            "inet_proto . inet_service . ipv4_addr",
            14,
            concat(&[INET_PROTOCOL, INET_SERVICE, IPADDR]),
            &[1, 2, 4],
        ),
        // set allow6 { type inet_proto . inet_service . ipv6_addr; flags interval; }
        (
            SET_ALLOW6,
            "inet_proto . inet_service . ipv6_addr",
            15,
            concat(&[INET_PROTOCOL, INET_SERVICE, IP6ADDR]),
            &[1, 2, 16],
        ),
    ];
    rows.into_iter()
        .map(|(name, nft_type, id, key_type, fields)| SetDef {
            name,
            nft_type,
            id,
            key_type,
            // Each field padded to a 4-byte register.
            key_len: fields
                .iter()
                .map(|len| u32::from(*len).div_ceil(4) * 4)
                .sum(),
            data: None,
            counter: false,
            intervals: Some(fields),
            userdata: set_userdata(0, None, true),
        })
        .collect()
}

pub(super) fn set_id(name: &str) -> u32 {
    sets()
        .iter()
        .find(|set| set.name == name)
        .map(|set| set.id)
        .expect("a set of the table")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // set reach4 { type ifname . ipv4_addr; }
        assert_eq!(sets[3].key_type, 0xa47);
        assert_eq!(sets[3].key_len, 20);
        assert_eq!(
            sets[3].userdata,
            [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0]
        );
        assert_eq!(sets[4].userdata, [0, 4, 2, 0, 0, 0]);
        // set allow4 { type inet_proto . inet_service . ipv4_addr; flags interval; }, as
        // `nft --debug=mnl` writes it.
        let allow4 = sets.iter().find(|s| s.name == SET_ALLOW4).unwrap();
        assert_eq!(allow4.key_type, 0xc347);
        assert_eq!(allow4.key_len, 12);
        assert_eq!(allow4.intervals, Some(&[1u8, 2, 4][..]));
        assert_eq!(
            allow4.userdata,
            [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0]
        );
        let allow6 = sets.iter().find(|s| s.name == SET_ALLOW6).unwrap();
        assert_eq!(allow6.key_len, 24);
    }
}
