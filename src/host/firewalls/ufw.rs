//! ufw: its iptables-nft chains in `table ip filter` (`ufw-…`) and `table ip6 filter`
//! (`ufw6-…`), as ufw-init builds them (src/ufw-init-functions, conf/before.rules). The
//! FORWARD chain jumps through ufw-before-forward (established connections, then
//! ufw-user-forward, where `ufw route` rules go), ufw-reject-forward (a REJECT for
//! DEFAULT_FORWARD_POLICY="REJECT") and ufw-track-forward (accepting new TCP and UDP
//! connections for "ACCEPT"); its policy is DEFAULT_FORWARD_POLICY (DROP for REJECT).

use super::{Finding, ForwardChain, Judged, dropped_at, pass};
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
    let mut allows: Vec<String> = judged
        .stopped
        .iter()
        .filter_map(|(flow, _)| flow.mapping)
        .map(|mapping| {
            let proto = mapping.proto.to_string();
            // ufw knows tcp and udp ports; any other protocol is allowed by address.
            if matches!(proto.as_str(), "tcp" | "udp") {
                format!(
                    "ufw route allow proto {proto} from any to {} port {}",
                    mapping.to_addr, mapping.to_port
                )
            } else {
                format!("ufw route allow from any to {}", mapping.to_addr)
            }
        })
        .collect();
    allows.dedup();
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
