//! Whole-table comparisons: each scenario is applied in a fresh lab and the real
//! `nft list table inet nsport` must equal the reference file in `nft/`, so any drift in
//! what nsport writes, or in how nft decodes it, is seen.
//!
//! Set elements are listed in hash order, which varies from run to run; the comparison sorts
//! them, one per line. `NSPORT_BLESS=1` rewrites the reference files from the lab.

mod lab;

use lab::*;
use std::path::PathBuf;

fn check(scenario: &str, steps: &[&[&str]]) {
    check_in(Lab::new(BrNetfilter::On), scenario, steps);
}

fn check_in(lab: Lab, scenario: &str, steps: &[&[&str]]) {
    for step in steps {
        let args: Vec<String> = step
            .iter()
            .map(|arg| {
                arg.replace("{ns1}", &lab.ns("ns1"))
                    .replace("{ns3}", &lab.ns("ns3"))
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.nsport_ok(&args);
    }
    let table = lab.nft("host", "list table inet nsport");
    assert!(
        !table.contains("unknown") && !table.contains("invalid"),
        "{table}"
    );
    let actual = sort_elements(&hide_inodes(&lab.normalize(&table)));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("nft")
        .join(format!("{scenario}.nft"));
    if std::env::var_os("NSPORT_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        actual, expected,
        "{scenario}: nsport now writes a different table"
    );
}

#[test]
fn bridge_namespace_on_every_path() {
    check(
        "bridge",
        &[&[
            "add",
            "--netns",
            "{ns1}",
            "3000:3000",
            "5353:53/udp",
            "127.0.0.1:4000:3000",
            "192.0.2.1:4100:3000",
        ]],
    );
}

#[test]
fn veth_namespace_by_address_and_by_name() {
    check(
        "veth",
        &[
            &["add", "--to", "10.77.0.2", "8080:80"],
            &[
                "add",
                "--netns",
                "{ns3}",
                "8443:443",
                "9000-9002:9000-9002/udp",
            ],
        ],
    );
}

#[test]
fn after_removing_some_mappings() {
    check(
        "after-rm",
        &[
            &[
                "add",
                "--netns",
                "{ns1}",
                "3000:3000",
                "5353:53/udp",
                "127.0.0.1:4000:3000",
            ],
            &["add", "--to", "10.77.0.2", "8080:80"],
            &["rm", "5353/udp", "127.0.0.1:4000", "8080"],
        ],
    );
}

/// An identity range is one interval element (data: the address alone); a shifted range is
/// one element per port; `rm` of a port inside a range cuts it in two.
#[test]
fn port_ranges() {
    check_in(
        Lab::dual_stack(BrNetfilter::On),
        "ranges",
        &[
            &[
                "add",
                "--netns",
                "{ns1}",
                "20000-20099:20000-20099",
                "127.0.0.1:21000-21009:21000-21009/udp",
                "[2001:db8::1]:22000-22009:22000-22009",
                "8000-8002:9000-9002",
            ],
            &["rm", "20050"],
        ],
    );
}

#[test]
fn dual_stack_namespace() {
    check_in(
        Lab::dual_stack(BrNetfilter::On),
        "dual-stack",
        &[
            &[
                "add",
                "--netns",
                "{ns1}",
                "8080:80",
                "5353:53/udp",
                "[2001:db8::1]:8443:443",
            ],
            &["add", "--to", "2001:db8:3::2", "9000:80"],
        ],
    );
}

#[test]
fn published_on_interfaces() {
    check_in(
        Lab::dual_stack(BrNetfilter::On),
        "on-interface",
        &[
            &[
                "add",
                "--netns",
                "{ns1}",
                "--on",
                "vo",
                "8080:80",
                "5353:53/udp",
            ],
            &[
                "add",
                "--netns",
                "{ns1}",
                "--on",
                "vo",
                "192.0.2.1:8443:443",
                "[2001:db8::1]:8443:443",
            ],
            // An interface that does not exist yet, and one overlap forced.
            &["add", "--to", "10.77.0.2", "--on", "wlan0", "9000:80"],
            &["add", "--netns", "{ns3}", "--force", "198.51.100.1:8080:80"],
        ],
    );
}

#[test]
fn inodes_are_hidden() {
    assert_eq!(
        hide_inodes("a ino=4026532 b ino=1\""),
        "a ino=INODE b ino=INODE\""
    );
}

#[test]
fn element_sorting_is_stable() {
    let table = "\t\telements = { b . 2,\n\t\t\t     a . 1 }\n\tchain x {\n";
    assert_eq!(
        sort_elements(table),
        "\t\telements = { a . 1,\n\t\t             b . 2 }\n\tchain x {\n"
    );
}

#[test]
fn source_allow_lists() {
    check_in(
        Lab::dual_stack(BrNetfilter::On),
        "allow-from",
        &[
            &[
                "add",
                "--netns",
                "{ns1}",
                "8080:80",
                "--allow-from",
                "192.0.2.0/24",
                "--allow-from",
                "10.77.0.2",
                "--allow-from",
                "2001:db8::/48",
            ],
            &[
                "add",
                "--netns",
                "{ns1}",
                "5353:53/udp",
                "--allow-from",
                "198.51.100.7",
            ],
            &["add", "--to", "10.77.0.2", "9000:80"],
        ],
    );
}
