//! `nsport doctor`: checks what publishing needs and what breaks it, each with the fix.
//! It only reads: nothing is repaired, and the nftables probe is a throwaway table created
//! and deleted in the same batch.

use std::fs;

use crate::netlink::nftables::{self, Change};
use crate::ruleset::{self, CHAIN_GUARD, Mapping};
use crate::sysctl::Sysctl;
use crate::{Error, firewalls, kernel};

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
    for (ipv6, sysctl) in [
        (false, Sysctl::ip_forward()),
        (true, Sysctl::ipv6_forwarding()),
    ] {
        if !mappings.iter().any(|m| m.is_ipv6() == ipv6) {
            continue;
        }
        let name = sysctl.name();
        checks.push(match sysctl.read().as_deref() {
            Ok("1") => pass("forwarding", format!("{name} is 1")),
            _ => fail(
                "forwarding",
                format!("{name} is not 1: published ports are unreachable from outside"),
                format!("sysctl -w {name}=1 (nsport add sets it)"),
            ),
        });
    }
    checks
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
        let Some(via) = crate::rtnetlink::link_by_name(&mapping.via).map_err(kernel)? else {
            continue;
        };
        let Some(port) = crate::bridge_port_of(mapping, &via)? else {
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

fn route_localnet_guard() -> Result<Check, Error> {
    let on: Vec<String> = fs::read_dir("/proc/sys/net/ipv4/conf")
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|iface| Sysctl::route_localnet(iface).read().is_ok_and(|v| v == "1"))
                .collect()
        })
        .unwrap_or_default();
    if on.is_empty() {
        return Ok(pass("loopback guard", "route_localnet is off everywhere"));
    }
    let guarded = nftables::table_exists().map_err(kernel)?
        && nftables::chain_exists(CHAIN_GUARD).map_err(kernel)?;
    Ok(if guarded {
        pass(
            "loopback guard",
            format!(
                "route_localnet is on for {}, guarded by chain guard",
                on.join(", ")
            ),
        )
    } else {
        fail(
            "loopback guard",
            format!(
                "route_localnet is on for {} without the guard chain: neighbours can reach \
                 services bound to the host's 127.0.0.1",
                on.join(", ")
            ),
            "run any nsport command to restore the guard or reset what nsport set; otherwise \
             sysctl -w net.ipv4.conf.IFACE.route_localnet=0",
        )
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
        let mappings = crate::list()?;
        let mut checks = forwarding(&mappings);
        checks.extend(br_netfilter(&mappings)?);
        let chains = nftables::dump_base_chains().map_err(kernel)?;
        let dropping = firewalls::dropping_forward_chains(&chains);
        if dropping.is_empty() {
            checks.push(pass(
                "other firewalls",
                "no other table drops forwarded traffic by default",
            ));
        }
        for warning in dropping {
            let (detail, fix) = warning
                .split_once("; allow them with: ")
                .unwrap_or((&warning, ""));
            checks.push(fail("other firewalls", detail, fix));
        }
        let stale: Vec<String> = mappings
            .iter()
            .zip(crate::stale_flags(&mappings))
            .filter(|(_, stale)| *stale)
            .map(|(m, _)| crate::host_label(m))
            .collect();
        checks.push(if stale.is_empty() {
            pass(
                "stale mappings",
                format!("{} mappings, none stale", mappings.len()),
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
