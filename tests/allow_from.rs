//! Source allow-lists (`add --allow-from`) with real traffic: a source on a port's list
//! reaches the target, any other source meets the host as if the port were not published
//! (a reset, not a timeout), the host's own non-loopback addresses and hairpin go by the
//! same list, 127.0.0.1 always passes; re-adding switches the list, rm removes it, and
//! export/apply keeps it.

mod lab;

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use lab::*;

/// What a TCP client meets: the answer of the server (the source it saw), a reset, or
/// nothing at all (dropped).
#[derive(Debug, PartialEq, Eq)]
enum Met {
    Answer(String),
    Refused,
    Nothing,
}

/// Connects from `role` to `addr:port`.
fn connect(lab: &Lab, role: &str, addr: impl Into<IpAddr>, port: u16) -> Met {
    let target = SocketAddr::from((addr.into(), port));
    lab.run_in(role, || {
        match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut answer = String::new();
                match stream.read_to_string(&mut answer) {
                    Ok(_) => Met::Answer(answer),
                    Err(error) if error.kind() == ErrorKind::ConnectionReset => Met::Refused,
                    Err(_) => Met::Nothing,
                }
            }
            Err(error) if error.kind() == ErrorKind::ConnectionRefused => Met::Refused,
            Err(_) => Met::Nothing,
        }
    })
}

/// Makes `out` send from another of its addresses (its on-link route's source).
fn out_sends_from(lab: &Lab, source: &str) {
    lab.ip(
        "out",
        &format!("route replace 192.0.2.0/24 dev eth0 src {source}"),
    );
}

fn answer(addr: impl Into<IpAddr>) -> Met {
    Met::Answer(addr.into().to_string())
}

/// The elements of one set of the table, as nft lists them.
fn elements(lab: &Lab, set: &str) -> String {
    let listing = lab.nft("host", &format!("list set inet nsport {set}"));
    listing
        .split_once("elements = {")
        .map(|(_, rest)| rest.split('}').next().unwrap_or_default().to_string())
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn listing(lab: &Lab) -> Vec<serde_json::Value> {
    serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap()
}

#[test]
fn only_listed_sources_reach_the_port_and_others_get_a_reset() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    // A second outside source on the same namespace as the first.
    lab.ip("out", "addr add 192.0.2.3/24 dev eth0");
    let other_out: IpAddr = Ipv4Addr::new(192, 0, 2, 3).into();
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "8080:80",
        "--allow-from",
        "192.0.2.2",
    ]);

    // Outside: the listed source is served, keeping its address; another one, from the
    // same namespace or from another network, is reset as by an unpublished port.
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    out_sends_from(&lab, "192.0.2.3");
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), Met::Refused);
    out_sends_from(&lab, "192.0.2.2");
    assert_eq!(connect(&lab, "ns3", HOST_V3, 8080), Met::Refused);
    // The host from one of its own addresses is a source like any other …
    assert_eq!(connect(&lab, "host", HOST_OUT, 8080), Met::Refused);
    // … but through 127.0.0.1 it always passes.
    assert!(matches!(
        connect(&lab, "host", LOCALHOST, 8080),
        Met::Answer(_)
    ));
    // Hairpin and the neighbour go by the list too.
    assert_eq!(connect(&lab, "ns1", HOST_OUT, 8080), Met::Refused);
    assert_eq!(connect(&lab, "ns2", HOST_BR, 8080), Met::Refused);

    // Listed and shown.
    let rows = listing(&lab);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["allow_from"], serde_json::json!(["192.0.2.2"]));
    let table = lab.nsport_ok(&["ls"]);
    assert!(
        table.contains("FROM") && table.contains("192.0.2.2"),
        "{table}"
    );

    // Re-adding with another list switches it: the old source is out, the new ones in,
    // the host's own address and the namespace itself among them.
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "8080:80",
        "--allow-from",
        "10.77.0.2",
        "--allow-from",
        "172.18.0.0/24",
        "--allow-from",
        "192.0.2.1",
    ]);
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), Met::Refused);
    assert!(matches!(
        connect(&lab, "ns3", HOST_V3, 8080),
        Met::Answer(_)
    ));
    assert!(matches!(
        connect(&lab, "host", HOST_OUT, 8080),
        Met::Answer(_)
    ));
    assert!(matches!(
        connect(&lab, "ns1", HOST_OUT, 8080),
        Met::Answer(_)
    ));
    assert!(matches!(
        connect(&lab, "ns2", HOST_BR, 8080),
        Met::Answer(_)
    ));
    assert_eq!(
        elements(&lab, "allow4"),
        "tcp . 8080 . 10.77.0.2, tcp . 8080 . 172.18.0.0/24, tcp . 8080 . 192.0.2.1"
            .split(", ")
            .collect::<Vec<_>>()
            .join(", ")
    );

    // rm takes the list with the last mapping of the port; published again without a
    // list, the port is open to every source.
    lab.nsport_ok(&["rm", "8080"]);
    for set in ["limited", "allow4", "allow6"] {
        assert_eq!(elements(&lab, set), "", "{set}");
    }
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80"]);
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(OUT));
    out_sends_from(&lab, "192.0.2.3");
    assert_eq!(connect(&lab, "out", HOST_OUT, 8080), answer(other_out));
}
