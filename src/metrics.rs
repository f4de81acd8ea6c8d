//! Per-mapping counters in the Prometheus text exposition format (version 0.0.4), for
//! node_exporter's textfile collector: `nsport metrics > DIR/nsport.prom.tmp && mv …`.
//!
//! A pure formatter over what [`crate::list_status`] returns; it reads nothing itself.
//!
//! ```text
//! # HELP nsport_mapping_packets_total Packets through a published port, both directions, since it was published.
//! # TYPE nsport_mapping_packets_total counter
//! nsport_mapping_packets_total{proto="tcp",host_addr="0.0.0.0",host_port="8080",target="10.22.0.2:80",via="cni-podman1",netns="",container="c1",on=""} 12
//! ```
//!
//! Labels, the same on every series of a mapping, and together unique per mapping:
//! `proto`; `host_addr`, the host address or `0.0.0.0` / `::` for every address of the
//! family; `host_port`; `target`, the target address and port as `ADDR:PORT` or
//! `[ADDR]:PORT`; `via`, the host-side interface; `netns`, the namespace name or path given
//! to `add --netns` (empty otherwise); `container`, the CNI container ID (empty for the
//! CLI's mappings); `on`, the interface of `add --on` (empty for every interface). Label values are escaped as the format says (`\\`, `\"`, `\n`), so any
//! name a namespace or container may have is safe.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Listing, with_port};

/// A metric family: name, type, help, and its value for one mapping.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Listing) -> u64,
);

/// The whole exposition: HELP and TYPE lines, then one sample per mapping for each metric.
pub fn prometheus(listings: &[Listing]) -> String {
    let mut out = String::new();
    let labels: Vec<String> = listings.iter().map(labels).collect();
    let metrics: [Metric; 3] = [
        (
            "nsport_mapping_packets_total",
            "counter",
            "Packets through a published port, both directions, since it was published.",
            |l| l.packets,
        ),
        (
            "nsport_mapping_bytes_total",
            "counter",
            "Bytes through a published port, both directions, since it was published.",
            |l| l.bytes,
        ),
        (
            "nsport_mapping_stale",
            "gauge",
            "1 when the namespace the mapping was made for no longer exists (nsport prune removes it).",
            |l| u64::from(l.stale),
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (listing, labels) in listings.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(listing));
        }
    }
    let _ = writeln!(
        out,
        "# HELP nsport_mappings Mappings in table inet nsport.\n# TYPE nsport_mappings gauge\nnsport_mappings {}",
        listings.len()
    );
    out
}

fn labels(listing: &Listing) -> String {
    let m = &listing.mapping;
    let host_addr = m.host_addr.unwrap_or(if m.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let pairs = [
        ("proto", m.proto.to_string()),
        ("host_addr", host_addr.to_string()),
        // A range counts as one element: its ports are `FIRST-LAST`.
        ("host_port", m.host_ports_text()),
        ("target", with_port(m.to_addr, m.to_ports_text())),
        ("via", m.via.clone()),
        ("netns", m.netns.clone().unwrap_or_default()),
        ("container", m.container.clone().unwrap_or_default()),
        ("on", m.on.clone().unwrap_or_default()),
    ];
    pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and line feed escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mapping, Proto};

    fn listing(host_addr: Option<IpAddr>, to_addr: IpAddr, netns: Option<&str>) -> Listing {
        Listing {
            mapping: Mapping {
                proto: Proto::Tcp,
                host_addr,
                on: None,
                host_port: 8080,
                host_port_end: None,
                to_addr,
                to_port: 80,
                via: "br0".into(),
                netns: netns.map(String::from),
                netns_inode: None,
                allow_direct: false,
                container: None,
                container_ifname: None,
                network: None,
                allow_from: Vec::new(),
            },
            to_port_end: None,
            stale: false,
            shadows: None,
            shadows_mappings: Vec::new(),
            shadowed_by: Vec::new(),
            loopback: true,
            packets: 7,
            bytes: 420,
        }
    }

    #[test]
    fn hostile_names_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let text = prometheus(&[listing(
            None,
            "172.18.0.2".parse().unwrap(),
            Some("we\"ird\\ns\nx"),
        )]);
        assert!(text.contains(r#"netns="we\"ird\\ns\nx""#), "{text}");
        // Every sample is one line.
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 4);
    }

    #[test]
    fn families_of_a_wildcard_publish_get_distinct_labels() {
        let text = prometheus(&[
            listing(None, "172.18.0.2".parse().unwrap(), None),
            listing(None, "2001:db8:1::2".parse().unwrap(), None),
        ]);
        assert!(text.contains(r#"host_addr="0.0.0.0",host_port="8080",target="172.18.0.2:80""#));
        assert!(text.contains(r#"host_addr="::",host_port="8080",target="[2001:db8:1::2]:80""#));
        assert!(text.contains("nsport_mapping_bytes_total{proto=\"tcp\""));
        assert!(text.ends_with("nsport_mappings 2\n"));
    }

    #[test]
    fn nothing_published_is_still_a_valid_exposition() {
        let text = prometheus(&[]);
        assert!(text.contains("# TYPE nsport_mapping_packets_total counter"));
        assert!(text.ends_with("nsport_mappings 0\n"));
    }
}
