//! Other tables that would drop what nsport publishes.
//!
//! A packet must be accepted by every base chain on its hook, in every table. A forward
//! chain with policy drop elsewhere (firewalld, Docker's iptables-nft) drops traffic to
//! published ports from outside whatever nsport accepts; the user is told which chain and
//! what rule lets the traffic through.

use crate::netlink::nftables::ChainDump;
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

/// Forward chains of other tables whose policy is drop, among `chains` (a dump of every
/// base chain), each with the advice to give.
pub fn dropping_forward_chains(chains: &[ChainDump]) -> Vec<String> {
    chains
        .iter()
        .filter(|chain| is_dropping_forward(chain))
        .map(|chain| {
            let family = family_name(chain.family);
            format!(
                "table {family} {} chain {} drops forwarded traffic by default (policy drop), \
                 so published ports may be unreachable from outside; allow them with: \
                 nft insert rule {family} {} {} ct status dnat accept",
                chain.table, chain.name, chain.table, chain.name
            )
        })
        .collect()
}

fn is_dropping_forward(chain: &ChainDump) -> bool {
    let ours = chain.family as i32 == libc::NFPROTO_INET && chain.table == TABLE;
    let routed = matches!(chain.family as i32, libc::NFPROTO_INET | libc::NFPROTO_IPV4);
    !ours && routed && chain.hook == libc::NF_INET_FORWARD as u32 && chain.policy == NF_DROP
}
