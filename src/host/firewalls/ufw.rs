//! ufw: its iptables-nft chains in `table ip filter` (`ufw-…`) and `table ip6 filter`
//! (`ufw6-…`), as ufw-init builds them (src/ufw-init-functions, conf/before.rules). The
//! FORWARD chain jumps through ufw-before-forward (established connections, then
//! ufw-user-forward, where `ufw route` rules go), ufw-reject-forward (a REJECT for
//! DEFAULT_FORWARD_POLICY="REJECT") and ufw-track-forward (accepting new TCP and UDP
//! connections for "ACCEPT"); its policy is DEFAULT_FORWARD_POLICY (DROP for REJECT).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Finding, ForwardChain, Judged, dropped_at, pass};
use crate::model::Mapping;
use crate::netlink::nftables::Expr;

/// ufw names its ip6tables chains `ufw6-…`.
fn ufw_prefix(chain: &ForwardChain) -> &'static str {
    if chain.family == "ip6" { "ufw6" } else { "ufw" }
}

/// ufw's default routed policy, as its FORWARD chain and ufw-reject-forward show it.
fn ufw_policy(chain: &ForwardChain) -> &'static str {
    let prefix = ufw_prefix(chain);
    let rejects = chain
        .rules_of(&format!("{prefix}-reject-forward"))
        .any(|rule| {
            rule.exprs.iter().any(|expr| {
                matches!(expr, Expr::Target { name, .. } if name == "REJECT")
                    || matches!(expr, Expr::Other(name) if name == "reject")
            })
        });
    match (chain.policy_accepts, rejects) {
        (true, _) => "allow",
        (false, true) => "reject",
        (false, false) => "deny",
    }
}

pub(super) fn finding(judged: &Judged) -> Finding {
    let chain = judged.chain;
    let policy = ufw_policy(chain);
    let policy_text = format!(
        "ufw's default routed policy is {policy} (chain {} policy {})",
        chain.chain,
        if chain.policy_accepts {
            "accept"
        } else {
            "drop"
        }
    );
    if judged.stopped.is_empty() {
        let how = if chain.policy_accepts {
            format!("{policy_text}, so published ports pass it")
        } else {
            format!("{policy_text}, and ufw route rules allow every published port")
        };
        return pass(chain, how);
    }
    let label = judged.stopped_label();
    // ufw's REJECT policy is a reject in ufw-reject-forward.
    let prefix = ufw_prefix(chain);
    let by_policy = judged.where_dropped().is_none_or(|drop| {
        drop.handle.is_none()
            || drop.chain == format!("{prefix}-reject-forward")
            || drop.chain == format!("{prefix}-skip-to-policy-forward")
    });
    let why = if by_policy {
        format!("{policy_text} and no `ufw route allow` rule accepts the traffic")
    } else {
        format!("ufw drops them ({})", dropped_at(judged))
    };
    let mut allows = route_allows(judged.stopped.iter().filter_map(|(flow, _)| flow.mapping));
    if allows.is_empty() {
        allows.push(
            "ufw route allow proto tcp from any to TARGET port PORT for each published port".into(),
        );
    }
    Finding {
        check: chain.owner.check(),
        ok: false,
        detail: format!(
            "{}: {why}, so {label} from outside (DNATed traffic is forwarded: `ufw allow \
             PORT` does not apply to it)",
            chain.name(),
        ),
        fix: Some(format!(
            "{}; or allow all routed traffic: ufw default allow routed",
            allows.join("; ")
        )),
    }
}

/// The `ufw route allow` rules that let `mappings` through: one per target and protocol
/// and run of consecutive target ports (ufw's `port 3000:3999`). ufw knows ports of tcp
/// and udp only; a mapping of any other protocol is allowed by its target's address.
fn route_allows<'a>(mappings: impl Iterator<Item = &'a Mapping>) -> Vec<String> {
    let mut ports: BTreeMap<(String, IpAddr), Vec<u16>> = BTreeMap::new();
    for mapping in mappings {
        ports
            .entry((mapping.proto.to_string(), mapping.to_addr))
            .or_default()
            .extend(mapping.to_port..=mapping.to_port_end().unwrap_or(mapping.to_port));
    }
    let mut allows = Vec::new();
    for ((proto, addr), mut ports) in ports {
        if !matches!(proto.as_str(), "tcp" | "udp") {
            allows.push(format!("ufw route allow from any to {addr}"));
            continue;
        }
        ports.sort_unstable();
        ports.dedup();
        let mut runs: Vec<(u16, u16)> = Vec::new();
        for port in ports {
            match runs.last_mut() {
                Some((_, end)) if u32::from(*end) + 1 == u32::from(port) => *end = port,
                _ => runs.push((port, port)),
            }
        }
        for (start, end) in runs {
            let port = if start == end {
                start.to_string()
            } else {
                format!("{start}:{end}")
            };
            allows.push(format!(
                "ufw route allow proto {proto} from any to {addr} port {port}"
            ));
        }
    }
    allows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Proto;

    fn mapping(proto: Proto, to: &str, port: u16) -> Mapping {
        Mapping {
            proto,
            host_port: port,
            to_addr: to.parse().unwrap(),
            to_port: port,
            ..Mapping::example()
        }
    }

    #[test]
    fn consecutive_ports_of_one_target_become_one_range() {
        let mappings = [
            mapping(Proto::Tcp, "172.18.0.2", 3001),
            mapping(Proto::Tcp, "172.18.0.2", 3000),
            mapping(Proto::Tcp, "172.18.0.2", 3002),
            mapping(Proto::Tcp, "172.18.0.2", 3005),
            Mapping {
                host_port_end: Some(3010),
                ..mapping(Proto::Tcp, "172.18.0.2", 3006)
            },
            mapping(Proto::Udp, "172.18.0.2", 3003),
            mapping(Proto::Tcp, "2001:db8:1::2", 80),
            // ufw has no SCTP ports: the target is allowed by address.
            mapping(Proto::Sctp, "172.18.0.4", 9000),
        ];
        assert_eq!(
            route_allows(mappings.iter()),
            [
                "ufw route allow from any to 172.18.0.4",
                "ufw route allow proto tcp from any to 172.18.0.2 port 3000:3002",
                "ufw route allow proto tcp from any to 172.18.0.2 port 3005:3010",
                "ufw route allow proto tcp from any to 2001:db8:1::2 port 80",
                "ufw route allow proto udp from any to 172.18.0.2 port 3003",
            ]
        );
    }
}
