//! Every decision of ADD, DEL, GC and CHECK as a pure function of the mappings in the table
//! (and, for CHECK, what else was read from the kernel): no I/O here, so that each can run
//! again on a fresh read when another writer changed the table in between.

use std::collections::HashMap;
use std::net::IpAddr;

use super::config::{Family, PortMapping};
use super::{CniError, code, fail};
use crate::Error;
use crate::engine::helpers_for;
use crate::ruleset::metadata::same_name;
use crate::ruleset::{Element, Mapping};
use crate::spec::with_port;

/// One attachment: a container's interface on a network.
#[derive(Debug, Clone, Copy)]
pub(super) struct Attachment<'a> {
    pub id: &'a str,
    pub ifname: &'a str,
    /// `None` only for a DEL whose configuration names no network: then the container
    /// and interface, unique on a host, are enough.
    pub network: Option<&'a str>,
}

impl Attachment<'_> {
    /// Whether the mapping was made for this attachment. A mapping made before nsport
    /// recorded networks belongs to its container's interface on any network.
    ///
    /// A name too long for the element comment is recorded as its digest
    /// (`ruleset::metadata`): each is compared with `same_name`.
    pub fn owns(&self, mapping: &Mapping) -> bool {
        mapping
            .container
            .as_deref()
            .is_some_and(|recorded| same_name(recorded, self.id))
            && mapping
                .container_ifname
                .as_deref()
                .is_some_and(|recorded| same_name(recorded, self.ifname))
            && match (self.network, &mapping.network) {
                (Some(network), Some(recorded)) => same_name(recorded, network),
                _ => true,
            }
    }

    /// Whether a mapping is of this attachment's network (which takeover needs).
    pub fn same_network(&self, mapping: &Mapping) -> bool {
        match (self.network, &mapping.network) {
            (Some(network), Some(recorded)) => same_name(recorded, network),
            _ => false,
        }
    }
}

/// What a mapping records besides its ports and target.
pub(super) struct Origin<'a> {
    pub attachment: Attachment<'a>,
    pub netns: Option<&'a str>,
    pub netns_inode: Option<u64>,
    pub allow_direct: bool,
    /// The sources portmap's conditions allow; empty for every source.
    pub allow_from: Vec<crate::model::SourcePrefix>,
}

/// The mappings the port mappings ask for: each on the container's first address of
/// each family its host address allows (both when it names none). `vias` holds the
/// host-side interface toward each address, resolved beforehand.
pub(super) fn wanted(
    ports: &[PortMapping],
    ips: &[IpAddr],
    vias: &HashMap<IpAddr, String>,
    origin: &Origin,
) -> Result<Vec<Mapping>, CniError> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for port in ports {
        for &to in ips {
            if port.family.is_some_and(|family| family != Family::of(to)) {
                continue;
            }
            let mapping = Mapping {
                proto: port.proto,
                host_addr: port.host_addr,
                on: None,
                host_port: port.host_port,
                // CNI runtimes hand over every port of a range as an entry of its own;
                // they stay single ports, as they came.
                host_port_end: None,
                to_addr: to,
                to_port: port.container_port,
                via: vias.get(&to).cloned().unwrap_or_default(),
                netns: origin.netns.map(String::from),
                netns_inode: origin.netns_inode,
                allow_direct: origin.allow_direct,
                container: Some(origin.attachment.id.to_string()),
                container_ifname: Some(origin.attachment.ifname.to_string()),
                network: origin.attachment.network.map(String::from),
                allow_from: origin.allow_from.clone(),
            };
            match mappings
                .iter()
                .find(|m| m.set() == mapping.set() && m.key() == mapping.key())
            {
                Some(same) if same == &mapping => {}
                Some(first) => {
                    return Err(fail(
                        code::INVALID_CONFIG,
                        format!(
                            "runtimeConfig.portMappings publishes host port {} twice, to {} and {}",
                            mapping.host_label(),
                            with_port(first.to_addr, first.to_port),
                            with_port(mapping.to_addr, mapping.to_port)
                        ),
                        "",
                    ));
                }
                None => mappings.push(mapping),
            }
        }
    }
    Ok(mappings)
}

/// Who holds a mapping, for error messages: its target with every port of a range.
fn holder(mapping: &Mapping) -> String {
    let to = with_port(mapping.to_addr, mapping.to_ports_text());
    match (&mapping.container, &mapping.network) {
        (Some(id), Some(network)) => format!(
            "{to} of container {id}/{} on network {network}",
            mapping.container_ifname.as_deref().unwrap_or_default()
        ),
        (Some(id), None) => format!("{to} of container {id}"),
        (None, _) => match &mapping.netns {
            Some(netns) => format!("{to} (nsport add, netns {netns})"),
            None => format!("{to} (nsport add)"),
        },
    }
}

/// ADD: the table with the attachment's mappings replaced by `wanted`. A host port held by
/// another container on the same network whose namespace is gone (`gone`) is taken over:
/// its sandbox was replaced before its DEL came. One held by a live container, by the CLI
/// or by another network is a conflict (code 100): taking a live container's port would
/// cut it off, and its runtime's cleanup of the refused newcomer would then delete the
/// port for both (as Podman does after its own bind fails).
pub(super) fn add(
    current: &[Mapping],
    attachment: &Attachment,
    wanted: &[Mapping],
    gone: impl Fn(&Mapping) -> bool,
) -> Result<Vec<Mapping>, Error> {
    let mut desired: Vec<Mapping> = current
        .iter()
        .filter(|m| !attachment.owns(m))
        .cloned()
        .collect();
    for mapping in wanted {
        let Some(at) = desired
            .iter()
            .position(|m| m.set() == mapping.set() && m.key() == mapping.key())
        else {
            continue;
        };
        let held = &desired[at];
        if held.container.is_none() || !attachment.same_network(held) || !gone(held) {
            return Err(Error::Conflict {
                host: mapping.host_label(),
                existing: holder(held),
            });
        }
        log::warn!(
            "host port {} taken over from {}",
            mapping.host_label(),
            holder(held)
        );
        desired.remove(at);
    }
    for (i, mapping) in wanted.iter().enumerate() {
        if let Some(earlier) = wanted[..i].iter().find(|m| m.overlaps_as_sockets(mapping)) {
            return Err(Error::Overlap {
                host: mapping.host_label(),
                holder: earlier.host_label(),
                existing: format!("{} by the same runtimeConfig.portMappings", holder(earlier)),
            });
        }
    }
    // Docker's overlap rule: a wildcard and a specific host address on one port conflict
    // as two sockets would, whoever holds them (the CNI configuration has no way to force
    // them); a container of this network whose namespace is gone gives way, as above.
    for mapping in wanted {
        while let Some(at) = desired.iter().position(|m| m.overlaps_as_sockets(mapping)) {
            let held = &desired[at];
            if held.container.is_none() || !attachment.same_network(held) || !gone(held) {
                return Err(Error::Overlap {
                    host: mapping.host_label(),
                    holder: held.host_label(),
                    existing: holder(held),
                });
            }
            log::warn!(
                "host port {} taken over from {} ({})",
                mapping.host_label(),
                holder(held),
                held.host_label()
            );
            desired.remove(at);
        }
    }
    desired.extend(wanted.iter().cloned());
    Ok(desired)
}

/// DEL: the table without the attachment's mappings.
pub(super) fn del(current: &[Mapping], attachment: &Attachment) -> Vec<Mapping> {
    current
        .iter()
        .filter(|m| !attachment.owns(m))
        .cloned()
        .collect()
}

/// GC: the table without the mappings of `network` whose attachment is not in `valid`.
/// Mappings of other networks, of the CLI, and those made before networks were recorded
/// stay.
pub(super) fn gc(current: &[Mapping], network: &str, valid: &[(String, String)]) -> Vec<Mapping> {
    current
        .iter()
        .filter(|m| {
            let (Some(id), Some(recorded)) = (&m.container, &m.network) else {
                return true;
            };
            !same_name(recorded, network)
                || valid.iter().any(|(vid, vif)| {
                    same_name(id, vid)
                        && m.container_ifname
                            .as_deref()
                            .is_none_or(|ifname| same_name(ifname, vif))
                })
        })
        .cloned()
        .collect()
}

/// What CHECK reads from the kernel besides the mappings.
#[derive(Debug, Default)]
pub(super) struct Observed {
    pub mappings: Vec<Mapping>,
    /// The elements of the helper sets (`reach4/6`, `hairpin4/6`, `targets4/6`).
    pub helpers: Vec<Element>,
    /// Whether the guard chain of the table exists.
    pub guard: bool,
    /// route_localnet of each interface asked about (`None` when it cannot be read).
    pub route_localnet: HashMap<String, Option<String>>,
}

/// CHECK: each wanted mapping is in the table for this attachment, and so is every path
/// it needs: its target behind its interface in `reach`, its hairpin pair, its target when
/// direct access is denied, the guard chain, and route_localnet on its interface when it
/// serves 127.0.0.1.
pub(super) fn check(
    observed: &Observed,
    attachment: &Attachment,
    wanted: &[Mapping],
) -> Result<(), CniError> {
    let missing = |mapping: &Mapping, what: String| {
        fail(
            code::MAPPING_MISSING,
            format!(
                "port mapping {} to {}: {what}",
                mapping.host_label(),
                with_port(mapping.to_addr, mapping.to_port)
            ),
            "run ADD again",
        )
    };
    let has = |element: &Element| {
        observed
            .helpers
            .iter()
            .any(|e| e.set == element.set && e.key == element.key)
    };
    for mapping in wanted {
        let present = observed
            .mappings
            .iter()
            .find(|m| attachment.owns(m) && m.set() == mapping.set() && m.key() == mapping.key());
        match present {
            None => return Err(missing(mapping, "the map element is missing".into())),
            Some(m) if m.data() != mapping.data() => {
                return Err(missing(
                    mapping,
                    format!(
                        "the map element leads to {}",
                        with_port(m.to_addr, m.to_port)
                    ),
                ));
            }
            Some(m) if m.allow_direct != mapping.allow_direct => {
                return Err(missing(
                    mapping,
                    "it was made with another directAccess setting".into(),
                ));
            }
            Some(m) if m.allow_from != mapping.allow_from => {
                let list = |m: &Mapping| match m.allow_from.is_empty() {
                    true => "every source".to_string(),
                    false => crate::model::list_label(&m.allow_from),
                };
                return Err(missing(
                    mapping,
                    format!(
                        "its host port allows {}, not {} as the conditions ask",
                        list(m),
                        list(mapping)
                    ),
                ));
            }
            Some(_) => {}
        }
        // The helper elements the engine writes for this mapping (`reach`, `hairpin`,
        // and `targets` when direct access is denied), whatever the layout.
        for (element, _) in helpers_for([mapping]) {
            if !has(&element) {
                let nft = element.nft_add();
                let key = nft
                    .split_once(" { ")
                    .map_or("", |(_, key)| key.trim_end_matches(" }"));
                return Err(missing(
                    mapping,
                    format!("element {{ {key} }} is missing from set {}", element.set),
                ));
            }
        }
        if !observed.guard {
            return Err(missing(
                mapping,
                "chain guard of table inet nsport is missing, so route_localnet is unguarded"
                    .into(),
            ));
        }
        if mapping.serves_loopback() {
            let value = observed.route_localnet.get(&mapping.via).cloned().flatten();
            if value.as_deref() != Some("1") {
                return Err(missing(
                    mapping,
                    format!(
                        "net.ipv4.conf.{}.route_localnet is {}, not 1, so 127.0.0.1 does not reach it",
                        mapping.via,
                        value.as_deref().unwrap_or("unreadable")
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment<'a>(id: &'a str, ifname: &'a str, network: &'a str) -> Attachment<'a> {
        Attachment {
            id,
            ifname,
            network: Some(network),
        }
    }

    fn mapping(port: u16, to: &str, att: Option<Attachment>) -> Mapping {
        Mapping {
            host_port: port,
            to_addr: to.parse().unwrap(),
            to_port: 80,
            via: "cni0".into(),
            allow_direct: true,
            container: att.map(|a| a.id.to_string()),
            container_ifname: att.map(|a| a.ifname.to_string()),
            network: att.and_then(|a| a.network.map(String::from)),
            ..Mapping::example()
        }
    }

    #[test]
    fn add_takes_over_within_its_network_only() {
        let old = attachment("old", "eth0", "a");
        let new = attachment("new", "eth0", "a");
        let other = attachment("x", "eth0", "b");
        let current = vec![
            mapping(8080, "10.22.0.2", Some(old)),
            mapping(8081, "10.22.0.2", Some(old)),
            mapping(3000, "172.18.0.2", None),
            mapping(9090, "10.23.0.2", Some(other)),
        ];
        let wanted = [mapping(8080, "10.22.0.3", Some(new))];
        // The old sandbox still lives: its port stays its own.
        let error = add(&current, &new, &wanted, |_| false).unwrap_err();
        assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
        let desired = add(&current, &new, &wanted, |_| true).unwrap();
        assert_eq!(desired.len(), 4);
        assert!(desired.contains(&mapping(8080, "10.22.0.3", Some(new))));
        assert!(desired.contains(&mapping(8081, "10.22.0.2", Some(old))));
        for port in [3000, 9090] {
            let error = add(
                &current,
                &new,
                &[mapping(port, "10.22.0.3", Some(new))],
                |_| true,
            )
            .unwrap_err();
            assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
        }
        // The old sandbox's late DEL leaves the taken-over port alone.
        let after = del(&desired, &old);
        assert!(after.contains(&mapping(8080, "10.22.0.3", Some(new))));
        assert!(!after.iter().any(|m| m.host_port == 8081));
    }

    #[test]
    fn a_range_holder_is_named_with_its_ports() {
        let range = Mapping {
            host_port_end: Some(8009),
            to_port: 8000,
            netns: Some("ns2".into()),
            ..mapping(8000, "172.18.0.3", None)
        };
        assert_eq!(
            holder(&range),
            "172.18.0.3:8000-8009 (nsport add, netns ns2)"
        );
        let single = mapping(8080, "172.18.0.3", None);
        assert!(
            holder(&single).starts_with("172.18.0.3:80 "),
            "{}",
            holder(&single)
        );
    }

    #[test]
    fn gc_keeps_other_networks_and_the_cli() {
        let a1 = attachment("c1", "eth0", "a");
        let b1 = attachment("c1", "net1", "b");
        let b2 = attachment("c2", "eth0", "b");
        let current = vec![
            mapping(1, "10.22.0.2", Some(a1)),
            mapping(2, "10.23.0.2", Some(b1)),
            mapping(3, "10.23.0.3", Some(b2)),
            mapping(4, "172.18.0.2", None),
        ];
        let kept = gc(&current, "a", &[]);
        assert_eq!(
            kept.iter().map(|m| m.host_port).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        let kept = gc(&current, "b", &[("c2".into(), "eth0".into())]);
        assert_eq!(
            kept.iter().map(|m| m.host_port).collect::<Vec<_>>(),
            [1, 3, 4]
        );
    }

    #[test]
    fn check_names_the_missing_path() {
        let att = attachment("c", "eth0", "a");
        let wanted = vec![mapping(8080, "10.22.0.2", Some(att))];
        let to: IpAddr = "10.22.0.2".parse().unwrap();
        let mut observed = Observed {
            mappings: wanted.clone(),
            helpers: helpers_for(&wanted).into_iter().map(|(e, _)| e).collect(),
            guard: true,
            route_localnet: HashMap::from([("cni0".to_string(), Some("1".to_string()))]),
        };
        assert!(check(&observed, &att, &wanted).is_ok());
        observed
            .route_localnet
            .insert("cni0".into(), Some("0".into()));
        assert!(
            check(&observed, &att, &wanted)
                .unwrap_err()
                .msg
                .contains("route_localnet is 0")
        );
        observed
            .route_localnet
            .insert("cni0".into(), Some("1".into()));
        let hairpin = Element::hairpin(to);
        observed.helpers.retain(|e| e.key != hairpin.key);
        assert!(
            check(&observed, &att, &wanted)
                .unwrap_err()
                .msg
                .contains("hairpin4")
        );
        let other_network = attachment("c", "eth0", "b");
        assert!(
            check(&observed, &other_network, &wanted)
                .unwrap_err()
                .msg
                .contains("map element is missing")
        );
    }
}
