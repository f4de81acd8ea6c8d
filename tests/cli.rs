//! The command-line contract: exit codes, one-line errors naming the bad value, empty
//! stdout on error, and no change to the kernel when a command fails.

mod lab;

use lab::*;
use std::net::Ipv4Addr;

/// Runs nsport and checks that it failed with `code`, one `nsport: ` line on stderr that
/// contains `named`, and nothing on stdout.
fn fails(lab: &Lab, args: &[&str], code: i32, named: &str) -> String {
    let output = lab.nsport(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{args:?} printed to stdout");
    assert!(
        stderr.contains(named),
        "{args:?}: {stderr:?} should name {named:?}"
    );
    stderr
}

fn one_line(stderr: &str) {
    assert!(stderr.starts_with("nsport: "), "{stderr:?}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
}

#[test]
fn version_and_help_succeed() {
    let lab = Lab::new(BrNetfilter::Off);
    let version = lab.nsport_ok(&["--version"]);
    assert_eq!(
        version.trim(),
        format!("nsport {}", env!("CARGO_PKG_VERSION"))
    );
    let help = lab.nsport_ok(&["--help"]);
    for command in ["add", "rm", "ls", "flush"] {
        assert!(help.contains(command), "{help}");
    }
    assert!(lab.nsport_ok(&["add", "--help"]).contains("--netns"));
}

#[test]
fn listing_with_no_table() {
    let lab = Lab::new(BrNetfilter::Off);
    assert_eq!(lab.nsport_ok(&["ls", "--json"]).trim(), "[]");
    assert_eq!(
        lab.nsport_ok(&["ls"]).trim(),
        "PROTO  HOST  TARGET  VIA  NETNS  PACKETS  BYTES  STATUS"
    );
}

#[test]
fn listing_shows_every_field() {
    let lab = Lab::new(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "8080:80", "127.0.0.1:5353:53/udp"]);
    let listing: serde_json::Value =
        serde_json::from_str(&lab.nsport_ok(&["ls", "--json"])).unwrap();
    let inode = std::fs::metadata(format!("/run/netns/{ns1}")).unwrap();
    let inode = std::os::unix::fs::MetadataExt::ino(&inode);
    let expected = serde_json::json!([
        {"proto": "tcp", "host_addr": null, "host_port": 8080, "to_addr": "172.18.0.2",
         "to_port": 80, "via": "br0", "netns": ns1, "netns_inode": inode, "allow_direct": false,
         "stale": false, "shadows": null, "loopback": true, "packets": 0, "bytes": 0,
         "container": null, "container_ifname": null, "network": null, "family": "ipv4",
         "on": null, "shadows_mappings": [], "shadowed_by": [], "problem": null},
        {"proto": "udp", "host_addr": "127.0.0.1", "host_port": 5353, "to_addr": "172.18.0.2",
         "to_port": 53, "via": "br0", "netns": ns1, "netns_inode": inode, "allow_direct": false,
         "stale": false, "shadows": null, "loopback": true, "packets": 0, "bytes": 0,
         "container": null, "container_ifname": null, "network": null, "family": "ipv4",
         "on": null, "shadows_mappings": [], "shadowed_by": [], "problem": null},
    ]);
    assert_eq!(listing, expected);
    let human = lab.nsport_ok(&["ls"]);
    let rows: Vec<Vec<String>> = human
        .lines()
        .map(|line| {
            lab.normalize(line)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        [
            [
                "PROTO", "HOST", "TARGET", "VIA", "NETNS", "PACKETS", "BYTES", "STATUS"
            ],
            [
                "tcp",
                "*:8080",
                "172.18.0.2:80",
                "br0",
                "ns1",
                "0",
                "0",
                "ok"
            ],
            [
                "udp",
                "127.0.0.1:5353",
                "172.18.0.2:53",
                "br0",
                "ns1",
                "0",
                "0",
                "ok"
            ],
        ]
    );
    // The columns are aligned: every row's last column starts where the header's does.
    let status_at: Vec<usize> = human.lines().map(|line| line.rfind(' ').unwrap()).collect();
    assert!(status_at.iter().all(|at| *at == status_at[0]), "{human}");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let lab = Lab::new(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    // A table with one mapping, so that "unchanged" has something to compare.
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    let before = lab.ruleset();
    let forward = lab.read_sysctl("host", "net/ipv4/ip_forward");
    let localnet = lab.read_sysctl("host", "net/ipv4/conf/v3/route_localnet");
    let empty = lab.ns("empty");
    let missing = lab.ns("missing");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["add", "--netns", &ns1, "0"], "\"0\""),
        (vec!["add", "--netns", &ns1, "65536:80"], "\"65536\""),
        (
            vec!["add", "--netns", &ns1, "3002-3000:80"],
            "\"3002-3000\"",
        ),
        (
            vec!["add", "--netns", &ns1, "3000-3002:80-81"],
            "\"3000-3002\"",
        ),
        (vec!["add", "--netns", &ns1, "53/dccp"], "\"dccp\""),
        (
            vec!["add", "--netns", &ns1, "300.1.2.3:80:80"],
            "\"300.1.2.3\"",
        ),
        (
            vec!["add", "--netns", &ns1, "[2001:db8::1]:80:80"],
            "2001:db8::1",
        ),
        (
            vec!["add", "--netns", &ns1, "203.0.113.9:80:80"],
            "203.0.113.9",
        ),
        (vec!["add", "--netns", &missing, "80"], &missing),
        (vec!["add", "--netns", &empty, "80"], &empty),
        (
            vec!["add", "--to", "10.77.0.2", "--via", "nosuch0", "80"],
            "nosuch0",
        ),
        (
            vec![
                "add",
                "--to",
                "10.77.0.2",
                "--via",
                "sixteen-bytes-xx",
                "80",
            ],
            "sixteen-bytes-xx",
        ),
        (vec!["add", "--to", "192.0.2.1", "80"], "192.0.2.1"),
        (vec!["add", "--to", "10.77.0.2", "80", "80:81"], "80/tcp"),
        (vec!["add", "--to", "10.77.0.300", "80"], "10.77.0.300"),
        (vec!["rm", "3999"], "3999/tcp"),
        (vec!["rm", "3000", "3000/udp"], "3000/udp"),
        (vec!["rm", "--netns", &missing], &missing),
    ];
    // Usage errors the argument parser catches: no target, two targets, no PUBLISH,
    // an unknown command.
    let ns1_and_to = ["add", "--netns", &ns1, "--to", "10.77.0.2", "80"];
    let more: [(&[&str], &str); 4] = [
        (&["add", "80"], "--netns"),
        (&ns1_and_to, "--to"),
        (&["add", "--netns", &ns1], "PUBLISH"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, named) in cases.iter().map(|(args, named)| (args.as_slice(), *named)) {
        one_line(&fails(&lab, args, 2, named));
    }
    // A command line of the wrong shape keeps clap's usage and hint lines.
    for (args, named) in more {
        let stderr = fails(&lab, args, 2, named);
        assert!(stderr.contains("Usage: nsport"), "{args:?}: {stderr}");
    }
    assert_eq!(lab.ruleset(), before);
    assert_eq!(lab.read_sysctl("host", "net/ipv4/ip_forward"), forward);
    assert_eq!(
        lab.read_sysctl("host", "net/ipv4/conf/v3/route_localnet"),
        localnet
    );
}

#[test]
fn conflicts_fail_whole_and_name_the_existing_mapping() {
    let lab = Lab::new(BrNetfilter::Off);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 3000);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    let before = lab.ruleset();
    // The same mapping again is fine and changes nothing.
    lab.nsport_ok(&["add", "--netns", &ns1, "3000:3000/tcp"]);
    assert_eq!(lab.ruleset(), before);
    // The same host port to another target fails, and 3005 in the same command is not added.
    let stderr = fails(
        &lab,
        &["add", "--netns", &lab.ns("ns2"), "3005", "3000"],
        1,
        "3000/tcp is already published to 172.18.0.2:3000 via br0",
    );
    one_line(&stderr);
    assert_eq!(lab.ruleset(), before);
    assert_eq!(lab.tcp("out", HOST_OUT, 3000), some(OUT));
    // rm is all or nothing: 3000 stays when 3001 is not published.
    fails(
        &lab,
        &["rm", "3000", "3001"],
        2,
        "3001/tcp is not published",
    );
    assert_eq!(lab.ruleset(), before);
}

#[test]
fn unprivileged_user_is_told_what_is_needed() {
    let lab = Lab::new(BrNetfilter::Off);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&["add", "--netns", &ns1, "3000"]);
    let before = lab.ruleset();
    // nobody, with no capabilities, in the lab's host namespace.
    let binary = std::env::temp_dir().join(format!("{}-nsport", lab.ns("bin")));
    std::fs::copy(env!("CARGO_BIN_EXE_nsport"), &binary).unwrap();
    for args in [
        vec!["flush"],
        vec!["add", "--to", "10.77.0.2", "80"],
        vec!["ls"],
    ] {
        let output = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("host")])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(&binary)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("needs root or CAP_NET_ADMIN"),
            "{args:?}: {stderr}"
        );
        one_line(&stderr);
    }
    std::fs::remove_file(&binary).unwrap();
    assert_eq!(lab.ruleset(), before);
}
