//! Property tests (fuzzing with proptest) of the PUBLISH and host-side parsers: no input
//! makes them panic, everything they accept is a valid mapping, and what they print they
//! read back the same.

use std::net::{IpAddr, Ipv6Addr};

use nsport::{HostSpec, PublishSpec};
use proptest::prelude::*;

/// Strings over the characters the grammar uses, so that most inputs get deep into it.
fn spec_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[0-9:./\\-\\[\\]tcpudsa]{0,40}").unwrap()
}

/// Any IPv4 address, or any IPv6 address but loopback and link-local, which are refused.
fn host_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>()
            .prop_map(Ipv6Addr::from)
            .prop_filter("published addresses", |v6| {
                !v6.is_loopback() && !v6.is_unicast_link_local()
            })
            .prop_map(IpAddr::V6),
    ]
}

fn check_accepted(spec: &PublishSpec) {
    assert!(spec.host_ports.start >= 1 && spec.ns_ports.start >= 1);
    assert!(spec.host_ports.start <= spec.host_ports.end);
    assert!(spec.ns_ports.start <= spec.ns_ports.end);
    assert_eq!(spec.host_ports.len(), spec.ns_ports.len());
    let again: PublishSpec = spec.to_string().parse().expect("printed specs parse");
    assert_eq!(&again, spec);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn any_text_is_parsed_or_refused_without_panic(text in any::<String>()) {
        if let Ok(spec) = text.parse::<PublishSpec>() {
            check_accepted(&spec);
        }
        let _ = text.parse::<HostSpec>();
    }

    #[test]
    fn grammar_like_text_is_accepted_only_when_valid(text in spec_like()) {
        match text.parse::<PublishSpec>() {
            Ok(spec) => check_accepted(&spec),
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
        if let Ok(host) = text.parse::<HostSpec>() {
            prop_assert!(host.ports.start >= 1 && host.ports.start <= host.ports.end);
        }
    }

    #[test]
    fn well_formed_specs_parse_to_their_parts(
        addr in proptest::option::of(host_addr()),
        host in 1u16..=65535,
        ns in 1u16..=65535,
        len in 0u16..100,
        proto in proptest::sample::select(&["tcp", "udp", "sctp"][..]),
    ) {
        let len = len.min(65535 - host).min(65535 - ns);
        let prefix = match addr {
            Some(IpAddr::V6(v6)) => format!("[{v6}]:"),
            Some(v4) => format!("{v4}:"),
            None => String::new(),
        };
        let text = if len == 0 {
            format!("{prefix}{host}:{ns}/{proto}")
        } else {
            format!("{prefix}{host}-{}:{ns}-{}/{proto}", host + len, ns + len)
        };
        let spec: PublishSpec = text.parse().unwrap();
        prop_assert_eq!(spec.host_addr, addr);
        prop_assert_eq!((spec.host_ports.start, spec.host_ports.end), (host, host + len));
        prop_assert_eq!((spec.ns_ports.start, spec.ns_ports.end), (ns, ns + len));
        prop_assert_eq!(spec.proto.to_string(), proto);
        prop_assert_eq!(spec.to_string(), text.clone());
        let side: HostSpec = text.parse().unwrap();
        prop_assert_eq!(side.ports, spec.host_ports);
    }
}
