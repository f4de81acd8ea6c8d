//! Conntrack cleanup after a change: flows whose path changed are forgotten so that their
//! next packet takes the new path. It is housekeeping, never the change itself: a failure
//! here (a conntrack table too large to answer, say) is a warning, and the command that
//! changed the table still succeeds.

use std::collections::{BTreeSet, HashMap};

use super::resolve::local_addresses;
use crate::error::kernel;
use crate::netlink::conntrack::{self, Flow};
use crate::ruleset::Mapping;
use crate::spec::Proto;

/// Forgets flows to the host side of `removed` that were DNATed to their targets, and UDP
/// flows and unanswered SCTP INITs to the host side of `added` that still reach something
/// else.
pub fn forget(removed: &[Mapping], added: &[Mapping]) {
    let removed = removed_ports(removed, added);
    let removed = removed.as_slice();
    let redirected: Vec<Mapping> = added
        .iter()
        .filter(|m| matches!(m.proto, Proto::Udp | Proto::Sctp))
        .cloned()
        .collect();
    if let Err(error) = forget_flows(removed, |m, flow| flow.reply_src == Some(m.to_addr)) {
        log::warn!("could not forget the connections of removed mappings: {error:#}");
    }
    // A UDP flow already running to a newly published host port keeps its old path until
    // its conntrack entry goes; so does an SCTP client retrying an INIT the host never
    // answered (conntrack keeps the entry, and its NAT, while the INITs come). Established
    // SCTP associations and TCP connections there are the host's own and are left alone,
    // and a TCP-only publish does not read the conntrack table at all.
    let doomed = |m: &Mapping, flow: &Flow| {
        flow.reply_src != Some(m.to_addr) && (m.proto == Proto::Udp || flow.is_unanswered_sctp())
    };
    if let Err(error) = forget_flows(&redirected, doomed) {
        log::warn!("could not redirect running flows to new mappings: {error:#}");
    }
}

/// The mappings whose ports really went: a range split by `rm` of some of its ports is
/// removed and its other parts added again, and the flows of those parts keep their path.
fn removed_ports(removed: &[Mapping], added: &[Mapping]) -> Vec<Mapping> {
    let mut out = Vec::new();
    for mapping in removed {
        if !mapping.is_range() {
            out.push(mapping.clone());
            continue;
        }
        let mut kept: Vec<&Mapping> = added
            .iter()
            .filter(|part| {
                part.is_same_kind(mapping)
                    && part.to_addr == mapping.to_addr
                    && mapping.has_host_port(part.host_port)
                    && mapping.has_host_port(*part.host_ports().end())
                    && part.to_port == mapping.to_port_of(part.host_port)
            })
            .collect();
        kept.sort_by_key(|part| part.host_port);
        let mut next = Some(mapping.host_port);
        for part in kept {
            if let Some(start) = next
                && start < part.host_port
            {
                out.push(mapping.part(start, part.host_port - 1));
            }
            next = part.host_ports().end().checked_add(1);
        }
        if let Some(start) = next
            && start <= *mapping.host_ports().end()
        {
            out.push(mapping.part(start, *mapping.host_ports().end()));
        }
    }
    out
}

fn forget_flows(
    mappings: &[Mapping],
    doomed: impl Fn(&Mapping, &Flow) -> bool,
) -> Result<(), crate::Error> {
    if mappings.is_empty() {
        return Ok(());
    }
    let wildcard = mappings.iter().any(|m| m.host_addr.is_none());
    let local = if wildcard {
        local_addresses()?
    } else {
        BTreeSet::new()
    };
    let by_port: HashMap<(u8, u16), Vec<&Mapping>> = mappings
        .iter()
        .filter(|mapping| !mapping.is_range())
        .fold(HashMap::new(), |mut index, mapping| {
            let key = (mapping.proto.number(), mapping.host_port);
            index.entry(key).or_default().push(mapping);
            index
        });
    // Ranges are few; each is checked against every flow.
    let ranges: Vec<&Mapping> = mappings.iter().filter(|m| m.is_range()).collect();
    let deleted = conntrack::delete_flows(|flow| {
        let in_range = ranges
            .iter()
            .copied()
            .filter(|m| m.proto.number() == flow.proto && m.has_host_port(flow.dport));
        by_port
            .get(&(flow.proto, flow.dport))
            .into_iter()
            .flatten()
            .copied()
            .chain(in_range)
            .any(|mapping| {
                let to_host = match mapping.host_addr {
                    Some(addr) => flow.dst == addr,
                    None => {
                        flow.dst.is_ipv6() == mapping.is_ipv6()
                            && (local.contains(&flow.dst) || flow.dst.is_loopback())
                    }
                };
                to_host && doomed(mapping, flow)
            })
    })
    .map_err(kernel)?;
    if deleted > 0 {
        log::info!("deleted {deleted} conntrack entries");
    }
    Ok(())
}
