//! The declarations and expressions of nftables that nsport writes, as plain data that
//! `crate::netlink` encodes.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    /// The kernel's number for the hook (`NF_INET_*`), as netlink carries it.
    pub fn number(self) -> u32 {
        (match self {
            Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
            Hook::Input => libc::NF_INET_LOCAL_IN,
            Hook::Forward => libc::NF_INET_FORWARD,
            Hook::Output => libc::NF_INET_LOCAL_OUT,
            Hook::Postrouting => libc::NF_INET_POST_ROUTING,
        }) as u32
    }
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
    pub nft_type: String,
    /// The transaction-local id by which rules in the same batch refer to a new set.
    pub id: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// `Some((type, len))` for a map.
    pub data: Option<(u32, u32)>,
    /// Every element gets its own packet and byte counter.
    pub counter: bool,
    /// Elements are intervals of their key (`flags interval`): a concatenation whose last
    /// field is a range, looked up by nftables' pipapo set.
    pub interval: bool,
    /// The length in bytes of each field of a concatenated interval key, as the kernel
    /// must be told them (`NFTA_SET_DESC_CONCAT`); empty for other sets.
    pub fields: Vec<u8>,
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
    /// `dnat ip to` (or `ip6`) the address in `reg_addr` and the port in `reg_port`; with
    /// no port, the destination port stays as it is.
    Dnat {
        ipv6: bool,
        reg_addr: u32,
        reg_port: Option<u32>,
    },
    Masquerade,
    /// `byteorder reg = hton(reg, size, len)`: what nft writes after loading a host-order
    /// member (`meta l4proto`) of the key of an interval map, whose ranges compare bytes
    /// in network order. For the one byte of a protocol it changes nothing; it is written
    /// so that the rule is the one nft itself makes of the same text.
    Hton {
        reg: u32,
        size: u32,
        len: u32,
    },
    Verdict(Verdict),
}

/// A rule, with the line `nft list` prints for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDef {
    pub chain: &'static str,
    pub nft: &'static str,
    pub exprs: Vec<Expr>,
}
