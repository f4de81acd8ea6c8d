//! Other tables that would drop what nsport publishes.
//!
//! A packet must be accepted by every base chain on its hook, in every table. A forward
//! chain elsewhere (firewalld, Docker's iptables-nft) that drops by policy drops traffic to
//! published ports from outside whatever nsport accepts — unless one of its rules accepts
//! DNATed traffic first (`ct status dnat accept`, the fix nsport suggests). Chains are
//! judged by that effect: their rules are read, in the ip, ip6 and inet families.

use crate::netlink::nftables::{self, ChainDump};
use crate::ruleset::TABLE;

const NF_DROP: u32 = 0;

fn family_name(family: u32) -> &'static str {
    match family as i32 {
        libc::NFPROTO_INET => "inet",
        libc::NFPROTO_IPV4 => "ip",
        libc::NFPROTO_IPV6 => "ip6",
        libc::NFPROTO_BRIDGE => "bridge",
        libc::NFPROTO_NETDEV => "netdev",
        libc::NFPROTO_ARP => "arp",
        _ => "unknown",
    }
}

/// A forward chain of another table that drops published traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocking {
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    /// Why: its policy, or a rule that drops before any accepts DNATed traffic.
    pub why: String,
}

impl Blocking {
    /// Which published ports it cuts off.
    pub fn traffic(&self) -> &'static str {
        match self.family {
            "ip" => "published IPv4 ports",
            "ip6" => "published IPv6 ports",
            _ => "published ports",
        }
    }

    pub fn detail(&self) -> String {
        format!(
            "table {} {} chain {} {}, so {} may be unreachable from outside",
            self.family,
            self.table,
            self.chain,
            self.why,
            self.traffic()
        )
    }

    pub fn fix(&self) -> String {
        format!(
            "nft insert rule {} {} {} ct status dnat accept",
            self.family, self.table, self.chain
        )
    }
}

/// Forward chains of other tables that drop published traffic, among `chains` (a dump of
/// every base chain), each with the advice to give.
pub fn dropping_forward_chains(chains: &[ChainDump]) -> Vec<String> {
    blocking_forward_chains(chains)
        .into_iter()
        .map(|b| format!("{}; allow them with: {}", b.detail(), b.fix()))
        .collect()
}

/// The same, structured. Only chains whose policy is drop are read rule by rule.
pub fn blocking_forward_chains(chains: &[ChainDump]) -> Vec<Blocking> {
    chains
        .iter()
        .filter(|chain| is_dropping_forward(chain))
        .filter_map(|chain| {
            let family = family_name(chain.family);
            let why = match nftables::dump_family_rules(chain.family as u16, &chain.table) {
                Ok(rules) => {
                    let rules = rules
                        .iter()
                        .filter(|rule| rule.chain == chain.name)
                        .map(|rule| rule.exprs.as_str());
                    verdict_for_dnat(rules)?
                }
                Err(error) => format!("drops by policy and its rules cannot be read ({error})"),
            };
            Some(Blocking {
                family,
                table: chain.table.clone(),
                chain: chain.name.clone(),
                why,
            })
        })
        .collect()
}

fn is_dropping_forward(chain: &ChainDump) -> bool {
    let ours = chain.family as i32 == libc::NFPROTO_INET && chain.table == TABLE;
    let routed = matches!(
        chain.family as i32,
        libc::NFPROTO_INET | libc::NFPROTO_IPV4 | libc::NFPROTO_IPV6
    );
    !ours && routed && chain.hook == libc::NF_INET_FORWARD as u32 && chain.policy == NF_DROP
}

/// What a policy-drop chain does to a new DNATed connection, given its rules in order (each
/// as `rule_exprs_text` prints it): `None` when a rule accepts it, else why it is dropped.
/// A rule accepts it when it accepts with no condition or with a `ct status` test that
/// every DNATed connection passes; a rule that drops or rejects unconditionally first, or
/// the policy, drops it. Any other rule (a jump, a condition on ports or addresses) is not
/// counted either way: the answer errs on the side of saying so.
pub fn verdict_for_dnat<'a>(rules: impl IntoIterator<Item = &'a str>) -> Option<String> {
    for exprs in rules {
        let lines: Vec<&str> = exprs
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("[ counter"))
            .collect();
        let Some((last, conditions)) = lines.split_last() else {
            continue;
        };
        let unconditional = conditions.is_empty();
        if last.starts_with("[ immediate reg 0 accept") {
            if unconditional || tests_dnat(conditions) {
                return None;
            }
        } else if unconditional
            && (last.starts_with("[ immediate reg 0 drop") || last.starts_with("[ reject"))
        {
            return Some("drops forwarded traffic by a rule before accepting it".into());
        }
    }
    Some(
        "drops forwarded traffic by default (policy drop) and no rule accepts DNATed traffic"
            .into(),
    )
}

/// `ct status dnat` in libnftnl's words: load the status, mask it with bits including
/// IPS_DST_NAT (0x20), and require a non-zero result (or, for a mask of that bit alone,
/// the bit itself).
fn tests_dnat(conditions: &[&str]) -> bool {
    const IPS_DST_NAT: u32 = 0x20;
    let [load, bitwise, cmp] = conditions else {
        return false;
    };
    let Some(reg) = load.strip_prefix("[ ct load status => reg ") else {
        return false;
    };
    let reg = reg.trim_end_matches(" ]").trim();
    // [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ]
    let Some(mask) = bitwise
        .strip_prefix(&format!("[ bitwise reg {reg} = ( reg {reg} & "))
        .and_then(|rest| rest.strip_suffix(" ) ^ 0x00000000 ]"))
        .and_then(|hex| u32::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
    else {
        return false;
    };
    if mask & IPS_DST_NAT == 0 {
        return false;
    }
    // libnftnl prints the status in the kernel's (host) byte order.
    if *cmp == format!("[ cmp neq reg {reg} 0x00000000 ]") {
        return true;
    }
    mask == IPS_DST_NAT && *cmp == format!("[ cmp eq reg {reg} 0x{IPS_DST_NAT:08x} ]")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DNAT_ACCEPT: &str = "[ ct load status => reg 1 ]\n[ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ]\n[ cmp neq reg 1 0x00000000 ]\n[ immediate reg 0 accept ]";
    const DNAT_EQ_COUNTED: &str = "[ ct load status => reg 1 ]\n[ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ]\n[ cmp eq reg 1 0x00000020 ]\n[ counter pkts 0 bytes 0 ]\n[ immediate reg 0 accept ]";
    const ESTABLISHED: &str = "[ ct load state => reg 1 ]\n[ bitwise reg 1 = ( reg 1 & 0x00000006 ) ^ 0x00000000 ]\n[ cmp neq reg 1 0x00000000 ]\n[ immediate reg 0 accept ]";
    const SNAT_ONLY: &str = "[ ct load status => reg 1 ]\n[ bitwise reg 1 = ( reg 1 & 0x00000010 ) ^ 0x00000000 ]\n[ cmp neq reg 1 0x00000000 ]\n[ immediate reg 0 accept ]";
    const DROP: &str = "[ immediate reg 0 drop ]";

    #[test]
    fn chains_are_judged_by_their_rules() {
        assert_eq!(verdict_for_dnat([DNAT_ACCEPT]), None);
        assert_eq!(verdict_for_dnat([ESTABLISHED, DNAT_EQ_COUNTED]), None);
        assert_eq!(
            verdict_for_dnat(["[ counter pkts 1 bytes 2 ]\n[ immediate reg 0 accept ]"]),
            None
        );
        assert!(verdict_for_dnat([]).unwrap().contains("policy drop"));
        assert!(verdict_for_dnat([ESTABLISHED, SNAT_ONLY]).is_some());
        assert!(
            verdict_for_dnat([DROP, DNAT_ACCEPT])
                .unwrap()
                .contains("by a rule")
        );
    }
}
