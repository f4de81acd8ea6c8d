//! Following a published connection (its first packet and its first reply) through another
//! table's base chain, rule by rule, to learn whether that chain accepts or drops it.
//!
//! A forwarded packet must be accepted by every base chain on the forward hook, in every
//! table: an accept in nsport's chain does not override a drop elsewhere. So each other
//! table's chain is walked as the kernel would walk it, for a packet that is what nsport's
//! published traffic is at that hook: a new connection (ct state new) that DNAT rewrote
//! (ct status dnat), to the target's address and port, through the interface toward it;
//! and the target's reply, back in through that interface (ct state established).
//! What a rule tests that is not known of such a packet (the client's address and port,
//! the interface the client is behind, set lookups, rate limits) is "unknown", and both
//! ways are followed: the answer is every verdict the chain could give. Each byte of the
//! registers a rule loads is known or not, so a comparison is decided only by known bytes.

use std::collections::HashMap;
use std::net::IpAddr;

use super::xtables::{self, Connection, Truth};
use crate::netlink::nftables::{Expr, RulesetRule};

/// What is known of one packet of nsport's published traffic at the forward hook: the
/// first packet of a connection (to the target, through the interface toward it), or the
/// target's first reply (from the target, in through that interface). Both must pass.
#[derive(Debug, Clone)]
pub struct Packet {
    pub ipv6: bool,
    pub l4proto: u8,
    pub reply: bool,
    /// The target's address (after DNAT); unknown for a probe of any port.
    pub target: Option<IpAddr>,
    /// The target's port; unknown for a probe, or for a range of ports published as one.
    pub target_port: Option<u16>,
    /// The address and port the client asked for (the original destination).
    pub host_addr: Option<IpAddr>,
    pub host_port: Option<u16>,
    /// The interface toward the target.
    pub via: Option<String>,
}

impl Packet {
    /// The interface it leaves through (original) or comes in through (reply).
    fn via_name(&self, output: bool) -> Option<Vec<u8>> {
        if output == self.reply {
            return None;
        }
        self.via.as_ref().map(|name| {
            let mut bytes = name.as_bytes().to_vec();
            bytes.resize(16, 0);
            bytes
        })
    }
}

/// Where a chain drops the packet: a rule (by handle) or the base chain's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop {
    pub chain: String,
    /// `None` for the policy.
    pub handle: Option<u64>,
}

impl Drop {
    pub fn describe(&self) -> String {
        match self.handle {
            Some(handle) => format!("rule handle {handle} of chain {}", self.chain),
            None => format!("the policy of chain {}", self.chain),
        }
    }
}

/// Every verdict a base chain could give the packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Some way through accepts.
    pub accepts: bool,
    /// The places that drop (or reject) it on some way through.
    pub drops: Vec<Drop>,
    /// Why some way through could not be followed (a verdict map, a queue).
    pub unsure: Vec<String>,
}

impl Verdict {
    /// Every way through accepts.
    pub fn passes(&self) -> bool {
        self.accepts && self.drops.is_empty() && self.unsure.is_empty()
    }

    /// No way through accepts.
    pub fn blocks(&self) -> bool {
        !self.accepts
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Accept,
    Drop(Drop),
    /// Fell off the end of a chain or returned from it.
    Return,
    Unsure(String),
}

/// What one rule does: nothing (the walk goes on to the next rule), or a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome<'a> {
    Next,
    Accept,
    Drop,
    Return,
    Jump(&'a str),
    Goto(&'a str),
    Unsure(String),
}

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
/// Jumps nest at most this deep in the kernel, too.
const MAX_DEPTH: usize = 16;

/// The rules of one table by chain, built once and walked for every packet.
pub struct Table<'a> {
    chains: HashMap<&'a str, Vec<&'a RulesetRule>>,
}

impl<'a> Table<'a> {
    pub fn new(rules: &'a [RulesetRule]) -> Table<'a> {
        let mut chains: HashMap<&str, Vec<&RulesetRule>> = HashMap::new();
        for rule in rules {
            chains.entry(rule.chain.as_str()).or_default().push(rule);
        }
        Table { chains }
    }

    /// Walks base chain `chain` (with `policy_accepts`) for `packet`.
    pub fn judge(&self, chain: &str, policy_accepts: bool, packet: &Packet) -> Verdict {
        let mut walk = Walk {
            table: self,
            packet,
            memo: HashMap::new(),
        };
        let mut verdict = Verdict::default();
        for end in walk.chain(chain, 0) {
            match end {
                End::Accept => verdict.accepts = true,
                End::Return if policy_accepts => verdict.accepts = true,
                End::Return => push_new(
                    &mut verdict.drops,
                    Drop {
                        chain: chain.to_string(),
                        handle: None,
                    },
                ),
                End::Drop(drop) => push_new(&mut verdict.drops, drop),
                End::Unsure(why) => push_new(&mut verdict.unsure, why),
            }
        }
        verdict
    }
}

/// Walks base chain `chain` (with `policy_accepts`) of a table whose rules are `rules`.
#[cfg(test)]
fn judge(rules: &[RulesetRule], chain: &str, policy_accepts: bool, packet: &Packet) -> Verdict {
    Table::new(rules).judge(chain, policy_accepts, packet)
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

struct Walk<'a> {
    table: &'a Table<'a>,
    packet: &'a Packet,
    /// Where a walk through a chain ends: the packet is fixed and registers do not
    /// outlive a rule, so it is the same every time a chain is jumped to.
    memo: HashMap<&'a str, Vec<End>>,
}

impl<'a> Walk<'a> {
    /// Every end of a walk through `chain`, rule by rule: a loop, not a recursion, so that
    /// long chains cost no stack; only jumps nest, as deep as the kernel lets them.
    fn chain(&mut self, chain: &'a str, depth: usize) -> Vec<End> {
        if let Some(ends) = self.memo.get(chain) {
            return ends.clone();
        }
        let rules = self
            .table
            .chains
            .get(chain)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut ends = Vec::new();
        let mut falls_off = true;
        for rule in rules {
            let mut goes_on = false;
            for outcome in outcomes(rule, self.packet) {
                let end = match outcome {
                    Outcome::Next => {
                        goes_on = true;
                        continue;
                    }
                    Outcome::Accept => End::Accept,
                    Outcome::Drop => End::Drop(Drop {
                        chain: chain.to_string(),
                        handle: Some(rule.handle),
                    }),
                    Outcome::Return => End::Return,
                    Outcome::Unsure(why) => End::Unsure(format!(
                        "rule handle {} of chain {chain}: {why}",
                        rule.handle
                    )),
                    Outcome::Jump(_) | Outcome::Goto(_) if depth >= MAX_DEPTH => {
                        End::Unsure(format!("chain {chain}: jumps nest too deep"))
                    }
                    Outcome::Jump(target) => {
                        for end in self.chain(target, depth + 1) {
                            // Back from the jump, the walk goes on after this rule.
                            match end {
                                End::Return => goes_on = true,
                                other => push_new(&mut ends, other),
                            }
                        }
                        continue;
                    }
                    // The end of a chain reached by goto returns from this one.
                    Outcome::Goto(target) => {
                        for end in self.chain(target, depth + 1) {
                            push_new(&mut ends, end);
                        }
                        continue;
                    }
                };
                push_new(&mut ends, end);
            }
            if !goes_on {
                falls_off = false;
                break;
            }
        }
        if falls_off {
            push_new(&mut ends, End::Return);
        }
        self.memo.insert(chain, ends.clone());
        ends
    }
}

/// The registers of one rule: 4 × 16 bytes, each known or not.
struct Registers([Option<u8>; 64]);

impl Registers {
    /// NFT_REG_1..4 are 16 bytes each; NFT_REG32_00..15 (8..23) are 4 bytes each, over
    /// the same space.
    fn offset(reg: u32) -> Option<usize> {
        match reg {
            1..=4 => Some((reg as usize - 1) * 16),
            8..=23 => Some((reg as usize - 8) * 4),
            _ => None,
        }
    }

    /// Writes `value` (or `len` unknown bytes), zero-padding to the register's 4 bytes as
    /// the kernel does.
    fn write(&mut self, reg: u32, value: Result<Vec<u8>, usize>) {
        let Some(start) = Self::offset(reg) else {
            return;
        };
        let len = match &value {
            Ok(bytes) => bytes.len(),
            Err(len) => *len,
        };
        let padded = len.div_ceil(4) * 4;
        for i in 0..padded {
            let Some(slot) = self.0.get_mut(start + i) else {
                break;
            };
            *slot = match &value {
                Ok(bytes) => Some(bytes.get(i).copied().unwrap_or(0)),
                Err(_) => None,
            };
        }
    }

    fn read(&self, reg: u32, len: usize) -> Option<Vec<u8>> {
        let start = Self::offset(reg)?;
        self.0.get(start..start + len)?.iter().copied().collect()
    }
}

/// Every outcome rule `rule` can have for the packet.
fn outcomes<'a>(rule: &'a RulesetRule, packet: &Packet) -> Vec<Outcome<'a>> {
    let mut registers = Registers([None; 64]);
    let mut outcomes = Vec::new();
    run(&rule.exprs, &mut registers, packet, &mut outcomes);
    outcomes
}

/// Runs `exprs` in order; where a condition is unknown, both ways are taken.
fn run<'a>(exprs: &'a [Expr], regs: &mut Registers, packet: &Packet, out: &mut Vec<Outcome<'a>>) {
    let port = packet.target_port;
    let conn = Connection {
        l4proto: packet.l4proto,
        reply: packet.reply,
        sport: if packet.reply { port } else { None },
        dport: if packet.reply { None } else { port },
        host_port: packet.host_port,
    };
    for (i, expr) in exprs.iter().enumerate() {
        let truth = match expr {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let value = payload(packet, *base, *offset as usize, *len as usize);
                regs.write(*dreg, value.ok_or(*len as usize));
                Truth::Yes
            }
            Expr::Meta { key, dreg } => {
                regs.write(*dreg, meta(packet, *key).ok_or(16));
                Truth::Yes
            }
            Expr::Ct { key, dir, dreg } => {
                regs.write(*dreg, ct(packet, *key, *dir).ok_or(16));
                Truth::Yes
            }
            Expr::Bitwise {
                sreg,
                dreg,
                op,
                mask,
                xor,
            } => {
                let value = regs
                    .read(*sreg, mask.len())
                    .filter(|_| *op == 0)
                    .map(|value| {
                        value
                            .iter()
                            .zip(mask)
                            .zip(xor.iter().chain(std::iter::repeat(&0)))
                            .map(|((v, m), x)| (v & m) ^ x)
                            .collect()
                    });
                regs.write(*dreg, value.ok_or(mask.len()));
                Truth::Yes
            }
            Expr::Cmp { sreg, op, data } => match regs.read(*sreg, data.len()) {
                None => Truth::Unknown,
                Some(value) => {
                    let order = value.as_slice().cmp(data.as_slice());
                    use std::cmp::Ordering::*;
                    Truth::of(match op {
                        0 => order == Equal,
                        1 => order != Equal,
                        2 => order == Less,
                        3 => order != Greater,
                        4 => order == Greater,
                        5 => order != Less,
                        _ => return out.push(Outcome::Unsure(format!("cmp op {op}"))),
                    })
                }
            },
            Expr::Immediate {
                dreg: 0,
                verdict: Some(verdict),
                chain,
                ..
            } => {
                out.push(match (*verdict, chain) {
                    (NF_ACCEPT, _) => Outcome::Accept,
                    (NF_DROP, _) => Outcome::Drop,
                    (libc::NFT_CONTINUE, _) => Outcome::Next,
                    (libc::NFT_BREAK, _) => Outcome::Next,
                    (libc::NFT_RETURN, _) => Outcome::Return,
                    (libc::NFT_JUMP, Some(chain)) => Outcome::Jump(chain),
                    (libc::NFT_GOTO, Some(chain)) => Outcome::Goto(chain),
                    (other, _) => Outcome::Unsure(format!("verdict {other}")),
                });
                return;
            }
            Expr::Immediate { dreg, data, .. } => {
                regs.write(*dreg, Ok(data.clone()));
                Truth::Yes
            }
            Expr::Match { name, rev, info } => xtables::matches(name, *rev, info, &conn),
            Expr::Target { name, .. } => match xtables::target_drops(name) {
                Some(true) => return out.push(Outcome::Drop),
                Some(false) => Truth::Yes,
                None => return out.push(Outcome::Unsure(format!("target {name}"))),
            },
            // A verdict map: which verdict is not judged here.
            Expr::Lookup { verdict: true } => {
                out.push(Outcome::Next);
                return out.push(Outcome::Unsure("a verdict map".into()));
            }
            Expr::Lookup { verdict: false } => {
                // A map lookup may also write a register: whatever it wrote is unknown.
                *regs = Registers([None; 64]);
                Truth::Unknown
            }
            Expr::Other(name) => match name.as_str() {
                "reject" => return out.push(Outcome::Drop),
                "queue" => return out.push(Outcome::Unsure("queue".into())),
                "counter" | "log" | "notrack" | "objref" | "flow_offload" | "last" => Truth::Yes,
                // Rate limits, quotas, dynamic sets: may or may not hold.
                "limit" | "quota" | "connlimit" | "dynset" => Truth::Unknown,
                // Anything else may have loaded a register: what it holds is unknown.
                _ => {
                    *regs = Registers([None; 64]);
                    Truth::Yes
                }
            },
        };
        match truth {
            Truth::Yes => {}
            Truth::No => return out.push(Outcome::Next),
            Truth::Unknown => {
                push_new(out, Outcome::Next);
                let mut copy = Registers(regs.0);
                let mut rest = Vec::new();
                run(&exprs[i + 1..], &mut copy, packet, &mut rest);
                for outcome in rest {
                    push_new(out, outcome);
                }
                return;
            }
        }
    }
    // A rule without a verdict lets the walk go on.
    push_new(out, Outcome::Next);
}

/// The packet's header bytes at the forward hook, as far as they are known: the network
/// header's protocol and the target's address (destination, or source of a reply), the
/// transport header's target port likewise.
fn payload(packet: &Packet, base: u32, offset: usize, len: usize) -> Option<Vec<u8>> {
    const NETWORK: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
    const TRANSPORT: u32 = libc::NFT_PAYLOAD_TRANSPORT_HEADER as u32;
    let mut header = [None; 40];
    let mut put = |at: usize, bytes: &[u8]| {
        for (i, byte) in bytes.iter().enumerate() {
            header[at + i] = Some(*byte);
        }
    };
    match (base, packet.target) {
        (NETWORK, target) if packet.ipv6 => {
            put(6, &[packet.l4proto]);
            if let Some(IpAddr::V6(addr)) = target {
                put(if packet.reply { 8 } else { 24 }, &addr.octets());
            }
        }
        (NETWORK, target) => {
            put(9, &[packet.l4proto]);
            if let Some(IpAddr::V4(addr)) = target {
                put(if packet.reply { 12 } else { 16 }, &addr.octets());
            }
        }
        (TRANSPORT, _) => {
            if let Some(port) = packet.target_port {
                put(if packet.reply { 0 } else { 2 }, &port.to_be_bytes());
            }
        }
        _ => return None,
    }
    header.get(offset..offset + len)?.iter().copied().collect()
}

fn meta(packet: &Packet, key: u32) -> Option<Vec<u8>> {
    let nfproto = if packet.ipv6 {
        libc::NFPROTO_IPV6
    } else {
        libc::NFPROTO_IPV4
    } as u8;
    match key as i32 {
        libc::NFT_META_NFPROTO => Some(vec![nfproto]),
        libc::NFT_META_L4PROTO => Some(vec![packet.l4proto]),
        libc::NFT_META_PROTOCOL => {
            let ethertype: u16 = if packet.ipv6 { 0x86dd } else { 0x0800 };
            Some(ethertype.to_be_bytes().to_vec())
        }
        libc::NFT_META_OIFNAME => packet.via_name(true),
        libc::NFT_META_IIFNAME => packet.via_name(false),
        _ => None,
    }
}

/// Conntrack at the forward hook. The first packet: state new, status DNAT
/// (IPS_DST_NAT and IPS_DST_NAT_DONE; SNAT's bits come later, at postrouting), original
/// direction. The first reply: state established, in the reply direction, the connection
/// now confirmed, its reply seen and its source NAT done. Either way the original
/// destination is what the client asked for.
fn ct(packet: &Packet, key: u32, dir: Option<u8>) -> Option<Vec<u8>> {
    const STATE_NEW: u32 = 1 << 3;
    const STATE_ESTABLISHED: u32 = 1 << 1;
    const DNAT: u32 = 0x20 | 0x100;
    const REPLIED: u32 = DNAT | 0x2 | 0x8 | 0x80;
    let original = dir.is_none_or(|dir| dir == 0);
    let nfproto = if packet.ipv6 {
        libc::NFPROTO_IPV6
    } else {
        libc::NFPROTO_IPV4
    } as u8;
    let (state, status) = if packet.reply {
        (STATE_ESTABLISHED, REPLIED)
    } else {
        (STATE_NEW, DNAT)
    };
    match key as i32 {
        libc::NFT_CT_STATE => Some(state.to_ne_bytes().to_vec()),
        libc::NFT_CT_STATUS => Some(status.to_ne_bytes().to_vec()),
        libc::NFT_CT_DIRECTION => Some(vec![u8::from(packet.reply)]),
        libc::NFT_CT_L3PROTOCOL => Some(vec![nfproto]),
        libc::NFT_CT_PROTOCOL => Some(vec![packet.l4proto]),
        libc::NFT_CT_PROTO_DST if original => packet.host_port.map(|p| p.to_be_bytes().to_vec()),
        libc::NFT_CT_DST | libc::NFT_CT_DST_IP | libc::NFT_CT_DST_IP6 if original => {
            match packet.host_addr? {
                IpAddr::V4(addr) => Some(addr.octets().to_vec()),
                IpAddr::V6(addr) => Some(addr.octets().to_vec()),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(chain: &str, handle: u64, exprs: Vec<Expr>) -> RulesetRule {
        RulesetRule {
            family: libc::NFPROTO_IPV4 as u32,
            table: "filter".into(),
            chain: chain.into(),
            handle,
            exprs,
        }
    }

    fn verdict(code: i32, chain: Option<&str>) -> Expr {
        Expr::Immediate {
            dreg: 0,
            verdict: Some(code),
            chain: chain.map(str::to_string),
            data: Vec::new(),
        }
    }

    /// `ct status dnat`: load, mask IPS_DST_NAT, compare with 0.
    fn ct_status_dnat() -> Vec<Expr> {
        vec![
            Expr::Ct {
                key: libc::NFT_CT_STATUS as u32,
                dir: None,
                dreg: 1,
            },
            Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                op: 0,
                mask: 0x20u32.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            Expr::Cmp {
                sreg: 1,
                op: 1,
                data: vec![0; 4],
            },
        ]
    }

    /// `ip saddr 10.0.0.1`: the source of the first packet is not known.
    fn saddr() -> Vec<Expr> {
        vec![
            Expr::Payload {
                base: 1,
                offset: 12,
                len: 4,
                dreg: 1,
            },
            Expr::Cmp {
                sreg: 1,
                op: 0,
                data: vec![10, 0, 0, 1],
            },
        ]
    }

    /// `tcp dport PORT`, as iptables-nft writes it.
    fn dport(port: u16) -> Vec<Expr> {
        vec![
            Expr::Meta {
                key: libc::NFT_META_L4PROTO as u32,
                dreg: 1,
            },
            Expr::Cmp {
                sreg: 1,
                op: 0,
                data: vec![6],
            },
            Expr::Payload {
                base: 2,
                offset: 2,
                len: 2,
                dreg: 1,
            },
            Expr::Cmp {
                sreg: 1,
                op: 0,
                data: port.to_be_bytes().to_vec(),
            },
        ]
    }

    fn packet(reply: bool) -> Packet {
        Packet {
            ipv6: false,
            l4proto: 6,
            reply,
            target: Some("172.18.0.2".parse().unwrap()),
            target_port: Some(80),
            host_addr: None,
            host_port: Some(3000),
            via: Some("br0".into()),
        }
    }

    fn with(mut exprs: Vec<Expr>, last: Expr) -> Vec<Expr> {
        exprs.push(last);
        exprs
    }

    #[test]
    fn policy_drop_and_the_dnat_accept_that_fixes_it() {
        let blocked = judge(&[], "FORWARD", false, &packet(false));
        assert!(blocked.blocks());
        assert_eq!(
            blocked.drops,
            [Drop {
                chain: "FORWARD".into(),
                handle: None
            }]
        );
        let fixed = [rule("FORWARD", 1, with(ct_status_dnat(), verdict(1, None)))];
        for reply in [false, true] {
            assert!(judge(&fixed, "FORWARD", false, &packet(reply)).passes());
        }
    }

    #[test]
    fn jumps_return_and_gotos_are_followed() {
        let rules = [
            rule("FORWARD", 1, vec![verdict(libc::NFT_JUMP, Some("user"))]),
            rule("FORWARD", 2, vec![verdict(0, None)]),
            rule("user", 3, vec![verdict(libc::NFT_RETURN, None)]),
            rule("user", 4, vec![verdict(1, None)]),
        ];
        let walked = judge(&rules, "FORWARD", true, &packet(false));
        assert!(walked.blocks());
        assert_eq!(walked.drops[0].handle, Some(2), "returned, then dropped");
        let rules = [
            rule("FORWARD", 1, vec![verdict(libc::NFT_GOTO, Some("user"))]),
            rule("FORWARD", 2, vec![verdict(0, None)]),
        ];
        assert!(
            judge(&rules, "FORWARD", true, &packet(false)).passes(),
            "the end of a chain reached by goto returns to the base chain's caller"
        );
    }

    #[test]
    fn what_is_known_decides_and_what_is_not_goes_both_ways() {
        let rules = [
            rule("FORWARD", 1, with(dport(81), verdict(1, None))),
            rule("FORWARD", 2, with(dport(80), verdict(1, None))),
        ];
        assert!(judge(&rules, "FORWARD", false, &packet(false)).passes());
        let by_source = [rule("FORWARD", 1, with(saddr(), verdict(1, None)))];
        let maybe = judge(&by_source, "FORWARD", false, &packet(false));
        assert!(maybe.accepts && !maybe.drops.is_empty() && !maybe.passes());
        assert!(!maybe.blocks());
        // An expression nothing is known of (here a set lookup) holds or not.
        let lookup = [rule(
            "FORWARD",
            1,
            vec![Expr::Lookup { verdict: false }, verdict(0, None)],
        )];
        let maybe = judge(&lookup, "FORWARD", true, &packet(false));
        assert!(maybe.accepts && maybe.drops.len() == 1);
    }

    #[test]
    fn replies_come_in_through_the_target_interface() {
        // iptables-nft's `-o br0 -j ACCEPT`: the first packet passes, the reply does not.
        let mut name = b"br0".to_vec();
        name.resize(16, 0);
        let rules = [rule(
            "FORWARD",
            1,
            vec![
                Expr::Meta {
                    key: libc::NFT_META_OIFNAME as u32,
                    dreg: 1,
                },
                Expr::Cmp {
                    sreg: 1,
                    op: 0,
                    data: name,
                },
                verdict(1, None),
            ],
        )];
        assert!(judge(&rules, "FORWARD", false, &packet(false)).passes());
        let reply = judge(&rules, "FORWARD", false, &packet(true));
        assert!(
            reply.accepts,
            "it may leave through br0 too, as far as is known"
        );
        assert!(!reply.passes());
    }
}
