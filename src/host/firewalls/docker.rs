//! Docker: its iptables-nft chains (DOCKER-USER, DOCKER-FORWARD, DOCKER) in `table ip
//! filter` and `table ip6 filter`, where dockerd sets the FORWARD policy to drop. Its
//! DOCKER-USER chain, jumped to first from FORWARD, is where Docker has users add rules,
//! and it keeps them across restarts.

use super::{Finding, Judged, dropped_at, pass};

pub(super) fn finding(judged: &Judged) -> Finding {
    let chain = judged.chain;
    if judged.stopped.is_empty() {
        let how = format!(
            "Docker's forward chain {} (policy {}) passes published ports",
            chain.chain,
            if chain.policy_accepts {
                "accept"
            } else {
                "drop"
            }
        );
        return pass(chain, how);
    }
    let tool = if chain.family == "ip6" {
        "ip6tables"
    } else {
        "iptables"
    };
    // One rule for both directions: replies come back through the forward chain too,
    // and every packet of a DNATed connection carries the DNAT state.
    let fix = format!("{tool} -I DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT");
    Finding {
        check: chain.owner.check(),
        ok: false,
        detail: format!(
            "{}: Docker's forward chain {} drops DNATed traffic to nsport's targets ({}), so \
             {} from outside",
            chain.name(),
            chain.chain,
            dropped_at(judged),
            judged.stopped_label(),
        ),
        fix: Some(fix),
    }
}
