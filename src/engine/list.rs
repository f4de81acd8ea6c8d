//! `ls`, `export` and what `doctor` reads: the mappings with their status, the table as an
//! `nft -f` script, and repairs of what protects them before any of it is reported.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::kernel::{Kernel, Netlink};
use super::layout::Layout;
use super::overlap;
use super::table::{self, Counter, HelperKey, Snapshot};
use super::{kernel_error, writer_lock};
use crate::error::Error;
use crate::host::netns::Namespace;
use crate::host::settings::{Settings, StillNeeded};
use crate::host::sockets::HostSockets;
use crate::host::state;
use crate::host::sysctl::Sysctl;
use crate::netlink::NetlinkError;
use crate::ruleset::metadata::is_digest;
use crate::ruleset::{self, Element, Mapping, SET_CLOSED};

/// A mapping as `ls` shows it: with whether its namespace is gone and which host socket
/// it hides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing {
    #[serde(flatten)]
    pub mapping: Mapping,
    /// The last target port of a range published as one (with `host_port_end`, which the
    /// mapping carries); absent for a single port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_port_end: Option<u16>,
    /// The namespace the mapping was made for no longer exists (or is another one now).
    pub stale: bool,
    /// A host socket on the same port that the mapping hides from its clients.
    pub shadows: Option<String>,
    /// Mappings published over this one with `--force` whose host sides it is more
    /// specific than: it takes their traffic where they overlap (host sides, as
    /// `8080/tcp`).
    pub shadows_mappings: Vec<String>,
    /// More specific mappings that take this one's traffic where they overlap.
    pub shadowed_by: Vec<String>,
    /// Whether the host reaches it through its loopback: 127.0.0.1 for IPv4 wildcard and
    /// 127.0.0.1 publishes; never `[::1]`, which Linux cannot DNAT.
    pub loopback: bool,
    /// Packets through the mapping, both directions, since it was published.
    pub packets: u64,
    /// Bytes through the mapping, both directions, since it was published.
    pub bytes: u64,
}

/// Every mapping in `table inet nsport`, sorted by family, protocol, host address and port.
pub fn list() -> Result<Vec<Mapping>, Error> {
    Ok(table::read(&mut Netlink, true)?
        .mappings
        .into_iter()
        .map(|(mapping, _)| mapping)
        .collect())
}

/// Repairs what a read found broken, without planning any other change: route_localnet
/// left on for a table someone deleted is put back, and chains someone emptied or edited
/// get nsport's rules again. A read-only command does this before it answers, so that what
/// it reports is what protects the host. It reads every mapping, so it also sets right
/// what a killed command left between its commit and its settings: route_localnet off
/// where a mapping needs it, or on (and recorded) where none does any more.
fn repair_found(first_look: &Snapshot) -> Result<(), Error> {
    let still_needed = |snapshot: &Snapshot| {
        let mappings: Vec<Mapping> = snapshot.mappings.iter().map(|(m, _)| m.clone()).collect();
        StillNeeded::of_mappings(&mappings)
    };
    // Without the lock, a hint only: route_localnet off where a mapping goes through, or
    // a setting the record says nsport turned on that no mapping needs any more. Only the
    // record's own settings count: one an administrator set (kube-proxy sets `all`) takes
    // no lock, and a record that cannot be read is left to a change to report.
    let settings_astray = || {
        let needed = still_needed(first_look);
        let off = (needed.loopback_vias.iter())
            .any(|via| Sysctl::route_localnet(via).read().is_ok_and(|v| v != "1"));
        off || state::peek().is_some_and(|record| {
            let localnet = record.route_localnet.keys().any(|iface| {
                !needed.loopback_vias.contains(iface.as_str())
                    && Sysctl::route_localnet(iface).read().is_ok_and(|v| v == "1")
            });
            localnet || (record.hairpin.values()).any(|change| !change.needed_by(&needed.targets))
        })
    };
    if first_look.exists && first_look.damaged.is_empty() && !settings_astray() {
        return Ok(());
    }
    // A table of another layout is not this nsport's to repair: an older one is migrated
    // by the next change, a newer one is left alone.
    if first_look.exists && !first_look.layout.is_current() {
        return Ok(());
    }
    if !first_look.exists && !state::dir().exists() {
        return Ok(());
    }
    // What was seen without the lock may be stale by now (an `add` may have created the
    // table since): decide from a read made under the lock.
    let lock = writer_lock()?;
    let mut kernel = Netlink;
    let snapshot = table::read(&mut kernel, true)?;
    let mut settings = Settings::load(&lock, || table::table_interfaces(&snapshot))?;
    if snapshot.exists && !snapshot.layout.is_current() {
        return Ok(());
    }
    if !snapshot.exists {
        if !settings.originals.changes_nothing() {
            log::warn!(
                "table inet nsport was deleted by something else; putting back {}",
                settings.put_back_summary()
            );
        }
        settings.originals.counts = None;
        settings.put_back_everything()?;
        return Ok(());
    }
    if snapshot.damaged.is_empty() {
        // Intact: only settings an interrupted nsport left off to turn on, or on to put
        // back.
        set_right(&mut settings, &still_needed(&snapshot))?;
        return Ok(());
    }
    let declarations = table::Declarations::new();
    let changes = declarations.repairs(&snapshot);
    log::warn!(
        "table inet nsport was changed by something else (chain {}); restoring what nsport wrote",
        snapshot.damaged.join(", chain ")
    );
    match kernel.commit(&changes, Some(snapshot.genid)) {
        Ok(()) => set_right(&mut settings, &still_needed(&snapshot)),
        // Someone outside nsport changed the ruleset since the read: the next command
        // repairs from a fresh read.
        Err(NetlinkError::Stale) => Ok(()),
        Err(error) => Err(kernel_error(error)),
    }
}

/// Turns on what the mappings need and an interrupted nsport left off, and puts back
/// what it recorded and left on that none needs any more (route_localnet, hairpin mode;
/// forwarding goes back with a change, in the batch that reopens its family).
fn set_right(settings: &mut Settings<'_>, needed: &StillNeeded) -> Result<(), Error> {
    settings.turn_on_missing(needed, &[])?;
    // A read-only command acts on what nsport recorded, not on the assumption made for a
    // record it could not read: that one is a change's to act on.
    if settings.assumed {
        return Ok(());
    }
    let put_back = settings.put_back_unneeded_on_interfaces(needed)?;
    if !put_back.is_empty() {
        log::warn!(
            "put back {}, which an earlier nsport was interrupted before putting back and no \
             mapping needs any more",
            put_back.join(", ")
        );
    }
    Ok(())
}

/// Every mapping with its packet and byte counters, repairing what protects them first.
fn list_counted() -> Result<Vec<(Mapping, Counter)>, Error> {
    let snapshot = table::read(&mut Netlink, true)?;
    repair_found(&snapshot)?;
    Ok(snapshot.mappings)
}

/// Every mapping, with whether its namespace is gone and which host socket it hides.
pub fn list_status() -> Result<Vec<Listing>, Error> {
    let mappings = list_counted()?;
    let sockets = HostSockets::read(mappings.iter().map(|(m, _)| m))?;
    let plain: Vec<Mapping> = mappings.iter().map(|(m, _)| m.clone()).collect();
    let stale = stale_flags(&plain);
    let labels = |mappings: Vec<&Mapping>| mappings.iter().map(|m| m.host_label()).collect();
    let shadowing: Vec<(Vec<String>, Vec<String>)> = overlap::shadowing(&plain)
        .into_iter()
        .map(|(by, over)| (labels(by), labels(over)))
        .collect();
    Ok(mappings
        .into_iter()
        .zip(stale)
        .zip(shadowing)
        .map(
            |(((mapping, (packets, bytes)), stale), (by, over))| Listing {
                shadows: sockets.shadowed_by(&mapping),
                shadows_mappings: over,
                shadowed_by: by,
                to_port_end: mapping.to_port_end(),
                stale,
                loopback: mapping.serves_loopback(),
                packets,
                bytes,
                mapping,
            },
        )
        .collect())
}

/// For each mapping, whether the namespace it was made for is gone (or is another one of
/// the same name now).
pub(crate) fn stale_flags(mappings: &[Mapping]) -> Vec<bool> {
    let mut namespaces: HashMap<&str, Option<u64>> = HashMap::new();
    mappings
        .iter()
        .map(|mapping| match (&mapping.netns, mapping.netns_inode) {
            // A name too long to record: its inode is what is left to go by.
            (Some(name), Some(inode)) if is_digest(name) => {
                !crate::host::netns::inode_is_alive(inode)
            }
            (Some(name), _) if is_digest(name) => false,
            (Some(name), _) => {
                let now = *namespaces
                    .entry(name)
                    .or_insert_with(|| Namespace::open(name).ok().map(|ns| ns.inode));
                now.is_none() || mapping.netns_inode.is_some_and(|inode| now != Some(inode))
            }
            (None, _) => false,
        })
        .collect()
}

/// Which chains of the table are not what nsport wrote (none when intact), and whether
/// the table exists: what `doctor` reports. A table of another layout is not judged.
pub fn damaged_chains() -> Result<Option<Vec<&'static str>>, Error> {
    let snapshot = table::read(&mut Netlink, false)?;
    Ok(snapshot.exists.then_some(snapshot.damaged))
}

/// The layout of `table inet nsport`, when it exists.
pub fn table_layout() -> Result<Option<Layout>, Error> {
    let snapshot = table::read(&mut Netlink, false)?;
    Ok(snapshot.exists.then_some(snapshot.layout))
}

/// The whole table as an `nft -f` script that recreates it, for persisting through
/// nftables.service.
pub fn export_nft() -> Result<String, Error> {
    let mut kernel = Netlink;
    let snapshot = table::read(&mut kernel, true)?;
    // A script of this layout could not say what a newer table holds.
    snapshot.layout.check_changeable()?;
    let mut out = ruleset::table_script();
    for (mapping, _) in &snapshot.mappings {
        out.push_str(&Element::mapping(mapping).nft_add());
        out.push('\n');
    }
    // An older table's helpers are of its own layout: the script has the ones its
    // mappings need in this one, as a migration would write them.
    let derived: HashSet<HelperKey>;
    let helpers = if snapshot.layout.is_current() {
        &snapshot.helpers
    } else {
        let mappings: Vec<Mapping> = snapshot.mappings.iter().map(|(m, _)| m.clone()).collect();
        derived = table::helpers_for(&mappings)
            .into_iter()
            .map(|(element, _)| (element.set, element.key))
            .collect();
        &derived
    };
    let mut helpers: Vec<_> = helpers.iter().collect();
    helpers.sort();
    for (set, key) in helpers {
        if let Some(helper) = Element::helper(set, key) {
            out.push_str(&helper.nft_add());
            out.push('\n');
        }
    }
    // The source allow-lists, from the lists the mappings carry.
    let mappings: Vec<Mapping> = snapshot.mappings.iter().map(|(m, _)| m.clone()).collect();
    for element in ruleset::allow_elements_for(&mappings) {
        out.push_str(&element.nft_add());
        out.push('\n');
    }
    // Which families' forwarding nsport turned on stays closed in the copy too.
    for closed in kernel.elements(SET_CLOSED).map_err(kernel_error)? {
        let ipv6 = closed.key.first() == Some(&(libc::NFPROTO_IPV6 as u8));
        out.push_str(&Element::closed(ipv6).nft_add());
        out.push('\n');
    }
    Ok(out)
}
