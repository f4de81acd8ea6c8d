//! The kernel settings a publish needs besides the table — forwarding, route_localnet
//! toward a target that serves the host's loopback, hairpin mode on the target's bridge
//! port — turned on when a mapping needs them and put back when the last such mapping goes.
//!
//! The order is what keeps the host safe at every crash point: the engine commits the
//! table with its guard first; then the value found is recorded durably; only then is the
//! setting written. Putting back goes the other way: the setting first, then the record.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::error::{Error, kernel, state};
use crate::host::state::{HairpinChange, Loaded, Originals, WriterLock};
use crate::host::sysctl::Sysctl;
use crate::netlink::rtnetlink;
use crate::ruleset::Mapping;

fn sysctl_error(sysctl: &Sysctl) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |error| Error::Sysctl {
        name: sysctl.name(),
        error,
    }
}

fn hairpin_error(port: &str) -> impl FnOnce(crate::netlink::NetlinkError) -> Error + '_ {
    move |error| Error::Hairpin {
        port: port.to_string(),
        error,
    }
}

/// What one target of a change needs: the interface toward it, its bridge port (when it
/// sits behind a bridge), and its mappings.
pub struct TargetNeeds<'a> {
    pub via: &'a str,
    pub bridge_port: Option<rtnetlink::Link>,
    pub mappings: Vec<&'a Mapping>,
}

/// What the mappings left in the table still need: route_localnet on the interfaces of
/// mappings that serve the host's 127.0.0.1, hairpin mode for the targets still published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StillNeeded {
    pub loopback_vias: BTreeSet<String>,
    pub targets: BTreeSet<IpAddr>,
    /// Whether mappings of each family remain, which keep its forwarding on.
    pub ipv4: bool,
    pub ipv6: bool,
}

impl StillNeeded {
    pub fn of_mappings(mappings: &[Mapping]) -> StillNeeded {
        StillNeeded {
            loopback_vias: mappings
                .iter()
                .filter(|m| m.serves_loopback())
                .map(|m| m.via.clone())
                .collect(),
            targets: mappings.iter().map(|m| m.to_addr).collect(),
            ipv4: mappings.iter().any(|m| !m.is_ipv6()),
            ipv6: mappings.iter().any(Mapping::is_ipv6),
        }
    }
}

/// The settings record of this namespace, read under its writer lock.
pub struct Settings<'a> {
    lock: &'a WriterLock,
    pub originals: Originals,
    /// The record was unreadable, and `originals` is the safe assumption made for it.
    pub assumed: bool,
}

impl<'a> Settings<'a> {
    /// Reads the record. An unreadable one is moved aside with a warning naming it, and
    /// replaced by the safe assumption: route_localnet was 0 on every interface in
    /// `table_ifaces` that has it on now, so putting back turns it off.
    pub fn load<I: IntoIterator<Item = String>>(
        lock: &'a WriterLock,
        table_ifaces: impl FnOnce() -> I,
    ) -> Result<Settings<'a>, Error> {
        let path = lock.record_path().to_path_buf();
        let originals = match lock.load().map_err(state(path))? {
            Loaded::Read(originals) => originals,
            Loaded::Corrupt { path, error } => {
                let mut originals = Originals::default();
                for iface in table_ifaces() {
                    if Sysctl::route_localnet(&iface)
                        .read()
                        .is_ok_and(|v| v == "1")
                    {
                        originals.route_localnet.insert(iface, "0".to_string());
                    }
                }
                let ifaces: Vec<&str> = originals
                    .route_localnet
                    .keys()
                    .map(String::as_str)
                    .collect();
                log::warn!(
                    "the settings record {} is unreadable ({error}); it was moved to {}.corrupt, \
                     and route_localnet is taken to have been 0 on {}",
                    path.display(),
                    path.display(),
                    if ifaces.is_empty() {
                        "no interface".to_string()
                    } else {
                        ifaces.join(", ")
                    }
                );
                let mut settings = Settings {
                    lock,
                    originals,
                    assumed: true,
                };
                settings.save()?;
                return Ok(settings);
            }
        };
        Ok(Settings {
            lock,
            originals,
            assumed: false,
        })
    }

    /// Writes the record as it is now.
    pub fn save(&mut self) -> Result<(), Error> {
        let path = self.lock.record_path().to_path_buf();
        self.lock.save(&self.originals).map_err(state(path))
    }

    /// Turns on what `needs` require. Every value found is recorded before the
    /// first write; when the record cannot be saved (a full /run), nothing is written.
    /// `forwarding_on` are the families whose forwarding `forwarding_of` found on a moment
    /// before: it is not read again. Returns the interfaces whose route_localnet is on now,
    /// found on or turned on.
    pub fn turn_on(
        &mut self,
        needs: &[TargetNeeds<'_>],
        forwarding_on: &[bool],
    ) -> Result<Vec<String>, Error> {
        let all = || needs.iter().flat_map(|need| need.mappings.iter().copied());
        let mut localnet = Vec::new();
        let mut hairpin = Vec::new();
        let mut changed = false;
        // Forwarding first on the list, and accept_ra=2 before IPv6 forwarding, so that
        // interfaces that learn their routes from router advertisements keep learning.
        let mut others: Vec<(Sysctl, &str)> = Vec::new();
        for ipv6 in [false, true] {
            if !all().any(|m| m.is_ipv6() == ipv6) || forwarding_on.contains(&ipv6) {
                continue;
            }
            let forward = forwarding(ipv6);
            let was = forward.read().map_err(sysctl_error(&forward))?;
            if was == "1" {
                continue;
            }
            if ipv6 {
                for accept_ra in Sysctl::every_accept_ra() {
                    if accept_ra.read().is_ok_and(|v| v == "1") {
                        self.originals
                            .sysctls
                            .entry(accept_ra.key())
                            .or_insert_with(|| "1".to_string());
                        others.push((accept_ra, "2"));
                    }
                }
            }
            self.originals.sysctls.entry(forward.key()).or_insert(was);
            others.push((forward, "1"));
        }
        let mut localnet_on = Vec::new();
        for need in needs {
            if need.mappings.iter().any(|m| m.serves_loopback()) {
                let sysctl = Sysctl::route_localnet(need.via);
                let was = sysctl.read().map_err(sysctl_error(&sysctl))?;
                localnet_on.push(need.via.to_string());
                if was != "1" && !localnet.contains(&sysctl) {
                    self.originals
                        .route_localnet
                        .entry(need.via.to_string())
                        .or_insert(was);
                    localnet.push(sysctl);
                }
            }
            let (Some(port), Some(mapping)) = (&need.bridge_port, need.mappings.first()) else {
                continue;
            };
            if !hairpin_on_now(port)?
                && !hairpin
                    .iter()
                    .any(|p: &&rtnetlink::Link| p.index == port.index)
            {
                let change =
                    self.originals
                        .hairpin
                        .entry(port.name.clone())
                        .or_insert(HairpinChange {
                            targets: BTreeSet::new(),
                            target: None,
                            was_on: false,
                            index: Some(port.index),
                        });
                // An entry left for a port of this name that was made again since
                // describes that old port; the mode turned on now is this one's.
                if change.index.is_some_and(|index| index != port.index) {
                    change.was_on = false;
                    change.index = Some(port.index);
                }
                hairpin.push(port);
            }
            // Every target behind the port keeps it on, not only the first one published.
            if let Some(change) = self.originals.hairpin.get_mut(&port.name) {
                changed |= change.targets.insert(mapping.to_addr);
            }
        }
        if changed || !localnet.is_empty() || !hairpin.is_empty() || !others.is_empty() {
            self.save()?;
        }
        for (sysctl, value) in &others {
            sysctl.write(value).map_err(sysctl_error(sysctl))?;
        }
        for sysctl in &localnet {
            sysctl.write("1").map_err(sysctl_error(sysctl))?;
        }
        for port in hairpin {
            log::info!("hairpin on for bridge port {}", port.name);
            rtnetlink::set_hairpin(port.index, true).map_err(hairpin_error(&port.name))?;
        }
        Ok(localnet_on)
    }

    /// Turns route_localnet on where a mapping in the table needs it and it is off: what
    /// an nsport killed between its commit and its settings left behind. Returns whether
    /// it turned anything on. The guard is in the table that says these mappings exist.
    /// Interfaces in `known_on` were just found on, or turned on, and are not read again.
    pub fn turn_on_missing(
        &mut self,
        needed: &StillNeeded,
        known_on: &[String],
    ) -> Result<bool, Error> {
        let mut missing = Vec::new();
        for via in needed
            .loopback_vias
            .iter()
            .filter(|via| !known_on.contains(via))
        {
            let sysctl = Sysctl::route_localnet(via);
            // An interface that is gone has no setting to repair.
            let Ok(now) = sysctl.read() else { continue };
            if now != "1" {
                self.originals
                    .route_localnet
                    .entry(via.clone())
                    .or_insert(now);
                missing.push(sysctl);
            }
        }
        if missing.is_empty() {
            return Ok(false);
        }
        self.save()?;
        for sysctl in &missing {
            log::warn!(
                "{} was off although a 127.0.0.1 mapping goes through it (an earlier nsport \
                 was interrupted); turning it on",
                sysctl.name()
            );
            sysctl.write("1").map_err(sysctl_error(sysctl))?;
        }
        Ok(true)
    }

    /// Puts back what no remaining mapping needs any more: forwarding of a family none
    /// needs, and what `put_back_unneeded_on_interfaces` puts back.
    /// Returns the families whose forwarding it put back.
    pub fn put_back_unneeded(&mut self, needed: &StillNeeded) -> Result<Vec<bool>, Error> {
        let mut families = Vec::new();
        for ipv6 in [false, true] {
            let family_needed = if ipv6 { needed.ipv6 } else { needed.ipv4 };
            if !family_needed && self.put_back_forwarding(ipv6)? {
                families.push(ipv6);
            }
        }
        if self.put_back_unneeded_on_interfaces(needed)?.is_empty() && !families.is_empty() {
            self.save()?;
        }
        Ok(families)
    }

    /// Puts back route_localnet on interfaces no remaining loopback mapping goes through,
    /// and hairpin mode of ports none of whose targets is published; forwarding stays as
    /// it is (it goes back with its family's `closed` element, which takes a batch).
    /// What it put back (and then saved), by name.
    pub fn put_back_unneeded_on_interfaces(
        &mut self,
        needed: &StillNeeded,
    ) -> Result<Vec<String>, Error> {
        let unneeded_localnet: Vec<(String, String)> = self
            .originals
            .route_localnet
            .iter()
            .filter(|(iface, _)| !needed.loopback_vias.contains(iface.as_str()))
            .map(|(iface, was)| (iface.clone(), was.clone()))
            .collect();
        let unneeded_hairpin: Vec<(String, HairpinChange)> = self
            .originals
            .hairpin
            .iter()
            .filter(|(_, change)| !change.needed_by(&needed.targets))
            .map(|(port, change)| (port.clone(), change.clone()))
            .collect();
        let mut put_back = Vec::new();
        for (iface, was) in &unneeded_localnet {
            restore_route_localnet(iface, was)?;
            self.originals.route_localnet.remove(iface);
            put_back.push(Sysctl::route_localnet(iface).name());
        }
        for (port, change) in &unneeded_hairpin {
            restore_hairpin(port, change)?;
            self.originals.hairpin.remove(port);
            put_back.push(format!("hairpin mode of bridge port {port}"));
        }
        if !put_back.is_empty() {
            self.save()?;
        }
        Ok(put_back)
    }

    /// Puts one family's forwarding back when nsport turned it on (and, for IPv6, the
    /// accept_ra values it raised to keep router advertisements coming). Whether it did.
    fn put_back_forwarding(&mut self, ipv6: bool) -> Result<bool, Error> {
        let forward = forwarding(ipv6);
        let Some(was) = self.originals.sysctls.remove(&forward.key()) else {
            return Ok(false);
        };
        restore(&forward, &was)?;
        if ipv6 {
            let accept_ra: Vec<String> = self
                .originals
                .sysctls
                .keys()
                .filter(|key| key.ends_with("/accept_ra"))
                .cloned()
                .collect();
            for key in accept_ra {
                let was = self.originals.sysctls.remove(&key).expect("listed above");
                if let Some(sysctl) = Sysctl::from_key(&key) {
                    restore(&sysctl, &was)?;
                }
            }
        }
        Ok(true)
    }

    /// Puts back everything recorded, as `flush` does before it deletes the table.
    pub fn put_back_everything(&mut self) -> Result<(), Error> {
        if self.originals.changes_nothing() {
            return self.save();
        }
        for (iface, was) in std::mem::take(&mut self.originals.route_localnet) {
            restore_route_localnet(&iface, &was)?;
        }
        for (port, change) in std::mem::take(&mut self.originals.hairpin) {
            restore_hairpin(&port, &change)?;
        }
        for ipv6 in [false, true] {
            self.put_back_forwarding(ipv6)?;
        }
        for (key, was) in std::mem::take(&mut self.originals.sysctls) {
            if let Some(sysctl) = Sysctl::from_key(&key) {
                restore(&sysctl, &was)?;
            }
        }
        self.save()
    }

    /// What `put_back_everything` would do, in words: `route_localnet on br0 and hairpin
    /// mode of v1`.
    pub fn put_back_summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.originals.route_localnet.is_empty() {
            let ifaces: Vec<&str> = self
                .originals
                .route_localnet
                .keys()
                .map(String::as_str)
                .collect();
            parts.push(format!("route_localnet on {}", ifaces.join(", ")));
        }
        if !self.originals.hairpin.is_empty() {
            let ports: Vec<&str> = self.originals.hairpin.keys().map(String::as_str).collect();
            parts.push(format!("hairpin mode of {}", ports.join(", ")));
        }
        parts.join(" and ")
    }

    /// What `put_back_everything` would do, as `sysctl` and hairpin lines.
    pub fn would_put_back(&self) -> Vec<String> {
        let localnet =
            self.originals.route_localnet.iter().map(|(iface, was)| {
                format!("sysctl {}={was}", Sysctl::route_localnet(iface).name())
            });
        let hairpin = self.originals.hairpin.iter().map(|(port, change)| {
            let mode = if change.was_on { "on" } else { "off" };
            format!("hairpin {mode} for bridge port {port}")
        });
        let others = self
            .originals
            .sysctls
            .iter()
            .map(|(key, was)| match Sysctl::from_key(key) {
                Some(sysctl) => format!("sysctl {}={was}", sysctl.name()),
                None => format!("sysctl {key}={was}"),
            });
        localnet.chain(hairpin).chain(others).collect()
    }
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

fn restore_route_localnet(iface: &str, was: &str) -> Result<(), Error> {
    restore(&Sysctl::route_localnet(iface), was)
}

fn restore(sysctl: &Sysctl, was: &str) -> Result<(), Error> {
    // The interface may be gone, and its setting with it.
    match sysctl.read() {
        Ok(now) if now != was => sysctl.write(was).map_err(sysctl_error(sysctl)),
        _ => Ok(()),
    }
}

fn forwarding(ipv6: bool) -> Sysctl {
    if ipv6 {
        Sysctl::ipv6_forwarding()
    } else {
        Sysctl::ip_forward()
    }
}

/// The families among `mappings` whose forwarding is off now: turning it on must wait for
/// the table to close what forwarding would open.
pub fn forwarding_off(mappings: &[Mapping]) -> Vec<bool> {
    forwarding_of(mappings).off
}

/// The families of `mappings` whose forwarding reads off, and those whose reads on; one
/// that cannot be read is in neither.
pub struct Forwarding {
    pub off: Vec<bool>,
    pub on: Vec<bool>,
}

/// Reads the forwarding of each family `mappings` use.
pub fn forwarding_of(mappings: &[Mapping]) -> Forwarding {
    let mut found = Forwarding {
        off: Vec::new(),
        on: Vec::new(),
    };
    for ipv6 in [false, true] {
        if !mappings.iter().any(|m| m.is_ipv6() == ipv6) {
            continue;
        }
        match forwarding(ipv6).read() {
            Ok(value) if value == "1" => found.on.push(ipv6),
            Ok(_) => found.off.push(ipv6),
            Err(_) => {}
        }
    }
    found
}

/// Whether bridge port `port` is in hairpin mode now. The port was read before the writer
/// lock was taken, and a removal that held the lock meanwhile may have put the mode back
/// off: an `add` racing `rm --netns` on the same port left its mapping without hairpin
/// mode in about half the rounds it came second. So a port read as on is read again. The
/// record cannot stand in for that read: a removal killed between putting the mode back
/// and saving the record, or an `add` killed between saving its entry and setting the
/// mode, leaves an entry that says nsport keeps the mode on while it is off.
fn hairpin_on_now(port: &rtnetlink::Link) -> Result<bool, Error> {
    if port.hairpin != Some(true) {
        return Ok(false);
    }
    // A port gone meanwhile (its namespace deleted) has no mode left to turn on.
    let now = rtnetlink::link_by_index(port.index).map_err(kernel)?;
    Ok(now.is_none_or(|link| link.hairpin == Some(true)))
}

fn restore_hairpin(port: &str, change: &HairpinChange) -> Result<(), Error> {
    let was_on = change.was_on;
    match rtnetlink::link_by_name(port).map_err(kernel)? {
        Some(link) if change.index.is_some_and(|index| index != link.index) => {
            log::info!(
                "bridge port {port} was made again since nsport turned its hairpin mode on; \
                 leaving it as it is"
            );
            Ok(())
        }
        Some(link) if link.hairpin == Some(!was_on) => {
            log::info!(
                "hairpin {} for bridge port {port}",
                if was_on { "on" } else { "off" }
            );
            rtnetlink::set_hairpin(link.index, was_on).map_err(hairpin_error(port))
        }
        _ => Ok(()),
    }
}
