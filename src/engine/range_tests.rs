//! Port ranges on the fake kernel: the Fake keeps interval maps as the kernel does (the same
//! steps as `tests/netlink_kernel.rs` runs against the kernel), a range is one element, a
//! clash between a range and a single port is refused and named both ways, a single-port
//! publish reads no map of mappings however many there are, and `rm` of a port inside a
//! range cuts it.

use std::io;

use super::counts::Counts;
use super::fake::Fake;
use super::kernel::Kernel;
use super::transaction::{self, Committed};
use crate::Error;
use crate::netlink::NetlinkError;
use crate::netlink::nftables::Change;
use crate::ruleset::{
    self, Element, Mapping, SET_ANY4, SET_ANY6, SET_RANGE4, SET_RANGE6, SetDef, host_key,
    host_key_in,
};
use crate::spec::Proto;

fn mapping(host_port: u16, end: Option<u16>, to: &str) -> Mapping {
    Mapping {
        host_port,
        host_port_end: end,
        to_addr: to.parse().unwrap(),
        to_port: if end.is_some() { host_port } else { 80 },
        netns: Some("n".into()),
        netns_inode: Some(7),
        ..Mapping::example()
    }
}

fn publish(fake: &mut Fake, mappings: &[Mapping]) -> Result<Committed, Error> {
    let mut counts = fake.counts.take();
    let result = transaction::create(fake, &mut counts, mappings, false, false);
    fake.counts = counts;
    result
}

/// `rm PORT` as `unpublish` does it: by key in the exact and the range map; of a range,
/// only the port goes.
fn remove_port(fake: &mut Fake, port: u16) -> Result<Committed, Error> {
    let keys = vec![
        (SET_ANY4, host_key(Proto::Tcp, None, port)),
        (
            SET_RANGE4,
            host_key_in(SET_RANGE4, None, Proto::Tcp, None, port),
        ),
    ];
    let mut counts = fake.counts.take();
    let result = transaction::remove(fake, &mut counts, &keys, false, |found| {
        let found: Vec<&Mapping> = found.iter().flatten().collect();
        match found.as_slice() {
            [] => Err(Error::NotPublished(port.to_string())),
            holders => Ok(holders.iter().map(|m| m.part(port, port)).collect()),
        }
    });
    fake.counts = counts;
    result
}

fn range_element(start: u16, end: u16, target: u8) -> Element {
    let key = |port: u16| host_key_in(SET_RANGE4, None, Proto::Tcp, None, port);
    Element {
        set: SET_RANGE4,
        key: key(start),
        key_end: Some(key(end)),
        data: Some(vec![10, 0, 0, target]),
        comment: None,
    }
}

fn refusal(fake: &mut Fake, changes: &[Change<'_>]) -> Option<(i32, Option<usize>)> {
    match fake.commit(changes, None) {
        Ok(()) => None,
        Err(NetlinkError::Kernel { index, error }) => Some((error.raw_os_error()?, index)),
        Err(other) => panic!("{other:?}"),
    }
}

fn with_table() -> (Fake, Vec<SetDef>) {
    let mut fake = Fake::default();
    let sets = ruleset::sets();
    let mut changes = vec![Change::AddTable { exclusive: true }];
    changes.extend(sets.iter().map(Change::AddSet));
    fake.commit(&changes, None).unwrap();
    (fake, sets)
}

#[test]
fn the_fake_keeps_interval_maps_as_the_kernel_does() {
    let (mut fake, _sets) = with_table();
    let key = |port: u16| host_key_in(SET_RANGE4, None, Proto::Tcp, None, port);
    let range = range_element(20000, 29999, 2);
    assert_eq!(refusal(&mut fake, &[Change::AddElement(&range)]), None);
    // The protocol is a field of its own: no UDP port is inside a TCP range.
    let udp = host_key_in(SET_RANGE4, None, Proto::Udp, None, 20005);
    assert_eq!(fake.element(SET_RANGE4, &udp).unwrap(), None);
    assert_eq!(refusal(&mut fake, &[Change::AddElement(&range)]), None);
    let eexist = Some((libc::EEXIST, Some(0)));
    assert_eq!(refusal(&mut fake, &[Change::CreateElement(&range)]), eexist);
    // One that encloses it whole is taken: only an interval that starts or ends inside
    // another is refused.
    let around = range_element(19000, 30005, 4);
    assert_eq!(refusal(&mut fake, &[Change::CreateElement(&around)]), None);
    assert_eq!(refusal(&mut fake, &[Change::DelElement(&around)]), None);
    for clash in [
        range_element(20000, 29999, 3),
        range_element(20005, 20010, 2),
        range_element(29990, 30010, 2),
        range_element(20005, 20005, 2),
        range_element(19000, 20000, 2),
    ] {
        assert_eq!(
            refusal(&mut fake, &[Change::AddElement(&clash)]),
            eexist,
            "{clash:?}"
        );
    }
    let next = range_element(30000, 30010, 3);
    assert_eq!(refusal(&mut fake, &[Change::AddElement(&next)]), None);
    let held = fake.element(SET_RANGE4, &key(20005)).unwrap().unwrap();
    assert_eq!((held.key, held.key_end), (key(20000), key(29999)));
    assert_eq!(held.data, [10, 0, 0, 2]);
    let held = fake.element(SET_RANGE4, &key(30010)).unwrap().unwrap();
    assert_eq!(held.key, key(30000));
    assert_eq!(fake.element(SET_RANGE4, &key(40000)).unwrap(), None);
    let probe = range_element(20005, 20005, 9);
    assert_eq!(
        refusal(
            &mut fake,
            &[Change::CreateElement(&probe), Change::DelElement(&probe)]
        ),
        eexist
    );
    let free = range_element(40000, 40000, 9);
    assert_eq!(
        refusal(
            &mut fake,
            &[Change::CreateElement(&free), Change::DelElement(&free)]
        ),
        None
    );
    assert_eq!(fake.element(SET_RANGE4, &key(40000)).unwrap(), None);
    assert_eq!(fake.elements(SET_RANGE4).unwrap().len(), 2);
    assert_eq!(refusal(&mut fake, &[Change::DelElement(&range)]), None);
    assert_eq!(fake.element(SET_RANGE4, &key(20005)).unwrap(), None);
    assert_eq!(
        refusal(&mut fake, &[Change::DelElement(&range)]),
        Some((libc::ENOENT, Some(0)))
    );
}

#[test]
fn a_range_is_one_element_and_a_single_port_inside_it_is_refused_naming_it() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(20000, Some(29999), "10.0.0.2")]).unwrap();
    assert_eq!(fake.elements_of(SET_RANGE4).len(), 1);
    assert!(fake.elements_of(SET_ANY4).is_empty());
    let before = fake.table.clone();
    for port in [20000, 25000, 29999] {
        let error = publish(&mut fake, &[mapping(port, None, "10.0.0.3")]).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, Error::Conflict { .. }), "{text}");
        assert!(text.contains(&format!("{port}/tcp")), "{text}");
        assert!(text.contains("10.0.0.2:20000-29999"), "{text}");
        assert!(text.contains("by host port 20000-29999/tcp"), "{text}");
    }
    assert_eq!(fake.table, before);
    // Beside it, or in the other protocol: no clash.
    publish(&mut fake, &[mapping(30000, None, "10.0.0.3")]).unwrap();
    let udp = Mapping {
        proto: Proto::Udp,
        ..mapping(25000, None, "10.0.0.3")
    };
    publish(&mut fake, &[udp]).unwrap();
}

#[test]
fn a_range_over_a_single_port_or_another_range_is_refused_naming_it() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(8080, None, "10.0.0.3")]).unwrap();
    publish(&mut fake, &[mapping(20000, Some(20099), "10.0.0.2")]).unwrap();
    let before = fake.table.clone();
    let error = publish(&mut fake, &[mapping(8000, Some(8100), "10.0.0.2")]).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("8000-8100/tcp"), "{text}");
    assert!(text.contains("10.0.0.3:80 via br0"), "{text}");
    assert!(text.contains("8080/tcp"), "{text}");
    // Across an end, at an end, inside, and around it whole: the kernel takes the last,
    // so the publish must find it itself.
    for (start, end) in [
        (20050, 20200),
        (19000, 20000),
        (20010, 20020),
        (19990, 20120),
    ] {
        let error = publish(&mut fake, &[mapping(start, Some(end), "10.0.0.4")]).unwrap_err();
        assert!(
            error.to_string().contains("10.0.0.2:20000-20099"),
            "{error}"
        );
    }
    assert_eq!(fake.table, before);
    // `apply` and the CNI plugin go through the full read: the same clashes are refused.
    let mut counts = None;
    let error = transaction::update(&mut fake, &mut counts, false, |all| {
        let mut all = all.to_vec();
        all.push(mapping(20099, None, "10.0.0.4"));
        Ok(all)
    })
    .unwrap_err();
    assert!(error.to_string().contains("20000-20099"), "{error}");
}

#[test]
fn a_single_port_publish_reads_no_map_of_mappings_among_many() {
    let mut fake = Fake::default();
    let many: Vec<Mapping> = (1000..6000)
        .map(|port| mapping(port, None, "10.0.0.2"))
        .collect();
    publish(&mut fake, &many).unwrap();
    publish(&mut fake, &[mapping(20000, Some(29999), "10.0.0.2")]).unwrap();
    for set in [SET_ANY4, SET_RANGE4, SET_ANY6, SET_RANGE6] {
        fake.forbid_dumps_of(set);
    }
    let commits = fake.commits;
    publish(&mut fake, &[mapping(7000, None, "10.0.0.3")]).unwrap();
    assert_eq!(fake.commits, commits + 1, "one batch");
    assert_eq!(fake.elements_of(SET_ANY4).len(), 5001);
    // No element was left in the range map.
    assert_eq!(fake.elements_of(SET_RANGE4).len(), 1);
}

#[test]
fn rm_of_a_port_inside_a_range_cuts_it_and_keeps_its_helpers() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(20000, Some(20010), "10.0.0.2")]).unwrap();
    fake.counts = fake.counts.clone().or_else(|| {
        Some(Counts::of(
            &[mapping(20000, Some(20010), "10.0.0.2")],
            fake.generation,
        ))
    });
    fake.forbid_dumps_of(SET_ANY4);
    fake.forbid_dumps_of(SET_RANGE4);
    let committed = remove_port(&mut fake, 20005).unwrap();
    assert_eq!(committed.removed, [mapping(20000, Some(20010), "10.0.0.2")]);
    assert_eq!(
        committed.added,
        [
            mapping(20000, Some(20004), "10.0.0.2"),
            mapping(20006, Some(20010), "10.0.0.2")
        ]
    );
    let starts: Vec<Vec<u8>> = fake.elements_of(SET_RANGE4).into_keys().collect();
    assert_eq!(
        starts,
        [
            host_key_in(SET_RANGE4, None, Proto::Tcp, None, 20000),
            host_key_in(SET_RANGE4, None, Proto::Tcp, None, 20006)
        ]
    );
    // The target's helpers stay: the rest of the range needs them.
    for helper in [
        Element::hairpin("10.0.0.2".parse().unwrap()),
        Element::reach("br0", "10.0.0.2".parse().unwrap()),
    ] {
        assert!(fake.elements_of(helper.set).contains_key(&helper.key));
    }
    // The end of a part leaves a single port, in the exact map.
    remove_port(&mut fake, 20010).unwrap();
    remove_port(&mut fake, 20008).unwrap();
    assert_eq!(fake.elements_of(SET_ANY4).len(), 1);
    assert!(matches!(
        remove_port(&mut fake, 20005),
        Err(Error::NotPublished(_))
    ));
    let _ = io::Error::other("unused");
}

#[test]
fn update_refuses_a_clash_among_many_of_interleaved_kinds_and_allows_ports_that_only_touch() {
    // The same ports in another protocol, family, host address or interface are no clash;
    // ranges that only touch end to start are none either.
    let kinds = |port: u16, end: Option<u16>| {
        let tcp = mapping(port, end, "10.0.0.2");
        vec![
            Mapping {
                proto: Proto::Udp,
                ..tcp.clone()
            },
            Mapping {
                to_addr: "fd00::2".parse().unwrap(),
                ..tcp.clone()
            },
            Mapping {
                host_addr: Some("127.0.0.1".parse().unwrap()),
                ..tcp.clone()
            },
            Mapping {
                on: Some("eth0".into()),
                host_port_end: None,
                ..tcp.clone()
            },
            tcp,
        ]
    };
    let mut fine: Vec<Mapping> = Vec::new();
    for (start, end) in [(1000, Some(1099)), (1100, Some(1199)), (1200, None)] {
        fine.extend(kinds(start, end));
    }
    for port in 2000..2300 {
        fine.extend(kinds(port, None));
    }
    let mut fake = Fake::default();
    let mut counts = None;
    transaction::update(&mut fake, &mut counts, false, |_| Ok(fine.clone())).unwrap();
    let before = fake.table.clone();
    // A range over a single port far from it in the list, a single port inside a range
    // after it, and two ranges across each other, each among the kinds that do not clash.
    for (clash, named) in [
        (mapping(2150, Some(2160), "10.0.0.4"), "2150-2160/tcp"),
        (mapping(1150, None, "10.0.0.4"), "1100-1199"),
        (mapping(1190, Some(1210), "10.0.0.4"), "1190-1210/tcp"),
    ] {
        for at in [0, fine.len() / 2, fine.len()] {
            let mut desired = fine.clone();
            desired.insert(at, clash.clone());
            let error = transaction::update(&mut fake, &mut counts, false, |_| Ok(desired.clone()))
                .unwrap_err();
            assert!(error.to_string().contains(named), "{error}");
        }
    }
    assert_eq!(fake.table, before);
}
