//! `nsport doctor`: checks what publishing needs and what breaks it, each with the fix.
//! It only reads: nothing is repaired, and the nftables probe is a throwaway table created
//! and deleted in the same batch.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;

use crate::engine::{bridge_port_of, damaged_chains, stale_flags};
use crate::error::{Error, kernel};
use crate::host::firewalls;
use crate::host::sysctl::Sysctl;
use crate::netlink::nftables::{self, Change};
use crate::netlink::rtnetlink;
use crate::ruleset::{self, Mapping};

/// One check: what was looked at, whether it is well, and what to do when not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

fn pass(check: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        check,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// `1 mapping`, `2 mappings`.
fn plural(count: usize, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        _ => format!("{count} {noun}s"),
    }
}

/// CAP_NET_ADMIN is bit 12 of the effective capability set.
fn has_net_admin() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// Creates and deletes, in one batch, a table with every chain, set and rule nsport uses:
/// the kernel checks each expression (nat, fib, masquerade, conntrack, counters) on the way.
fn probe() -> Check {
    let table = format!("nsport_probe_{}", std::process::id());
    let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
    let mut changes = vec![Change::AddTable { exclusive: true }];
    changes.extend(chains.iter().map(Change::AddChain));
    changes.extend(sets.iter().map(Change::AddSet));
    changes.extend(rules.iter().map(Change::AddRule));
    changes.push(Change::DelTable);
    match nftables::commit_to(&table, &changes, None) {
        Ok(()) => pass(
            "nftables",
            "nf_tables accepts every chain, map and expression nsport uses",
        ),
        Err(error) => {
            let what = match &error {
                crate::netlink::NetlinkError::Kernel {
                    index: Some(index), ..
                } => match changes[*index] {
                    Change::AddRule(rule) => format!("the rule `{}`", rule.nft),
                    Change::AddChain(chain) => format!("chain {}", chain.name),
                    Change::AddSet(set) => format!("set {}", set.name),
                    _ => "the table".to_string(),
                },
                _ => "the probe table".to_string(),
            };
            let cause = std::error::Error::source(&error)
                .map(|cause| cause.to_string())
                .unwrap_or_else(|| error.to_string());
            fail(
                "nftables",
                format!("the kernel refused {what}: {cause}"),
                "use a kernel with nf_tables, nft_nat, nft_fib_inet, nft_masq, nft_ct and \
                 nft_counter (built in or as modules: modprobe nft_fib_inet nft_masq nft_nat)",
            )
        }
    }
}

fn forwarding(mappings: &[Mapping]) -> Vec<Check> {
    let mut checks = Vec::new();
    for (ipv6, check, sysctl) in [
        (false, "ipv4 forwarding", Sysctl::ip_forward()),
        (true, "ipv6 forwarding", Sysctl::ipv6_forwarding()),
    ] {
        if !mappings.iter().any(|m| m.is_ipv6() == ipv6) {
            continue;
        }
        let name = sysctl.name();
        checks.push(match sysctl.read().as_deref() {
            Ok("1") => pass(check, format!("{name} is 1")),
            _ => fail(
                check,
                format!("{name} is not 1: published ports are unreachable from outside"),
                format!("sysctl -w {name}=1 (nsport add sets it)"),
            ),
        });
    }
    checks
}

/// What stops one mapping's path from working, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Short, for the STATUS column of `ls`.
    pub status: String,
    pub detail: String,
    pub fix: String,
}

/// For each mapping, what stops one of its paths from working: route_localnet off on the
/// interface of a mapping served on 127.0.0.1 (the kernel drops DNATed loopback traffic),
/// or, with br_netfilter on, hairpin mode off on the bridge port of its namespace (the
/// namespace cannot reach its own published port). Looked up once per interface and
/// target.
pub fn path_problems(mappings: &[Mapping]) -> Result<Vec<Option<Problem>>, Error> {
    let br_netfilter = fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|value| value.trim() == "1");
    let mut localnet: HashMap<String, bool> = HashMap::new();
    let mut links: HashMap<String, Option<rtnetlink::Link>> = HashMap::new();
    let mut hairpin: HashMap<(String, IpAddr, Option<u64>), Option<String>> = HashMap::new();
    let mut problems = Vec::with_capacity(mappings.len());
    for mapping in mappings {
        if mapping.serves_loopback() {
            // An interface that is gone (its namespace was deleted) has no setting: the
            // stale check reports that mapping.
            let on = *localnet.entry(mapping.via.clone()).or_insert_with(|| {
                !matches!(
                    Sysctl::route_localnet(&mapping.via).read().as_deref(),
                    Ok("0")
                )
            });
            if !on {
                let sysctl = Sysctl::route_localnet(&mapping.via).name();
                problems.push(Some(Problem {
                    status: format!("route_localnet off on {}", mapping.via),
                    detail: format!(
                        "{sysctl} is 0, so {} is unreachable through 127.0.0.1",
                        mapping.host_label()
                    ),
                    fix: format!(
                        "nsport ls (turns it back on under the guard), or sysctl -w {sysctl}=1"
                    ),
                }));
                continue;
            }
        }
        if br_netfilter && mapping.netns.is_some() {
            let key = (mapping.via.clone(), mapping.to_addr, mapping.netns_inode);
            let off = match hairpin.get(&key) {
                Some(off) => off.clone(),
                None => {
                    if !links.contains_key(&mapping.via) {
                        let link = rtnetlink::link_by_name(&mapping.via).map_err(kernel)?;
                        links.insert(mapping.via.clone(), link);
                    }
                    let off = match &links[&mapping.via] {
                        Some(via) => bridge_port_of(mapping, via)?
                            .filter(|port| port.hairpin != Some(true))
                            .map(|port| port.name),
                        None => None,
                    };
                    hairpin.insert(key, off.clone());
                    off
                }
            };
            if let Some(port) = off {
                problems.push(Some(Problem {
                    status: format!("hairpin off on {port}"),
                    detail: format!(
                        "br_netfilter is on and bridge port {port} has hairpin mode off, so \
                         {} cannot reach {} itself",
                        mapping.to_addr,
                        mapping.host_label()
                    ),
                    fix: format!("ip link set {port} type bridge_slave hairpin on"),
                }));
                continue;
            }
        }
        problems.push(None);
    }
    Ok(problems)
}

/// Every mapping served on 127.0.0.1 needs route_localnet on its interface.
fn loopback_path(mappings: &[Mapping], problems: &[Option<Problem>]) -> Option<Check> {
    let loopback: Vec<&Mapping> = mappings.iter().filter(|m| m.serves_loopback()).collect();
    if loopback.is_empty() {
        return None;
    }
    let broken: Vec<&Problem> = problems
        .iter()
        .flatten()
        .filter(|p| p.status.starts_with("route_localnet"))
        .collect();
    Some(match broken.first() {
        None => pass(
            "loopback path",
            format!(
                "route_localnet is on for every interface of the {} served on 127.0.0.1",
                plural(loopback.len(), "mapping")
            ),
        ),
        Some(first) => fail(
            "loopback path",
            broken
                .iter()
                .map(|p| p.detail.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            first.fix.clone(),
        ),
    })
}

fn br_netfilter(mappings: &[Mapping]) -> Result<Vec<Check>, Error> {
    let calls = fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !calls.is_ok_and(|value| value.trim() == "1") {
        return Ok(vec![pass(
            "br_netfilter",
            "bridged traffic skips the IP hooks: hairpin traffic is routed, no hairpin mode needed",
        )]);
    }
    let mut checks = Vec::new();
    let mut seen = Vec::new();
    for mapping in mappings {
        let Some(via) = rtnetlink::link_by_name(&mapping.via).map_err(kernel)? else {
            continue;
        };
        let Some(port) = bridge_port_of(mapping, &via)? else {
            continue;
        };
        if seen.contains(&port.index) {
            continue;
        }
        seen.push(port.index);
        checks.push(if port.hairpin == Some(true) {
            pass(
                "br_netfilter",
                format!("bridge port {} has hairpin mode on", port.name),
            )
        } else {
            fail(
                "br_netfilter",
                format!(
                    "br_netfilter is on and bridge port {} of {} has hairpin mode off: \
                     the namespace cannot reach its own published ports",
                    port.name, mapping.to_addr
                ),
                format!("ip link set {} type bridge_slave hairpin on", port.name),
            )
        });
    }
    if checks.is_empty() {
        checks.push(pass(
            "br_netfilter",
            "on; no published namespace behind a bridge",
        ));
    }
    Ok(checks)
}

/// Which layout the table is written in, and whether a migration is pending.
fn layout() -> Result<Check, Error> {
    let current = crate::ruleset::LAYOUT;
    Ok(match crate::table_layout()? {
        None => pass(
            "table layout",
            format!("no table yet; nsport writes layout {current}"),
        ),
        Some(layout) if layout.is_current() => pass(
            "table layout",
            format!(
                "layout {current}, the one this nsport writes{}; no migration pending",
                if layout.recorded {
                    ""
                } else {
                    " (inferred: the table predates recorded layouts)"
                }
            ),
        ),
        Some(layout) if layout.is_older() => fail(
            "table layout",
            format!(
                "layout {}, older than the one this nsport writes ({current}): migration pending",
                layout.version
            ),
            format!(
                "nsport migrate (any change does it too): the table is rebuilt in layout \
                 {current} in one batch, every mapping kept, counters restarted"
            ),
        ),
        Some(layout) => fail(
            "table layout",
            format!(
                "layout {}, newer than this nsport knows ({current}): it will not change the table",
                layout.version
            ),
            "upgrade nsport to the version that wrote the table",
        ),
    })
}

fn route_localnet_guard() -> Result<Check, Error> {
    let on = Sysctl::route_localnet_on();
    if on.is_empty() {
        return Ok(pass("loopback guard", "route_localnet is off everywhere"));
    }
    Ok(match damaged_chains()? {
        Some(damaged) if damaged.is_empty() => pass(
            "loopback guard",
            format!(
                "route_localnet is on for {}, guarded by chain guard, whose rules are nsport's",
                on.join(", ")
            ),
        ),
        damaged => fail(
            "loopback guard",
            match damaged {
                Some(damaged) => format!(
                    "route_localnet is on for {} and chain {} of table inet nsport is not what \
                     nsport wrote: the guard may not protect the host's 127.0.0.1",
                    on.join(", "),
                    damaged.join(", chain ")
                ),
                None => format!(
                    "route_localnet is on for {} without table inet nsport and its guard: \
                     neighbours can reach services bound to the host's 127.0.0.1",
                    on.join(", ")
                ),
            },
            "run any nsport command (nsport ls) to restore the guard or put back what nsport \
             set; otherwise sysctl -w net.ipv4.conf.IFACE.route_localnet=0",
        ),
    })
}

/// Runs every check; the caller decides how to show them.
pub fn run() -> Vec<Check> {
    let mut checks = Vec::new();
    if has_net_admin() {
        checks.push(pass("privilege", "running with CAP_NET_ADMIN"));
    } else {
        checks.push(fail(
            "privilege",
            "no CAP_NET_ADMIN: nsport cannot read or change nftables",
            "run nsport as root (or with CAP_NET_ADMIN)",
        ));
        return checks;
    }
    checks.push(probe());
    let rest = || -> Result<Vec<Check>, Error> {
        let mut checks = vec![layout()?];
        let mappings = crate::list()?;
        checks.extend(forwarding(&mappings));
        checks.extend(br_netfilter(&mappings)?);
        let chains = nftables::dump_base_chains().map_err(kernel)?;
        checks.extend(
            firewalls::findings(&chains, &mappings)
                .into_iter()
                .map(|finding| Check {
                    check: finding.check,
                    ok: finding.ok,
                    detail: finding.detail,
                    fix: finding.fix,
                }),
        );
        let problems = path_problems(&mappings)?;
        checks.extend(loopback_path(&mappings, &problems));
        let stale: Vec<String> = mappings
            .iter()
            .zip(stale_flags(&mappings))
            .filter(|(_, stale)| *stale)
            .map(|(m, _)| m.host_label())
            .collect();
        checks.push(if stale.is_empty() {
            pass(
                "stale mappings",
                format!("{}, none stale", plural(mappings.len(), "mapping")),
            )
        } else {
            fail(
                "stale mappings",
                format!("the namespace of {} is gone", stale.join(", ")),
                "nsport prune",
            )
        });
        checks.push(route_localnet_guard()?);
        Ok(checks)
    };
    match rest() {
        Ok(more) => checks.extend(more),
        Err(error) => checks.push(fail(
            "nftables",
            format!("cannot read the current state: {error}"),
            "see the error",
        )),
    }
    checks
}
