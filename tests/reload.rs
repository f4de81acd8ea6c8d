//! Surviving a firewall reload: restarting or reloading nftables.service runs
//! `flush ruleset`, which deletes table inet nsport. packaging/nsport.service then runs its
//! ExecStart (`nsport apply /etc/nsport/mappings.json`, the file `nsport export` wrote).
//! Here, in a lab: publish, save with export, flush the lab host's ruleset the way
//! Debian's /etc/nftables.conf does, run the unit's own command line on the saved file,
//! and check every access path and the loopback guard.

mod lab;

use std::net::Ipv4Addr;
use std::process::Command;

use lab::*;

/// The unit's ExecStart (or ExecReload) with the binary under test and `file` in place
/// of /etc/nsport/mappings.json, run in the lab's host namespace.
fn unit_command(lab: &Lab, key: &str, file: &str) -> Command {
    let unit = include_str!("../packaging/nsport.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("nsport.service has no {key}"));
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("@BINDIR@/nsport"), "{line}");
    let args: Vec<String> = words
        .map(|w| {
            if w == "/etc/nsport/mappings.json" {
                file.to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.nsport_command(&args)
}

fn run_unit(lab: &Lab, key: &str, file: &str) {
    let output = unit_command(lab, key, file).output().unwrap();
    assert!(
        output.status.success(),
        "{key}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What Debian's /etc/nftables.conf does when nftables.service starts or reloads.
const NFTABLES_CONF: &str = "flush ruleset
table inet filter {
	chain input { type filter hook input priority filter; policy accept; }
	chain forward { type filter hook forward priority filter; policy accept; }
	chain output { type filter hook output priority filter; policy accept; }
}
";

fn everything_reachable(lab: &Lab) -> Vec<(&'static str, bool)> {
    vec![
        (
            "outside -> 3000",
            lab.tcp("out", HOST_OUT, 3000) == some(OUT),
        ),
        (
            "outside -> 5353/udp",
            lab.udp("out", HOST_OUT, 5353) == some(OUT),
        ),
        (
            "outside -> 20000-20002",
            (20000..=20002).all(|p| lab.tcp("out", HOST_OUT, p) == some(OUT)),
        ),
        (
            "host -> own address:3000",
            lab.tcp("host", HOST_OUT, 3000).is_some(),
        ),
        (
            "host -> 127.0.0.1:4000",
            lab.tcp("host", LOCALHOST, 4000).is_some(),
        ),
        ("hairpin", lab.tcp("ns1", HOST_OUT, 3000).is_some()),
        ("neighbour", lab.tcp("ns2", HOST_OUT, 3000).is_some()),
    ]
}

#[test]
fn saved_mappings_come_back_after_flush_ruleset_with_the_guard() {
    let lab = Lab::new(BrNetfilter::Off);
    let _servers = [
        lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000),
        lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 20000),
        lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 20001),
        lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 20002),
        lab.serve_udp("ns1", Ipv4Addr::UNSPECIFIED, 53),
    ];
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "3000",
        "5353:53/udp",
        "127.0.0.1:4000:3000",
    ]);
    lab.nsport_ok(&["add", "--netns", &ns1, "20000-20002"]);
    let before = everything_reachable(&lab);
    assert!(before.iter().all(|(_, ok)| *ok), "{before:?}");
    let listed = lab.nsport_ok(&["ls", "--json"]);

    // Opting in: the mappings saved with export (here in a file of the test's).
    let saved = TempFile(std::env::temp_dir().join(format!("{}-mappings.json", lab.ns("saved"))));
    let file = saved.0.to_str().unwrap();
    std::fs::write(file, lab.nsport_ok(&["export"])).unwrap();

    // nftables.service restarts: the lab host's ruleset is flushed and replaced.
    let conf = TempFile(std::env::temp_dir().join(format!("{}-nftables.conf", lab.ns("conf"))));
    std::fs::write(&conf.0, NFTABLES_CONF).unwrap();
    lab.nft("host", &format!("-f {}", conf.0.display()));
    assert!(!lab.nft("host", "list tables").contains("nsport"));
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), None);
    // The window the unit closes: route_localnet is still on, and nothing guards it.
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/br0/route_localnet"),
        "1"
    );
    assert!(lab.neighbour_reads_host_loopback());

    // The unit's ExecStart on the saved file.
    run_unit(&lab, "ExecStart", file);
    let after = everything_reachable(&lab);
    assert!(after.iter().all(|(_, ok)| *ok), "{after:?}");
    // The guard is back before anything relies on route_localnet again.
    assert!(
        lab.nft("host", "list chain inet nsport guard")
            .contains(r#"iifname != "lo" ip daddr 127.0.0.0/8 drop"#)
    );
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/br0/route_localnet"),
        "1"
    );
    assert!(!lab.neighbour_reads_host_loopback());
    assert_eq!(
        lab.tcp("out", LOCALHOST, 4000),
        None,
        "outside routing 127/8"
    );
    // The same mappings as before the flush (counters aside), and the other table kept.
    let strip = |text: &str| {
        let mut listing: serde_json::Value = serde_json::from_str(text).unwrap();
        for m in listing.as_array_mut().unwrap() {
            let m = m.as_object_mut().unwrap();
            m.remove("packets");
            m.remove("bytes");
        }
        listing
    };
    assert_eq!(strip(&lab.nsport_ok(&["ls", "--json"])), strip(&listed));
    assert!(lab.nft("host", "list tables").contains("table inet filter"));

    // ExecReload when nothing was flushed changes nothing: the connection counters of
    // the mappings go on, the ruleset is byte for byte the same.
    let ruleset = lab.ruleset();
    run_unit(&lab, "ExecReload", file);
    assert_eq!(lab.ruleset(), ruleset);
    assert!(everything_reachable(&lab).iter().all(|(_, ok)| *ok));
}
