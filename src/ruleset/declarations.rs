//! The table's chains and its sets and maps, with the set ids by which rules in the same
//! batch refer to a new set.

use super::expr::{ChainDef, ChainType, Hook, SetDef};
use super::{
    IFNAME_LEN, SET_ADDR4, SET_ADDR6, SET_ADDRRANGE4, SET_ADDRRANGE6, SET_ALLOW4, SET_ALLOW6,
    SET_ANY4, SET_ANY6, SET_CLOSED, SET_HAIRPIN4, SET_HAIRPIN6, SET_INSIDE, SET_LIMITED, SET_ON4,
    SET_ON6, SET_ONADDR4, SET_ONADDR6, SET_RANGE4, SET_RANGE6, SET_REACH4, SET_REACH6,
    SET_TARGETS4, SET_TARGETS6,
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

/// nftables' byte orders, as its set user data records them.
const BYTEORDER_CONCAT: u32 = 0;
const BYTEORDER_HOST: u32 = 1;
const BYTEORDER_BIG_ENDIAN: u32 = 2;

/// The user data `nft` writes for a `type` declaration: the byte order of key and data
/// (0 for concatenations) and, for concatenations, an empty `typeof` record that nft uses
/// to remember the concatenation's shape; a map's data also gets its interval record.
fn set_userdata(key: &[Field], data: &[Field]) -> Vec<u8> {
    const KEYBYTEORDER: u8 = 0;
    const DATABYTEORDER: u8 = 1;
    const KEY_TYPEOF: u8 = 3;
    const DATA_TYPEOF: u8 = 4;
    const DATA_INTERVAL: u8 = 6;
    let byteorder = |fields: &[Field]| match fields {
        [single] => single.byteorder(),
        _ => BYTEORDER_CONCAT,
    };
    // Nested: expression kind 13 (concatenation) with no members.
    let empty_concat = [udata(0, &13u32.to_le_bytes()), udata(1, &[])].concat();
    let mut out = udata(KEYBYTEORDER, &byteorder(key).to_le_bytes());
    if !data.is_empty() {
        out.extend(udata(DATABYTEORDER, &byteorder(data).to_le_bytes()));
    }
    if key.len() > 1 {
        out.extend(udata(KEY_TYPEOF, &empty_concat));
    }
    if data.len() > 1 {
        out.extend(udata(DATA_TYPEOF, &empty_concat));
    }
    if !data.is_empty() {
        out.extend(udata(DATA_INTERVAL, &0u32.to_le_bytes()));
    }
    out
}

/// One member of a key or of a map's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// An address of the row's family.
    Addr,
    Proto,
    Service,
    Ifname,
}

use Field::{Addr, Ifname, Proto, Service};

impl Field {
    fn nft_name(self, v6: bool) -> &'static str {
        match self {
            Addr if v6 => "ipv6_addr",
            Addr => "ipv4_addr",
            Proto => "inet_proto",
            Service => "inet_service",
            Ifname => "ifname",
        }
    }

    fn datatype(self, v6: bool) -> u32 {
        use datatype::*;
        match self {
            Addr if v6 => IP6ADDR,
            Addr => IPADDR,
            Proto => INET_PROTOCOL,
            Service => INET_SERVICE,
            Ifname => IFNAME,
        }
    }

    /// Its length as the kernel's interval sets are told it (`NFTA_SET_DESC_CONCAT`).
    fn len(self, v6: bool) -> u8 {
        match self {
            Addr if v6 => 16,
            Addr => 4,
            Proto => 1,
            Service => 2,
            Ifname => IFNAME_LEN as u8,
        }
    }

    /// Its length in a key or data: every member padded to 4 bytes.
    fn padded_len(self, v6: bool) -> u32 {
        u32::from(self.len(v6)).div_ceil(4) * 4
    }

    fn byteorder(self) -> u32 {
        match self {
            Ifname => BYTEORDER_HOST,
            _ => BYTEORDER_BIG_ENDIAN,
        }
    }
}

/// One set or map of each address family: a row here declares both.
struct FamilySet {
    /// The IPv4 and the IPv6 one.
    names: [&'static str; 2],
    key: &'static [Field],
    /// Empty for a set.
    data: &'static [Field],
    counter: bool,
    interval: bool,
}

/// The sets and maps of each family, in the order `nft list` shows them. The mapping maps
/// come first: exact ports (hashed), then identity port ranges (intervals whose data is
/// only the target address: NAT to an address alone keeps the destination port).
const FAMILY_SETS: &[FamilySet] = &[
    // map any4 { type inet_proto . inet_service : ipv4_addr . inet_service; counter; }
    FamilySet {
        names: [SET_ANY4, SET_ANY6],
        key: &[Proto, Service],
        data: &[Addr, Service],
        counter: true,
        interval: false,
    },
    // map addr4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; … }
    FamilySet {
        names: [SET_ADDR4, SET_ADDR6],
        key: &[Addr, Proto, Service],
        data: &[Addr, Service],
        counter: true,
        interval: false,
    },
    // map on4 { type ifname . inet_proto . inet_service : ipv4_addr . inet_service; … }:
    // published on one interface (`--on`), looked up before the maps without one.
    FamilySet {
        names: [SET_ON4, SET_ON6],
        key: &[Ifname, Proto, Service],
        data: &[Addr, Service],
        counter: true,
        interval: false,
    },
    // map onaddr4 { type ifname . ipv4_addr . inet_proto . inet_service : … }
    FamilySet {
        names: [SET_ONADDR4, SET_ONADDR6],
        key: &[Ifname, Addr, Proto, Service],
        data: &[Addr, Service],
        counter: true,
        interval: false,
    },
    // map range4 { type inet_service . inet_proto : ipv4_addr; flags interval; counter; }:
    // the port first, which picks the one range that can hold it (`key_order`).
    FamilySet {
        names: [SET_RANGE4, SET_RANGE6],
        key: &[Service, Proto],
        data: &[Addr],
        counter: true,
        interval: true,
    },
    // map addrrange4 { type ipv4_addr . inet_service . inet_proto : ipv4_addr; flags interval; … }
    FamilySet {
        names: [SET_ADDRRANGE4, SET_ADDRRANGE6],
        key: &[Addr, Service, Proto],
        data: &[Addr],
        counter: true,
        interval: true,
    },
    // set hairpin4 { type ipv4_addr . ipv4_addr; }: a namespace reaching its own port.
    FamilySet {
        names: [SET_HAIRPIN4, SET_HAIRPIN6],
        key: &[Addr, Addr],
        data: &[],
        counter: false,
        interval: false,
    },
    // set reach4 { type ifname . ipv4_addr; }: a target behind its interface.
    FamilySet {
        names: [SET_REACH4, SET_REACH6],
        key: &[Ifname, Addr],
        data: &[],
        counter: false,
        interval: false,
    },
    // set targets4 { type ipv4_addr; }: targets protected from direct access.
    FamilySet {
        names: [SET_TARGETS4, SET_TARGETS6],
        key: &[Addr],
        data: &[],
        counter: false,
        interval: false,
    },
];

/// The source allow-lists (`--allow-from`), as sets of intervals so that a prefix is one
/// element: `limited` holds the host ports that have a list (one set for both families),
/// and `allow4`/`allow6` each prefix of a list with its port. Each key leads with the
/// field that picks the fewest elements, which keeps a lookup short however many ports
/// and prefixes there are (see `allow_list`).
const ALLOW_SETS: &[FamilySet] = &[
    // set limited { type inet_service . inet_proto; flags interval; }
    FamilySet {
        names: [SET_LIMITED, SET_LIMITED],
        key: &[Service, Proto],
        data: &[],
        counter: false,
        interval: true,
    },
    // set allow4 { type ipv4_addr . inet_service . inet_proto; flags interval; }
    FamilySet {
        names: [SET_ALLOW4, SET_ALLOW6],
        key: &[Addr, Service, Proto],
        data: &[],
        counter: false,
        interval: true,
    },
];

/// A key's or data's type as `nft list` prints it.
fn type_text(fields: &[Field], v6: bool) -> String {
    let names: Vec<&str> = fields.iter().map(|f| f.nft_name(v6)).collect();
    names.join(" . ")
}

fn family_set(row: &FamilySet, v6: bool, id: u32) -> SetDef {
    let datatypes = |fields: &[Field]| {
        let types: Vec<u32> = fields.iter().map(|f| f.datatype(v6)).collect();
        datatype::concat(&types)
    };
    let padded = |fields: &[Field]| fields.iter().map(|f| f.padded_len(v6)).sum::<u32>();
    let mut nft_type = type_text(row.key, v6);
    if !row.data.is_empty() {
        nft_type = format!("{nft_type} : {}", type_text(row.data, v6));
    }
    SetDef {
        name: row.names[usize::from(v6)],
        nft_type,
        id,
        key_type: datatypes(row.key),
        key_len: padded(row.key),
        data: (!row.data.is_empty()).then(|| (datatypes(row.data), padded(row.data))),
        counter: row.counter,
        interval: row.interval,
        fields: match row.interval {
            true => row.key.iter().map(|f| f.len(v6)).collect(),
            false => Vec::new(),
        },
        userdata: set_userdata(row.key, row.data),
    }
}

/// The allow-lists in the table's order: `limited` once, then `allow4` and `allow6`.
const ALLOW_ORDER: [(&FamilySet, bool); 3] = [
    (&ALLOW_SETS[0], false),
    (&ALLOW_SETS[1], false),
    (&ALLOW_SETS[1], true),
];

/// The names of the sets and maps, in the order `nft list` shows them: each family's,
/// then those of no family, then the allow-lists. A set's id (by which rules of the
/// batch that creates it refer to it) is its position here, from 1.
fn set_names() -> impl Iterator<Item = &'static str> {
    let family = [false, true].into_iter().flat_map(|v6| {
        FAMILY_SETS
            .iter()
            .map(move |row| row.names[usize::from(v6)])
    });
    let allow = ALLOW_ORDER
        .iter()
        .map(|(row, v6)| row.names[usize::from(*v6)]);
    family.chain([SET_INSIDE, SET_CLOSED]).chain(allow)
}

/// The sets and maps, declared in the order `nft list` shows them (that of `set_names`):
/// each family's, then those of no family, then the allow-lists.
pub fn sets() -> Vec<SetDef> {
    let mut sets: Vec<SetDef> = Vec::new();
    for v6 in [false, true] {
        for row in FAMILY_SETS {
            let id = sets.len() as u32 + 1;
            sets.push(family_set(row, v6, id));
        }
    }
    // set inside { type ifname; }: interfaces toward published namespaces, the only
    // ones new forwarded connections may come from once nsport turned forwarding on.
    // set closed { type nf_proto; }: the families whose forwarding nsport turned on.
    for (name, nft_type, key_type, key_len, userdata) in [
        (
            SET_INSIDE,
            "ifname",
            datatype::IFNAME,
            IFNAME_LEN as u32,
            set_userdata(&[Ifname], &[]),
        ),
        (
            SET_CLOSED,
            "nf_proto",
            datatype::NFPROTO,
            1,
            udata(0, &BYTEORDER_CONCAT.to_le_bytes()),
        ),
    ] {
        let id = sets.len() as u32 + 1;
        sets.push(SetDef {
            name,
            nft_type: nft_type.to_string(),
            id,
            key_type,
            key_len,
            data: None,
            counter: false,
            interval: false,
            fields: Vec::new(),
            userdata,
        });
    }
    for (row, v6) in ALLOW_ORDER {
        let id = sets.len() as u32 + 1;
        sets.push(family_set(row, v6, id));
    }
    sets
}

/// The set id of a set of the table, by its name. Every element a batch adds names its
/// set's id, so this is on the path of every publish: it walks the names alone, where
/// declaring every set (their types' text, their user data) cost a tenth of a publish's
/// instructions.
pub(super) fn set_id(name: &str) -> u32 {
    set_names()
        .position(|set| set == name)
        .map(|position| position as u32 + 1)
        .expect("a set of the table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_ids_are_positions_in_the_declarations() {
        let sets = sets();
        assert_eq!(set_names().count(), sets.len());
        for set in &sets {
            assert_eq!(set_id(set.name), set.id, "{}", set.name);
        }
        assert_eq!(set_id(SET_ANY4), 1);
    }

    #[test]
    fn concatenated_types_match_nft() {
        // Values read from `nft --debug=mnl` for the same declarations.
        let sets = sets();
        let set = |name: &str| sets.iter().find(|s| s.name == name).unwrap().clone();
        assert_eq!(sets[0].key_type, 0x30d);
        assert_eq!(sets[1].key_type, 0x730d);
        assert_eq!(sets[0].data, Some((0x1cd, 8)));
        assert_eq!(sets[0].userdata.len(), 38);
        // map range4 { type inet_service . inet_proto : ipv4_addr; flags interval; }, as
        // `nft --debug=mnl` writes it.
        assert_eq!(set(SET_RANGE4).key_type, 0x34c);
        assert_eq!(set(SET_RANGE4).data, Some((7, 4)));
        assert_eq!(set(SET_RANGE4).fields, [2, 1]);
        assert_eq!(
            set(SET_RANGE4).userdata,
            [
                0, 4, 0, 0, 0, 0, 1, 4, 2, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 6, 4, 0, 0, 0, 0
            ]
        );
        assert_eq!(
            (set(SET_ADDRRANGE4).key_type, set(SET_ADDRRANGE4).key_len),
            (0x734c, 12)
        );
        assert_eq!(set(SET_ADDRRANGE4).fields, [4, 2, 1]);
        // set hairpin4 { type ipv4_addr . ipv4_addr; }
        assert_eq!(set(SET_HAIRPIN4).key_type, 0x1c7);
        assert_eq!(set(SET_HAIRPIN4).userdata.len(), 16);
        // set reach4 { type ifname . ipv4_addr; }
        assert_eq!(set(SET_REACH4).key_type, 0xa47);
        assert_eq!(set(SET_REACH4).key_len, 20);
        assert_eq!(
            set(SET_REACH4).userdata,
            [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0]
        );
        assert_eq!(set(SET_TARGETS4).userdata, [0, 4, 2, 0, 0, 0]);
        let range6 = sets.iter().find(|s| s.name == SET_ADDRRANGE6).unwrap();
        assert_eq!(
            range6.nft_type,
            "ipv6_addr . inet_service . inet_proto : ipv6_addr"
        );
        assert_eq!((range6.key_len, range6.data), (24, Some((8, 16))));
        assert_eq!(range6.fields, [16, 2, 1]);
        // map on4 { type ifname . inet_proto . inet_service : ipv4_addr . inet_service; }
        assert_eq!(set(SET_ON4).key_type, (41 << 12) | (12 << 6) | 13);
        assert_eq!(set(SET_ON4).key_len, 24);
        assert_eq!(set(SET_ONADDR6).key_len, 16 + 16 + 8);
        let inside = sets.iter().find(|s| s.name == SET_INSIDE).unwrap();
        assert_eq!(inside.userdata, [0, 4, 1, 0, 0, 0]);
        // set allow4 { type ipv4_addr . inet_service . inet_proto; flags interval; }, as
        // `nft --debug=mnl` writes it.
        let allow4 = sets.iter().find(|s| s.name == SET_ALLOW4).unwrap();
        assert_eq!(allow4.key_type, 0x734c);
        assert_eq!(allow4.key_len, 12);
        assert_eq!(allow4.fields, [4, 2, 1]);
        assert!(allow4.interval);
        assert_eq!(
            allow4.userdata,
            [0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0]
        );
        let allow6 = sets.iter().find(|s| s.name == SET_ALLOW6).unwrap();
        assert_eq!(
            (allow6.key_len, &allow6.fields[..]),
            (24, &[16u8, 2, 1][..])
        );
        let limited = sets.iter().find(|s| s.name == SET_LIMITED).unwrap();
        assert_eq!((limited.key_len, &limited.fields[..]), (8, &[2u8, 1][..]));
    }
}
