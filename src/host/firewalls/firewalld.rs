//! firewalld: `table inet firewalld`, written by its nftables backend
//! (src/firewall/core/nftables.py). Its forward chain `filter_FORWARD` ends in a reject;
//! before that, `_build_default_rules_dnat` either accepts every DNATed connection
//! (`ct status dnat accept`, StrictForwardPorts=no, the default) or sends it to
//! `filter_FORWARD_dnat`, which accepts only firewalld's own forward ports and rejects the
//! rest (StrictForwardPorts=yes). firewalld reads firewalld.conf again on reload.

use super::{Finding, ForwardChain, Judged, Owner, dropped_at, pass};
use crate::netlink::nftables::{ChainDump, Expr};

const FIREWALLD_CONF: &str = "/etc/firewalld/firewalld.conf";

/// `StrictForwardPorts` as firewalld's forward chain shows it: the rule testing
/// `ct status` jumps to `filter_FORWARD_dnat` (on) or accepts (off).
fn strict_forward_ports(chain: &ForwardChain) -> Option<bool> {
    chain.rules_of(&chain.chain).find_map(|rule| {
        let tests_status = rule
            .exprs
            .iter()
            .any(|expr| matches!(expr, Expr::Ct { key, .. } if *key == libc::NFT_CT_STATUS as u32));
        if !tests_status {
            return None;
        }
        rule.exprs.iter().rev().find_map(|expr| match expr {
            Expr::Immediate {
                dreg: 0,
                verdict: Some(verdict),
                chain: target,
                ..
            } => match (*verdict, target) {
                (libc::NFT_JUMP | libc::NFT_GOTO, Some(target)) if target.ends_with("_dnat") => {
                    Some(true)
                }
                (1, _) => Some(false),
                _ => None,
            },
            _ => None,
        })
    })
}

pub(super) fn finding(judged: &Judged) -> Finding {
    let chain = judged.chain;
    let strict = strict_forward_ports(chain);
    if judged.stopped.is_empty() {
        let how = match strict {
            Some(false) => format!(
                "StrictForwardPorts is off: forward chain {} accepts DNATed traffic (ct status \
                 dnat accept) before its final reject, so published ports pass it",
                chain.chain
            ),
            _ => format!("forward chain {} passes published ports", chain.chain),
        };
        return pass(chain, how);
    }
    let label = judged.stopped_label();
    let (detail, fix) = if strict == Some(true) {
        (
            format!(
                "StrictForwardPorts is on: forward chain {} sends DNATed traffic to {}_dnat, \
                 which rejects all but firewalld's own forward ports, so {label} from \
                 outside",
                chain.chain, chain.chain
            ),
            format!(
                "set StrictForwardPorts=no in {FIREWALLD_CONF}, then firewall-cmd --reload \
                 (sed -i 's/^ *StrictForwardPorts *=.*/StrictForwardPorts=no/' {FIREWALLD_CONF} \
                 && firewall-cmd --reload)"
            ),
        )
    } else {
        (
            format!(
                "forward chain {} drops DNATed traffic ({}), so {label} from outside",
                chain.chain,
                dropped_at(judged),
            ),
            format!(
                "firewall-cmd --reload, to restore firewalld's own rules (with \
                 StrictForwardPorts=no in {FIREWALLD_CONF}, its forward chain accepts DNATed \
                 traffic)"
            ),
        )
    };
    Finding {
        check: chain.owner.check(),
        ok: false,
        detail: format!("{}: {detail}", chain.name()),
        fix: Some(fix),
    }
}

/// firewalld's panic mode drops every packet before anything else sees it.
pub(super) fn panic_mode(chains: &[ChainDump]) -> Vec<Finding> {
    let panicking = chains.iter().any(|chain| {
        chain.family as i32 == libc::NFPROTO_INET
            && chain.table == "firewalld_policy_drop"
            && chain.hook == libc::NF_INET_PRE_ROUTING as u32
            && chain.policy == libc::NF_DROP as u32
    });
    if !panicking {
        return Vec::new();
    }
    vec![Finding {
        check: Owner::Firewalld.check(),
        ok: false,
        detail: "firewalld is in panic mode: table inet firewalld_policy_drop drops every \
                 packet, published ports included"
            .into(),
        fix: Some("firewall-cmd --panic-off".into()),
    }]
}
