//! Combinations of options that were built separately: interface-bound mappings with
//! source allow-lists, identity ranges with lists and interfaces, SCTP with a list, and a
//! table holding all of them surviving export, flush and apply; real traffic where it is
//! about traffic.

mod lab;

use lab::*;
use std::net::Ipv4Addr;

#[test]
fn an_allow_list_governs_an_interface_bound_mapping() {
    let lab = Lab::new(BrNetfilter::On);
    let _server = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 80);
    let ns1 = lab.ns("ns1");
    // out (192.0.2.2, behind vo) is not on the list: it meets what an unpublished port gives.
    let unpublished = lab.tcp("out", HOST_OUT, 8181);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "--on",
        "vo",
        "--allow-from",
        "10.9.9.0/24",
        "8080:80",
    ]);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), unpublished);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "--on",
        "vo",
        "--allow-from",
        "192.0.2.0/24",
        "8080:80",
    ]);
    assert_eq!(lab.tcp("out", HOST_OUT, 8080), some(OUT));
}

#[test]
fn ranges_lists_interfaces_and_sctp_survive_export_flush_apply() {
    let lab = Lab::new(BrNetfilter::On);
    let _inside = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 9003);
    let _on = lab.serve_tcp("ns1", Ipv4Addr::UNSPECIFIED, 9105);
    let ns1 = lab.ns("ns1");
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "--allow-from",
        "10.9.9.0/24",
        "9000-9009:9000-9009",
    ]);
    assert_eq!(
        lab.tcp("out", HOST_OUT, 9003),
        None,
        "unlisted source into a limited range"
    );
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "--allow-from",
        "192.0.2.0/24",
        "9000-9009:9000-9009",
    ]);
    assert_eq!(lab.tcp("out", HOST_OUT, 9003), some(OUT));
    // rm of a port inside the limited range leaves the rest with its list.
    lab.nsport_ok(&["rm", "9003"]);
    assert_eq!(lab.tcp("out", HOST_OUT, 9003), None);
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "--on",
        "vo",
        "--allow-from",
        "10.9.9.0/24",
        "9100-9109:9100-9109",
    ]);
    assert_eq!(
        lab.tcp("out", HOST_OUT, 9105),
        None,
        "unlisted source on vo"
    );
    lab.nsport_ok(&[
        "add",
        "--netns",
        &ns1,
        "--allow-from",
        "10.9.9.0/24",
        "7000:7000/sctp",
    ]);
    let before = sort_elements(&without_counter_values(
        &lab.nft("host", "list table inet nsport"),
    ));
    let exported = lab.nsport_ok(&["export"]);
    let file = lab.state_dir().join("exported.json");
    std::fs::write(&file, &exported).unwrap();
    lab.nsport_ok(&["flush"]);
    lab.nsport_ok(&["apply", file.to_str().unwrap()]);
    let after = sort_elements(&without_counter_values(
        &lab.nft("host", "list table inet nsport"),
    ));
    assert_eq!(before, after);
    assert_eq!(lab.nsport_ok(&["export"]), exported);
    assert!(lab.nsport(&["doctor"]).status.success());
}

#[test]
fn apply_refuses_an_allowed_source_with_spaces_as_add_does() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let before = lab.ruleset();
    let add = lab.nsport(&[
        "add",
        "--netns",
        &ns1,
        "--allow-from",
        "10.0.0.0/8 ",
        "8080:80",
    ]);
    assert_eq!(add.status.code(), Some(2));
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    let file = lab.state_dir().join("spaced.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"version":1,"mappings":[{{"netns":"{ns1}","publish":"8080:80/tcp","allow_from":["10.0.0.0/8 "]}}]}}"#
        ),
    )
    .unwrap();
    let apply = lab.nsport(&["apply", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&apply.stderr);
    assert_eq!(apply.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(r#""10.0.0.0/8 ""#), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(lab.ruleset(), before);
}

/// A bad `on` in a mappings file is named with the entry that holds it, as every other
/// field of the file is, and changes nothing.
#[test]
fn apply_names_the_entry_of_a_bad_interface() {
    let lab = Lab::new(BrNetfilter::On);
    let ns1 = lab.ns("ns1");
    let before = lab.ruleset();
    std::fs::create_dir_all(lab.state_dir()).unwrap();
    let file = lab.state_dir().join("on.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"version":1,"mappings":[{{"netns":"{ns1}","publish":"8080:80/tcp"}},{{"netns":"{ns1}","publish":"8081:80/tcp","on":"lo"}}]}}"#
        ),
    )
    .unwrap();
    let apply = lab.nsport(&["apply", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&apply.stderr);
    assert_eq!(apply.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mapping 2:"), "{stderr}");
    assert!(stderr.contains("lo"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(lab.ruleset(), before);
}
