//! The kernel settings a publish needs besides the table, turned on when a mapping needs
//! them and put back when the last such mapping goes.

use std::collections::BTreeSet;

use crate::netlink::nftables::{self, ChainDump, Change};
use crate::netlink::rtnetlink;
use crate::ruleset::{self, CHAIN_GUARD, Mapping};
use crate::state::{HairpinChange, Record};
use crate::sysctl::Sysctl;
use crate::{Error, kernel, state};

fn sysctl_error(sysctl: &Sysctl) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |error| Error::Sysctl {
        name: sysctl.name(),
        error,
    }
}

fn lock() -> Result<Record, Error> {
    Record::lock().map_err(state)
}

/// What a publish needs: forwarding, route_localnet toward a target that serves the host's
/// loopback, and hairpin mode on the target's bridge port. Written after the table and its
/// guard exist; what was there before is recorded so that it can be put back.
pub fn turn_on(
    via: &str,
    bridge_port: Option<&rtnetlink::Link>,
    mappings: &[Mapping],
) -> Result<(), Error> {
    let mut forwarding = Vec::new();
    if mappings.iter().any(|m| !m.is_ipv6()) {
        forwarding.push(Sysctl::ip_forward());
    }
    if mappings.iter().any(Mapping::is_ipv6) {
        forwarding.push(Sysctl::ipv6_forwarding());
    }
    for forward in &forwarding {
        if forward.read().map_err(sysctl_error(forward))? != "1" {
            forward.write("1").map_err(sysctl_error(forward))?;
        }
    }
    let mut record = lock()?;
    if mappings.iter().any(Mapping::serves_loopback) {
        let localnet = Sysctl::route_localnet(via);
        let was = localnet.read().map_err(sysctl_error(&localnet))?;
        if was != "1" {
            record
                .originals
                .route_localnet
                .entry(via.to_string())
                .or_insert(was);
            localnet.write("1").map_err(sysctl_error(&localnet))?;
        }
    }
    if let (Some(port), Some(mapping)) = (bridge_port, mappings.first())
        && port.hairpin != Some(true)
    {
        log::info!("hairpin on for bridge port {}", port.name);
        rtnetlink::set_hairpin(port.index, true).map_err(kernel)?;
        record
            .originals
            .hairpin
            .entry(port.name.clone())
            .or_insert(HairpinChange {
                target: mapping.to_addr,
                was_on: false,
            });
    }
    record.save().map_err(state)
}

/// The settings `turn_on` would change for `mappings`, as `sysctl` lines.
pub fn would_turn_on(mappings: &[Mapping]) -> Vec<String> {
    let mut wanted = Vec::new();
    if mappings.iter().any(|m| !m.is_ipv6()) {
        wanted.push(Sysctl::ip_forward());
    }
    if mappings.iter().any(Mapping::is_ipv6) {
        wanted.push(Sysctl::ipv6_forwarding());
    }
    let vias: BTreeSet<&str> = mappings
        .iter()
        .filter(|m| m.serves_loopback())
        .map(|m| m.via.as_str())
        .collect();
    wanted.extend(vias.into_iter().map(Sysctl::route_localnet));
    wanted
        .into_iter()
        .filter(|sysctl| sysctl.read().is_ok_and(|value| value != "1"))
        .map(|sysctl| format!("sysctl {}=1", sysctl.name()))
        .collect()
}

/// What `flush` would put back, as `sysctl` and hairpin lines.
pub fn would_put_back() -> Vec<String> {
    let Ok(record) = Record::lock() else {
        return Vec::new();
    };
    let originals = &record.originals;
    let localnet = originals
        .route_localnet
        .iter()
        .map(|(iface, was)| format!("sysctl {}={was}", Sysctl::route_localnet(iface).name()));
    let hairpin = originals.hairpin.iter().map(|(port, change)| {
        let mode = if change.was_on { "on" } else { "off" };
        format!("hairpin {mode} for bridge port {port}")
    });
    localnet.chain(hairpin).collect()
}

/// Puts back what no remaining mapping needs any more: route_localnet on interfaces no
/// remaining loopback mapping goes through, hairpin mode of targets no mapping leads to.
pub fn put_back_unneeded(remaining: &[Mapping]) -> Result<(), Error> {
    let mut record = lock()?;
    let loopback_vias: BTreeSet<&str> = remaining
        .iter()
        .filter(|m| m.serves_loopback())
        .map(|m| m.via.as_str())
        .collect();
    let targets: BTreeSet<_> = remaining.iter().map(|m| m.to_addr).collect();
    let originals = &mut record.originals;
    let unneeded_localnet: Vec<String> = originals
        .route_localnet
        .keys()
        .filter(|iface| !loopback_vias.contains(iface.as_str()))
        .cloned()
        .collect();
    for iface in unneeded_localnet {
        let was = originals
            .route_localnet
            .remove(&iface)
            .expect("listed above");
        restore_route_localnet(&iface, &was)?;
    }
    let unneeded_hairpin: Vec<String> = originals
        .hairpin
        .iter()
        .filter(|(_, change)| !targets.contains(&change.target))
        .map(|(port, _)| port.clone())
        .collect();
    for port in unneeded_hairpin {
        let change = originals.hairpin.remove(&port).expect("listed above");
        restore_hairpin(&port, change.was_on)?;
    }
    record.save().map_err(state)
}

fn restore_route_localnet(iface: &str, was: &str) -> Result<(), Error> {
    let localnet = Sysctl::route_localnet(iface);
    // The interface may be gone, and its setting with it.
    match localnet.read() {
        Ok(now) if now != was => localnet.write(was).map_err(sysctl_error(&localnet)),
        _ => Ok(()),
    }
}

fn restore_hairpin(port: &str, was_on: bool) -> Result<(), Error> {
    match rtnetlink::link_by_name(port).map_err(kernel)? {
        Some(link) if link.hairpin == Some(!was_on) => {
            log::info!(
                "hairpin {} for bridge port {port}",
                if was_on { "on" } else { "off" }
            );
            rtnetlink::set_hairpin(link.index, was_on).map_err(kernel)
        }
        _ => Ok(()),
    }
}

/// Notices route_localnet left on without its guard, as after `nft flush ruleset`: with
/// the table gone its mappings are gone too, so the settings are put back; with only the
/// guard chain gone, the guard is put back.
pub fn check_guard() -> Result<(), Error> {
    if lock()?.originals.route_localnet.is_empty() {
        return Ok(());
    }
    check_guard_given(&nftables::dump_base_chains().map_err(kernel)?)
}

/// The same, given a dump of every base chain, which tells whether the guard chain and
/// its table exist.
pub fn check_guard_given(chains: &[ChainDump]) -> Result<(), Error> {
    let mut record = lock()?;
    if record.originals.route_localnet.is_empty() {
        return Ok(());
    }
    let ours = |chain: &&ChainDump| {
        chain.family == libc::NFPROTO_INET as u32 && chain.table == ruleset::TABLE
    };
    if chains
        .iter()
        .filter(ours)
        .any(|chain| chain.name == CHAIN_GUARD)
    {
        return Ok(());
    }
    // Every nsport table has base chains: none in the dump means no table.
    if !chains.iter().any(|chain| ours(&chain)) {
        let ifaces: Vec<String> = record.originals.route_localnet.keys().cloned().collect();
        log::warn!(
            "table inet nsport was deleted by something else; putting back route_localnet on {}",
            ifaces.join(", ")
        );
        put_back_all(&mut record)?;
        return record.save().map_err(state);
    }
    log::warn!("the guard chain of table inet nsport was deleted; adding it back");
    let chains = ruleset::chains();
    let rules = ruleset::rules();
    let mut changes: Vec<Change> = chains
        .iter()
        .filter(|chain| chain.name == CHAIN_GUARD)
        .map(Change::AddChain)
        .collect();
    changes.extend(
        rules
            .iter()
            .filter(|rule| rule.chain == CHAIN_GUARD)
            .map(Change::AddRule),
    );
    nftables::commit(&changes, None).map_err(kernel)
}

/// Puts back everything recorded, as `flush` does.
pub fn put_back_everything() -> Result<(), Error> {
    let mut record = lock()?;
    put_back_all(&mut record)?;
    record.save().map_err(state)
}

fn put_back_all(record: &mut Record) -> Result<(), Error> {
    for (iface, was) in std::mem::take(&mut record.originals.route_localnet) {
        restore_route_localnet(&iface, &was)?;
    }
    for (port, change) in std::mem::take(&mut record.originals.hairpin) {
        restore_hairpin(&port, change.was_on)?;
    }
    Ok(())
}
