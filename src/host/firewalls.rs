//! Other firewalls that would drop what nsport publishes: firewalld, ufw, Docker, and any
//! other table with a forward chain.
//!
//! A packet must be accepted by every base chain on its hook, in every table: an accept in
//! nsport's forward chain does not override a drop in another table's. Published traffic is
//! DNATed and then forwarded, so it meets other tables' forward chains (never their input
//! chains: `ufw allow 3000` does not govern it), both ways: the first packet toward the
//! target and the target's replies. Each such chain is walked rule by rule for both, for
//! each mapping (`forward_path`), in the ip, ip6 and inet families, and who wrote the chain
//! is recognised by what the kernel holds:
//!
//! - firewalld: `table inet firewalld`, whose `filter_FORWARD` ends in a reject. With
//!   `StrictForwardPorts=no` (the default) it accepts `ct status dnat` first; with `yes` it
//!   jumps to `filter_FORWARD_dnat`, which accepts only firewalld's own forward ports.
//! - ufw: iptables-nft chains `ufw-before-forward` (`ufw6-…` in ip6) in `table ip filter`,
//!   whose FORWARD policy is ufw's DEFAULT_FORWARD_POLICY; `ufw route allow` rules are in
//!   `ufw-user-forward`.
//! - Docker: iptables-nft chains `DOCKER-USER`, `DOCKER-FORWARD` or `DOCKER`, with the
//!   FORWARD policy drop Docker sets.

mod docker;
mod firewalld;
mod ufw;

use std::collections::HashMap;

use super::forward_path::{self, Packet, Verdict};
use crate::model::Mapping;
use crate::netlink::nftables::{self, ChainDump, Expr, RulesetRule};
use crate::ruleset::TABLE;

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

/// Who wrote a table, as told by its name and its chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Firewalld,
    Ufw,
    Docker,
    Other,
}

impl Owner {
    fn of(family: &str, table: &str, rules: &[RulesetRule]) -> Owner {
        let names = || {
            rules.iter().flat_map(|rule| {
                let target = rule.exprs.iter().find_map(|expr| match expr {
                    Expr::Immediate {
                        chain: Some(chain), ..
                    } => Some(chain.as_str()),
                    _ => None,
                });
                std::iter::once(rule.chain.as_str()).chain(target)
            })
        };
        if family == "inet" && table.starts_with("firewalld") {
            Owner::Firewalld
        } else if family != "inet"
            && names().any(|n| n == "ufw-before-forward" || n == "ufw6-before-forward")
        {
            Owner::Ufw
        } else if family != "inet"
            && names().any(|n| matches!(n, "DOCKER-USER" | "DOCKER-FORWARD" | "DOCKER"))
        {
            Owner::Docker
        } else {
            Owner::Other
        }
    }

    fn check(self) -> &'static str {
        match self {
            Owner::Firewalld => "firewalld",
            Owner::Ufw => "ufw",
            Owner::Docker => "docker",
            Owner::Other => "other firewalls",
        }
    }
}

/// One finding about another firewall: what `doctor` shows as a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// A forward base chain of another table, with every rule of its table.
struct ForwardChain {
    family: &'static str,
    table: String,
    chain: String,
    policy_accepts: bool,
    owner: Owner,
    /// The rules, or why they could not be read.
    rules: Result<Vec<RulesetRule>, String>,
}

impl ForwardChain {
    fn name(&self) -> String {
        format!("table {} {}", self.family, self.table)
    }

    fn carries(&self, ipv6: bool) -> bool {
        match self.family {
            "ip" => !ipv6,
            "ip6" => ipv6,
            _ => true,
        }
    }

    /// What the chain does to a flow, with its table's rules indexed once: both of the
    /// flow's packets must pass.
    fn judge(&self, table: &forward_path::Table, flow: &Flow) -> Verdict {
        let [original, reply] = &flow
            .packets
            .clone()
            .map(|packet| table.judge(&self.chain, self.policy_accepts, &packet));
        let mut verdict = original.clone();
        verdict.accepts &= reply.accepts;
        for drop in &reply.drops {
            if !verdict.drops.contains(drop) {
                verdict.drops.push(drop.clone());
            }
        }
        for why in &reply.unsure {
            if !verdict.unsure.contains(why) {
                verdict.unsure.push(why.clone());
            }
        }
        verdict
    }

    fn rules_of(&self, chain: &str) -> impl Iterator<Item = &RulesetRule> {
        self.rules
            .iter()
            .flatten()
            .filter(move |rule| rule.chain == chain)
    }
}

/// The forward base chains of other tables (ip, ip6, inet) among `chains`, each with the
/// rules of its table (read once per table).
fn forward_chains(chains: &[ChainDump]) -> Vec<ForwardChain> {
    let mut tables: HashMap<(u32, String), Result<Vec<RulesetRule>, String>> = HashMap::new();
    let mut found = Vec::new();
    for chain in chains {
        let ours = chain.family as i32 == libc::NFPROTO_INET && chain.table == TABLE;
        let routed = matches!(
            chain.family as i32,
            libc::NFPROTO_INET | libc::NFPROTO_IPV4 | libc::NFPROTO_IPV6
        );
        if ours || !routed || chain.hook != libc::NF_INET_FORWARD as u32 {
            continue;
        }
        let rules = tables
            .entry((chain.family, chain.table.clone()))
            .or_insert_with(|| {
                nftables::dump_table_exprs(chain.family as u16, &chain.table)
                    .map_err(|error| error.to_string())
            })
            .clone();
        let family = family_name(chain.family);
        let owner = Owner::of(family, &chain.table, rules.as_deref().unwrap_or_default());
        found.push(ForwardChain {
            family,
            table: chain.table.clone(),
            chain: chain.name.clone(),
            policy_accepts: chain.policy == libc::NF_ACCEPT as u32,
            owner,
            rules,
        });
    }
    found
}

/// The same, with every table's rules read under one generation of the ruleset: when it
/// changes while they are read (firewalld reloading, Docker starting), chains and rules
/// are read again, so that a chain is not judged by the rules of a table half rewritten.
fn consistent_forward_chains(chains: &[ChainDump]) -> Vec<ForwardChain> {
    let mut chains = chains.to_vec();
    let mut found = Vec::new();
    for _ in 0..3 {
        let before = nftables::generation().ok();
        found = forward_chains(&chains);
        if before.is_some() && nftables::generation().ok() == before {
            break;
        }
        match nftables::dump_base_chains() {
            Ok(fresh) => chains = fresh,
            Err(_) => break,
        }
    }
    found
}

/// A mapping's traffic as a forward chain sees it, both ways; without mappings, a probe
/// of any port.
struct Flow<'a> {
    mapping: Option<&'a Mapping>,
    ipv6: bool,
    /// The first packet and the first reply.
    packets: [Packet; 2],
}

impl Flow<'_> {
    fn new(mapping: Option<&Mapping>, original: Packet) -> Flow<'_> {
        let reply = Packet {
            reply: true,
            ..original.clone()
        };
        Flow {
            mapping,
            ipv6: original.ipv6,
            packets: [original, reply],
        }
    }

    /// A range of ports published as one is judged without its ports: a rule that tests
    /// them may hold for some and not for others.
    fn of(mapping: &Mapping) -> Flow<'_> {
        let single = !mapping.is_range();
        let original = Packet {
            ipv6: mapping.is_ipv6(),
            l4proto: mapping.proto.number(),
            reply: false,
            target: Some(mapping.to_addr),
            target_port: single.then_some(mapping.to_port),
            host_addr: mapping.host_addr,
            host_port: single.then_some(mapping.host_port),
            via: Some(mapping.via.clone()),
        };
        Flow::new(Some(mapping), original)
    }

    fn probe(ipv6: bool) -> Flow<'static> {
        let original = Packet {
            ipv6,
            l4proto: libc::IPPROTO_TCP as u8,
            reply: false,
            target: None,
            target_port: None,
            host_addr: None,
            host_port: None,
            via: None,
        };
        Flow::new(None, original)
    }
}

/// What one chain does to the flows it carries.
struct Judged<'a> {
    chain: &'a ForwardChain,
    /// The flows it does not pass, each with its verdict (`None`: rules unreadable).
    stopped: Vec<(&'a Flow<'a>, Option<Verdict>)>,
}

impl Judged<'_> {
    /// `3000/tcp is unreachable`, `3000/tcp, 3001/tcp may be unreachable`, `published
    /// IPv4 ports are unreachable`.
    fn stopped_label(&self) -> String {
        let labels: Vec<String> = self
            .stopped
            .iter()
            .filter_map(|(flow, _)| flow.mapping.map(Mapping::host_label))
            .collect();
        const SHOWN: usize = 5;
        let (what, many) = match labels.len() {
            0 => (traffic(self.chain.family).to_string(), true),
            n if n > SHOWN => (
                format!("{} and {} more", labels[..SHOWN].join(", "), n - SHOWN),
                true,
            ),
            n => (labels.join(", "), n > 1),
        };
        let verb = match (self.certainly(), many) {
            (true, false) => "is unreachable",
            (true, true) => "are unreachable",
            (false, _) => "may be unreachable",
        };
        format!("{what} {verb}")
    }

    /// Unreachable (no way through accepts) or only maybe.
    fn certainly(&self) -> bool {
        self.stopped
            .iter()
            .all(|(_, verdict)| verdict.as_ref().is_some_and(Verdict::blocks))
    }

    fn where_dropped(&self) -> Option<forward_path::Drop> {
        self.stopped
            .iter()
            .find_map(|(_, verdict)| verdict.as_ref()?.drops.first().cloned())
    }
}

/// `text` with control characters escaped.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn traffic(family: &str) -> &'static str {
    match family {
        "ip" => "published IPv4 ports",
        "ip6" => "published IPv6 ports",
        _ => "published ports",
    }
}

/// Every finding about other firewalls, judged for `mappings` (or, without mappings, for
/// any port nsport would publish): one per recognised firewall table, one per other
/// table's chain that stops published traffic, and an "other firewalls" pass when none
/// does. `chains` is a dump of every base chain.
pub fn findings(chains: &[ChainDump], mappings: &[Mapping]) -> Vec<Finding> {
    let forward = consistent_forward_chains(chains);
    let flows: Vec<Flow> = if mappings.is_empty() {
        vec![Flow::probe(false), Flow::probe(true)]
    } else {
        mappings.iter().map(Flow::of).collect()
    };
    let mut findings = firewalld::panic_mode(chains);
    let mut other_failed = false;
    for chain in &forward {
        let carried: Vec<&Flow> = flows
            .iter()
            .filter(|flow| chain.carries(flow.ipv6))
            .collect();
        if carried.is_empty() {
            continue;
        }
        let table = chain.rules.as_deref().ok().map(forward_path::Table::new);
        let judged = Judged {
            chain,
            stopped: carried
                .into_iter()
                .map(|flow| {
                    let verdict = table.as_ref().map(|table| chain.judge(table, flow));
                    (flow, verdict)
                })
                .filter(|(_, verdict)| !verdict.as_ref().is_some_and(Verdict::passes))
                .collect(),
        };
        let finding = match chain.owner {
            Owner::Firewalld => firewalld::finding(&judged),
            Owner::Ufw => ufw::finding(&judged),
            Owner::Docker => docker::finding(&judged),
            Owner::Other if judged.stopped.is_empty() => continue,
            Owner::Other => {
                other_failed = true;
                other(&judged)
            }
        };
        findings.push(finding);
    }
    if !other_failed {
        findings.push(Finding {
            check: Owner::Other.check(),
            ok: true,
            detail: "no other table's forward chain (ip, ip6, inet) drops DNATed traffic".into(),
            fix: None,
        });
    }
    // Table and chain names are anyone's bytes: a name with a line break must not pass
    // for a line of doctor's own.
    for finding in &mut findings {
        finding.detail = printable(&finding.detail);
        finding.fix = finding.fix.as_deref().map(printable);
    }
    findings
}

/// The warnings `add` and `apply` print: every failed finding for any port nsport would
/// publish, with its fix.
pub fn dropping_forward_chains(chains: &[ChainDump]) -> Vec<String> {
    findings(chains, &[])
        .into_iter()
        .filter(|finding| !finding.ok)
        .map(|finding| {
            format!(
                "{}: {}; allow them with: {}",
                finding.check,
                finding.detail,
                finding.fix.unwrap_or_default()
            )
        })
        .collect()
}

fn pass(chain: &ForwardChain, how: String) -> Finding {
    Finding {
        check: chain.owner.check(),
        ok: true,
        detail: format!("{}: {how}", chain.name()),
        fix: None,
    }
}

fn other(judged: &Judged) -> Finding {
    let chain = judged.chain;
    let why = match (&chain.rules, judged.where_dropped()) {
        (Err(error), _) => format!("cannot be read ({error})"),
        (_, Some(drop)) if drop.handle.is_some() => format!(
            "drops forwarded traffic by a rule (handle {}) before accepting it",
            drop.handle.unwrap_or_default()
        ),
        (_, Some(_)) => {
            "drops forwarded traffic by default (policy drop) and no rule accepts DNATed traffic"
                .into()
        }
        (_, None) => "may drop forwarded traffic by rules nsport cannot judge".into(),
    };
    Finding {
        check: chain.owner.check(),
        ok: false,
        detail: format!(
            "table {} {} chain {} {why}, so {} may be unreachable from outside",
            chain.family,
            chain.table,
            chain.chain,
            traffic(chain.family)
        ),
        fix: Some(format!(
            "nft insert rule {} {} {} ct status dnat accept",
            chain.family, chain.table, chain.chain
        )),
    }
}

/// Where the chain drops the traffic, or why that cannot be told.
fn dropped_at(judged: &Judged) -> String {
    if let Some(drop) = judged.where_dropped() {
        return format!("at {}", drop.describe());
    }
    judged
        .stopped
        .iter()
        .find_map(|(_, verdict)| verdict.as_ref()?.unsure.first().cloned())
        .map(|why| format!("cannot be judged: {why}"))
        .unwrap_or_else(|| "its rules cannot be read".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_break_lines() {
        assert_eq!(
            printable("table ip evil\nok   other firewalls: fine"),
            "table ip evil\\nok   other firewalls: fine"
        );
        assert_eq!(printable("ufw-user-forward"), "ufw-user-forward");
    }
}
