//! The mappings file: what `nsport export` writes and `nsport apply` reads.
//!
//! It records intent, not state: which namespace (by name or path) or which fixed address
//! a port leads to, the `PUBLISH` spec as a user writes it, and the options. Addresses of
//! namespaces, inodes, counters and status are not in it: `apply` reads the namespace's
//! addresses when it runs, exactly as `add` does, so a namespace that was recreated (or
//! got another address) is followed.
//!
//! ```json
//! {
//!   "version": 1,
//!   "mappings": [
//!     { "netns": "ns1", "publish": "8080:80/tcp" },
//!     { "netns": "ns1", "publish": "127.0.0.1:4000:3000/tcp" },
//!     { "to": "10.77.0.2", "publish": "5353:53/udp", "via": "v3", "allow_direct": true }
//!   ]
//! }
//! ```
//!
//! Version 0 is the array `nsport ls --json` prints (and `export` wrote before version 1):
//! it is still read, each mapping taken as the intent it records.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Mapping, SourcePrefix};
use crate::spec::{PortRange, Proto, PublishSpec, SpecError};

/// The version this nsport writes, and the only object version it reads.
pub const FILE_VERSION: u32 = 1;

/// A mappings file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingsFile {
    /// Always `FILE_VERSION`; a file of another version is refused.
    pub version: u32,
    #[serde(default)]
    pub mappings: Vec<MappingEntry>,
}

/// One entry: like one `nsport add` with one `PUBLISH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingEntry {
    /// The namespace: a name under /run/netns or a path (like `add --netns`) …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// … or a fixed target address (like `add --to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<IpAddr>,
    /// `[HOST_ADDR:]HOST_PORT[-END]:NS_PORT[-END][/PROTO]`, as on the command line.
    pub publish: String,
    /// The host-side interface toward the target (default: the routing table's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Like `add --allow-direct`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_direct: bool,
    /// Like `add --force`: publish even when a host socket holds the port, or when
    /// another mapping (of the table or of the file) overlaps it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub force: bool,
    /// Like `add --on`: only for traffic arriving on this interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// Like `add --allow-from`: the only sources that may use the host port (prefixes or
    /// addresses); absent or empty for every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Where an entry's ports lead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryTarget {
    Netns(String),
    Addr(IpAddr),
}

impl MappingEntry {
    /// The target, when exactly one of `netns` and `to` is given.
    pub fn target(&self) -> Result<EntryTarget, String> {
        match (&self.netns, self.to) {
            (Some(netns), None) => Ok(EntryTarget::Netns(netns.clone())),
            (None, Some(to)) => Ok(EntryTarget::Addr(to)),
            (Some(_), Some(_)) => Err(format!(
                "{:?} gives both \"netns\" and \"to\": give one",
                self.publish
            )),
            (None, None) => Err(format!(
                "{:?} gives neither \"netns\" nor \"to\"",
                self.publish
            )),
        }
    }

    pub fn spec(&self) -> Result<PublishSpec, SpecError> {
        self.publish.parse()
    }
}

impl MappingEntry {
    /// One mapping of the old format taken as intent (see `MappingsFile::from_legacy`);
    /// `None` for a CNI mapping.
    fn of_legacy(m: &Mapping) -> Option<MappingEntry> {
        if m.container.is_some() {
            return None;
        }
        let spec = PublishSpec {
            // A wildcard of one family stays in that family.
            host_addr: Some(m.host_addr.unwrap_or(if m.is_ipv6() {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            })),
            host_ports: PortRange {
                start: m.host_port,
                end: *m.host_ports().end(),
            },
            ns_ports: PortRange {
                start: m.to_port,
                end: m.to_port_end().unwrap_or(m.to_port),
            },
            proto: m.proto,
        };
        let netns = m.netns.clone().filter(|name| !name.starts_with('#'));
        Some(MappingEntry {
            to: netns.is_none().then_some(m.to_addr),
            via: Some(m.via.clone()),
            netns,
            publish: spec.to_string(),
            allow_direct: m.allow_direct,
            force: false,
            on: m.on.clone(),
            allow_from: m.allow_from.iter().map(ToString::to_string).collect(),
        })
    }
}

/// The old format's array, read one mapping at a time into its entry: a listing of
/// 50,000 mappings is never held whole beside the entries made of it.
struct Legacy(Vec<MappingEntry>);

impl<'de> Deserialize<'de> for Legacy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = Legacy;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a sequence")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Legacy, A::Error> {
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(mapping) = seq.next_element::<Mapping>()? {
                    entries.extend(MappingEntry::of_legacy(&mapping));
                }
                Ok(Legacy(entries))
            }
        }
        deserializer.deserialize_seq(Entries)
    }
}

impl MappingsFile {
    /// Reads a file of either version; the message names what is wrong.
    pub fn parse(text: &str) -> Result<MappingsFile, String> {
        if text.trim_start().starts_with('[') {
            let listing: Legacy = serde_json::from_str(text).map_err(|error| error.to_string())?;
            return Ok(MappingsFile {
                version: FILE_VERSION,
                mappings: listing.0,
            });
        }
        // The version first, so that a newer file is refused for what it is rather than
        // for a field this nsport does not know.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| error.to_string())?;
        match value.get("version").map(|v| v.as_u64()) {
            Some(Some(version)) if version == u64::from(FILE_VERSION) => {}
            Some(Some(version)) => {
                return Err(format!(
                    "version {version} is not supported: this nsport reads version {FILE_VERSION}"
                ));
            }
            Some(None) => return Err("\"version\" must be a number".into()),
            None => {
                return Err(format!(
                    "no \"version\": expected {{\"version\": {FILE_VERSION}, \"mappings\": [...]}}"
                ));
            }
        }
        serde_json::from_value(value).map_err(|error| error.to_string())
    }

    /// The file as `export` writes it: pretty JSON, one entry per line.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\n  \"version\": {},\n  \"mappings\": [", self.version);
        for (i, entry) in self.mappings.iter().enumerate() {
            out.push_str(if i == 0 { "\n    " } else { ",\n    " });
            out.push_str(&serde_json::to_string(entry).expect("plain data serializes"));
        }
        if !self.mappings.is_empty() {
            out.push_str("\n  ");
        }
        out.push_str("]\n}\n");
        out
    }

    /// The listing of the old format, taken as intent: each mapping publishes its own
    /// ports to its namespace (by the name it recorded) or, without one, to its address.
    /// CNI mappings are left out: the plugin owns them.
    pub fn from_legacy(listing: &[Mapping]) -> MappingsFile {
        MappingsFile {
            version: FILE_VERSION,
            mappings: listing.iter().filter_map(MappingEntry::of_legacy).collect(),
        }
    }

    /// The intent behind `mappings` (what is in the table): one entry per target, options
    /// and run of consecutive ports. `default_via` tells which interface the routing
    /// table picks for an address now; `via` is written only where it differs. A wildcard
    /// is written without an address, so that a namespace's mapping follows every family
    /// it has. A namespace recorded only by digest (its name was too long) is written by
    /// its address. CNI mappings are left out: the plugin owns them. A mapping that wins
    /// over another it overlaps (published with `--force`) is written with `force`, so
    /// that `apply` takes the file back as it was.
    pub fn from_mappings(
        mappings: &[Mapping],
        default_via: impl Fn(IpAddr) -> Option<String>,
    ) -> MappingsFile {
        #[derive(PartialEq, Eq, PartialOrd, Ord, Clone)]
        struct Key {
            target: EntryTarget,
            via: Option<String>,
            allow_direct: bool,
            on: Option<String>,
            force: bool,
            proto: Proto,
            host_addr: Option<IpAddr>,
            allow_from: Vec<SourcePrefix>,
        }
        // Overlaps are only between mappings of one protocol and family with a port in
        // common: single ports are found by port, ranges (few) by a search.
        let mut by_port: std::collections::HashMap<_, Vec<&Mapping>> =
            std::collections::HashMap::new();
        let ranges: Vec<&Mapping> = mappings.iter().filter(|m| m.is_range()).collect();
        for m in mappings.iter().filter(|m| !m.is_range()) {
            by_port
                .entry((m.is_ipv6(), m.proto, m.host_port))
                .or_default()
                .push(m);
        }
        let wins = |m: &Mapping| {
            let beats = |other: &&Mapping| m.overlaps_as_sockets(other) && m.rank() > other.rank();
            m.rank() > 0
                && (ranges.iter().any(beats)
                    || m.host_ports().any(|port| {
                        by_port
                            .get(&(m.is_ipv6(), m.proto, port))
                            .is_some_and(|found| found.iter().any(beats))
                    }))
        };
        // Host ports (first, last), first target port, and whether it is one range.
        let mut rows: Vec<(Key, u16, u16, u16, bool)> = Vec::new();
        for m in mappings.iter().filter(|m| m.container.is_none()) {
            let wins = wins(m);
            let netns = m.netns.clone().filter(|name| !name.starts_with('#'));
            let via =
                (default_via(m.to_addr).as_deref() != Some(m.via.as_str())).then(|| m.via.clone());
            // A namespace's wildcard whose port the other family gives to another target
            // (`add --to` over one family of a dual-stack namespace's mapping) stays in
            // its family: written without an address, `apply` would publish it in both
            // and refuse the file as asking for the port twice.
            let other_family_elsewhere = m.host_addr.is_none()
                && netns.is_some()
                && m.host_ports().any(|port| {
                    by_port
                        .get(&(!m.is_ipv6(), m.proto, port))
                        .into_iter()
                        .flatten()
                        .chain(ranges.iter().filter(|r| r.has_host_port(port)))
                        .any(|other| {
                            other.is_ipv6() != m.is_ipv6()
                                && other.proto == m.proto
                                && other.host_addr.is_none()
                                && other.on == m.on
                                && other.netns != m.netns
                        })
                });
            let host_addr = match (m.host_addr, &netns) {
                // A namespace's wildcard through a given interface stays in its family too:
                // the interface is that family's.
                (None, Some(_)) if via.is_some() || other_family_elsewhere => {
                    Some(if m.is_ipv6() {
                        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                    })
                }
                (addr, _) => addr,
            };
            let key = Key {
                target: match netns.clone() {
                    Some(name) => EntryTarget::Netns(name),
                    None => EntryTarget::Addr(m.to_addr),
                },
                via,
                // A fixed address allows direct access whatever is asked (`add --to` does
                // not protect a host that may sit on a network that is not nsport's): the
                // file says so only for a namespace.
                allow_direct: m.allow_direct && netns.is_some(),
                on: m.on.clone(),
                force: wins,
                proto: m.proto,
                host_addr,
                allow_from: m.allow_from.clone(),
            };
            let last = *m.host_ports().end();
            rows.push((key, m.host_port, last, m.to_port, m.is_range()));
        }
        rows.sort();
        rows.dedup();
        let mut entries: Vec<MappingEntry> = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let (key, host, _, to, _) = &rows[i];
            // Runs of consecutive single ports are one entry; a range published as one
            // stays an entry of its own, so that applying the file leaves it as it is.
            let mut end = i;
            while end + 1 < rows.len()
                && !rows[end].4
                && !rows[end + 1].4
                && rows[end + 1].0 == *key
                && u32::from(rows[end + 1].1) == u32::from(rows[end].1) + 1
                && u32::from(rows[end + 1].3) == u32::from(rows[end].3) + 1
            {
                end += 1;
            }
            let (_, last_start, last_host, last_to_start, _) = rows[end];
            let last_to = last_to_start + (last_host - last_start);
            let spec = PublishSpec {
                host_addr: key.host_addr,
                host_ports: PortRange {
                    start: *host,
                    end: last_host,
                },
                ns_ports: PortRange {
                    start: *to,
                    end: last_to,
                },
                proto: key.proto,
            };
            let (netns, to) = match &key.target {
                EntryTarget::Netns(name) => (Some(name.clone()), None),
                EntryTarget::Addr(addr) => (None, Some(*addr)),
            };
            entries.push(MappingEntry {
                netns,
                to,
                publish: spec.to_string(),
                via: key.via.clone(),
                allow_direct: key.allow_direct,
                force: key.force,
                on: key.on.clone(),
                allow_from: key.allow_from.iter().map(ToString::to_string).collect(),
            });
            i = end + 1;
        }
        MappingsFile {
            version: FILE_VERSION,
            mappings: entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(host_addr: Option<&str>, host_port: u16, to: &str, to_port: u16) -> Mapping {
        Mapping {
            host_addr: host_addr.map(|a| a.parse().unwrap()),
            host_port,
            to_addr: to.parse().unwrap(),
            to_port,
            netns: Some("ns1".into()),
            netns_inode: Some(4026532312),
            ..Mapping::example()
        }
    }

    fn br0(_: IpAddr) -> Option<String> {
        Some("br0".into())
    }

    #[test]
    fn export_records_intent_not_state() {
        let mut ranged: Vec<Mapping> = (0..3)
            .map(|i| mapping(None, 20000 + i, "172.18.0.2", 30000 + i))
            .collect();
        ranged.push(mapping(None, 8080, "2001:db8:1::2", 80));
        ranged.push(mapping(None, 8080, "172.18.0.2", 80));
        ranged.push(mapping(Some("127.0.0.1"), 4000, "172.18.0.2", 3000));
        let mut fixed = mapping(None, 5353, "10.77.0.2", 53);
        fixed.proto = Proto::Udp;
        fixed.netns = None;
        fixed.netns_inode = None;
        fixed.via = "v3".into();
        fixed.allow_direct = true;
        ranged.push(fixed);
        let mut cni = mapping(None, 9000, "10.22.0.2", 9000);
        cni.container = Some("abc".into());
        ranged.push(cni);
        let file = MappingsFile::from_mappings(&ranged, |addr| {
            Some(if addr.to_string().starts_with("10.") {
                "v3".into()
            } else {
                "br0".into()
            })
        });
        let json: serde_json::Value = serde_json::from_str(&file.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": 1, "mappings": [
                {"netns": "ns1", "publish": "8080:80/tcp"},
                {"netns": "ns1", "publish": "20000-20002:30000-30002/tcp"},
                {"netns": "ns1", "publish": "127.0.0.1:4000:3000/tcp"},
                {"to": "10.77.0.2", "publish": "5353:53/udp"},
            ]})
        );
        assert_eq!(MappingsFile::parse(&file.to_json()), Ok(file));
    }

    #[test]
    fn a_given_interface_is_written_and_keeps_the_family() {
        let mut m = mapping(None, 8080, "172.18.0.2", 80);
        m.via = "br9".into();
        let file = MappingsFile::from_mappings(&[m], br0);
        assert_eq!(file.mappings[0].via.as_deref(), Some("br9"));
        assert_eq!(file.mappings[0].publish, "0.0.0.0:8080:80/tcp");
    }

    /// `add --netns ns1 8080:80` in a dual-stack namespace, then `add --to` of its IPv4
    /// address over the IPv4 half: the namespace's entry keeps to IPv6, or `apply` of the
    /// file would publish 8080 twice in IPv4. Found by an attack on export and apply.
    #[test]
    fn a_namespace_wildcard_whose_other_family_went_elsewhere_keeps_its_family() {
        let v6 = mapping(None, 8080, "fd00::2", 80);
        let v4_by_address = Mapping {
            netns: None,
            netns_inode: None,
            ..mapping(None, 8080, "172.18.0.2", 80)
        };
        let file = MappingsFile::from_mappings(&[v6.clone(), v4_by_address.clone()], br0);
        let published: Vec<(&str, Option<&str>)> = file
            .mappings
            .iter()
            .map(|e| (e.publish.as_str(), e.netns.as_deref()))
            .collect();
        assert!(
            published.contains(&("[::]:8080:80/tcp", Some("ns1"))),
            "{published:?}"
        );
        assert!(published.contains(&("8080:80/tcp", None)), "{published:?}");
        // Both halves the namespace's: one entry without an address, as before.
        let v4 = mapping(None, 8080, "172.18.0.2", 80);
        let file = MappingsFile::from_mappings(&[v6, v4], br0);
        let published: Vec<&str> = file.mappings.iter().map(|e| e.publish.as_str()).collect();
        assert_eq!(published, ["8080:80/tcp"]);
    }

    #[test]
    fn hand_written_entries_and_refusals() {
        let file = MappingsFile::parse(
            r#"{"version": 1, "mappings": [{"netns": "ns1", "publish": "8080:80"}]}"#,
        )
        .unwrap();
        assert_eq!(
            file.mappings[0].target(),
            Ok(EntryTarget::Netns("ns1".into()))
        );
        assert_eq!(file.mappings[0].spec().unwrap().host_ports.start, 8080);
        for (text, named) in [
            (r#"{"version": 2, "mappings": []}"#, "version 2"),
            (r#"{"mappings": []}"#, "no \"version\""),
            (
                r#"{"version": 1, "mappings": [{"netns": "a", "publish": "1", "vai": "x"}]}"#,
                "vai",
            ),
            (r#"{"version": 1, "mappings": [{"netns": "a"}]}"#, "publish"),
            ("{", "EOF"),
        ] {
            let error = MappingsFile::parse(text).expect_err(text);
            assert!(error.contains(named), "{text}: {error}");
        }
        let both: MappingEntry =
            serde_json::from_str(r#"{"netns": "a", "to": "10.0.0.1", "publish": "1"}"#).unwrap();
        assert!(both.target().unwrap_err().contains("both"));
    }

    #[test]
    fn legacy_listing_read_one_at_a_time_is_the_listing_read_whole() {
        // A CNI mapping (left out), an IPv6 wildcard, a range, a list, an interface.
        let listing = r##"[
            {"proto":"tcp","host_addr":null,"host_port":3000,"to_addr":"172.18.0.2","to_port":80,
             "via":"br0","netns":"ns1","netns_inode":1,"stale":true,"packets":5},
            {"proto":"tcp","host_addr":null,"host_port":81,"to_addr":"10.88.0.2","to_port":80,
             "via":"cni0","container":"c1","container_ifname":"eth0","network":"n"},
            {"proto":"udp","host_addr":null,"host_port":53,"to_addr":"fd00::2","to_port":53,"via":"v3"},
            {"proto":"tcp","host_addr":"127.0.0.1","host_port":20000,"host_port_end":20009,
             "to_addr":"10.77.0.2","to_port":20000,"via":"v3","allow_from":["10.0.0.0/8"]},
            {"proto":"sctp","host_addr":null,"on":"eth1","host_port":9,"to_addr":"10.77.0.2",
             "to_port":9,"via":"v3","netns":"#digest"}
        ]"##;
        let whole: Vec<Mapping> = serde_json::from_str(listing).unwrap();
        let file = MappingsFile::parse(listing).unwrap();
        assert_eq!(file.mappings.len(), 4);
        assert_eq!(file, MappingsFile::from_legacy(&whole));
        // A bad listing is refused in the same words as when it was read whole.
        for bad in [
            "[1]",
            "[",
            r#"[{"proto":"tcp"}]"#,
            r#"[{"proto":"tcp","host_addr":null,"host_port":70000,"to_addr":"10.0.0.1","to_port":1,"via":"v"}]"#,
            r#"[{"proto":"xdp","host_addr":null,"host_port":1,"to_addr":"10.0.0.1","to_port":1,"via":"v"}]"#,
            "[{}, ]",
            "[] x",
        ] {
            let expected = serde_json::from_str::<Vec<Mapping>>(bad).unwrap_err();
            assert_eq!(
                MappingsFile::parse(bad).unwrap_err(),
                expected.to_string(),
                "{bad}"
            );
        }
    }

    #[test]
    fn legacy_listing_is_read_as_intent() {
        let listing = r#"[{"proto":"tcp","host_addr":null,"host_port":3000,"to_addr":"172.18.0.2",
            "to_port":3000,"via":"br0","netns":"ns1","netns_inode":1,"stale":true,"packets":5},
            {"proto":"udp","host_addr":null,"host_port":53,"to_addr":"10.77.0.2","to_port":53,"via":"v3"}]"#;
        let file = MappingsFile::parse(listing).unwrap();
        assert_eq!(file.mappings[0].netns.as_deref(), Some("ns1"));
        assert_eq!(file.mappings[0].publish, "0.0.0.0:3000:3000/tcp");
        assert_eq!(file.mappings[1].to, Some("10.77.0.2".parse().unwrap()));
        assert_eq!(file.mappings[1].via.as_deref(), Some("v3"));
    }
}
