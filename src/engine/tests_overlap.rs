//! The overlap rule on the fake kernel: what `add` (the `create` fast path and its `update`
//! fallback) refuses, what it reads to decide, and what `--force` lets through.

use super::counts::Counts;
use super::fake::Fake;
use super::transaction::{self, Committed};
use crate::Error;
use crate::netlink::nftables::Change;
use crate::ruleset::{
    Element, Mapping, SET_ADDR4, SET_ANY4, SET_ANY6, SET_ON4, SET_ONADDR4, SET_ONADDR6,
};
use crate::spec::Proto;

fn side(on: Option<&str>, addr: Option<&str>, to: &str) -> Mapping {
    Mapping {
        host_addr: addr.map(|a| a.parse().unwrap()),
        on: on.map(String::from),
        host_port: 8080,
        to_addr: to.parse().unwrap(),
        to_port: 80,
        netns: Some("c".into()),
        netns_inode: Some(7),
        ..Mapping::example()
    }
}

fn any() -> Mapping {
    side(None, None, "10.77.0.2")
}

fn publish_with(fake: &mut Fake, mappings: &[Mapping], force: bool) -> Result<Committed, Error> {
    let mut counts: Option<Counts> = fake.counts.take();
    let result = transaction::create(fake, &mut counts, mappings, force, false);
    fake.counts = counts;
    result
}

fn publish(fake: &mut Fake, mappings: &[Mapping]) -> Result<Committed, Error> {
    publish_with(fake, mappings, false)
}

/// Publishes `held`, then `wanted`: refused, naming the holder, with the table and its
/// generation as they were.
fn refused(held: &Mapping, wanted: &Mapping) -> String {
    let mut fake = Fake::default();
    publish(&mut fake, std::slice::from_ref(held)).unwrap();
    let (table, generation) = (fake.table.clone(), fake.generation);
    let error = publish(&mut fake, std::slice::from_ref(wanted)).unwrap_err();
    assert!(matches!(error, Error::Overlap { .. }), "{error:?}");
    assert!(!error.is_usage(), "an overlap is exit code 1");
    let text = error.to_string();
    assert!(text.contains(&held.host_label()), "{text}");
    assert!(text.contains(&held.target_label()), "{text}");
    assert_eq!(fake.table, table, "{text}: the table changed");
    assert_eq!(
        fake.generation, generation,
        "{text}: something was committed"
    );
    text
}

fn accepted(held: &Mapping, wanted: &Mapping) {
    let mut fake = Fake::default();
    publish(&mut fake, std::slice::from_ref(held)).unwrap();
    publish(&mut fake, std::slice::from_ref(wanted)).unwrap_or_else(|error| {
        panic!(
            "{} refused beside {}: {error}",
            wanted.host_label(),
            held.host_label()
        )
    });
    assert!(fake.elements_of(wanted.set()).contains_key(&wanted.key()));
}

#[test]
fn a_wildcard_and_a_specific_address_refuse_each_other_in_either_order() {
    let lo = side(None, Some("127.0.0.1"), "10.77.0.3");
    refused(&any(), &lo);
    refused(&lo, &any());
}

#[test]
fn interfaces_overlap_the_wildcard_addresses_and_themselves_narrowed() {
    let eth0 = side(Some("eth0"), None, "10.77.0.3");
    let eth0_addr = side(Some("eth0"), Some("192.0.2.1"), "10.77.0.4");
    let addr = side(None, Some("192.0.2.1"), "10.77.0.5");
    for (held, wanted) in [
        (any(), eth0.clone()),
        (eth0.clone(), any()),
        (eth0.clone(), eth0_addr.clone()),
        (eth0_addr.clone(), eth0.clone()),
        (eth0.clone(), addr.clone()),
        (addr.clone(), eth0.clone()),
        (addr.clone(), eth0_addr.clone()),
        (eth0_addr.clone(), addr.clone()),
        (any(), eth0_addr.clone()),
        (eth0_addr.clone(), any()),
    ] {
        refused(&held, &wanted);
    }
}

#[test]
fn distinct_sockets_do_not_overlap() {
    let eth0 = side(Some("eth0"), None, "10.77.0.3");
    let eth1 = side(Some("eth1"), None, "10.77.0.4");
    accepted(&eth0, &eth1);
    accepted(
        &side(Some("eth0"), Some("192.0.2.1"), "10.77.0.3"),
        &side(Some("eth1"), Some("192.0.2.1"), "10.77.0.4"),
    );
    accepted(
        &side(None, Some("192.0.2.1"), "10.77.0.3"),
        &side(Some("eth0"), Some("198.51.100.1"), "10.77.0.4"),
    );
    accepted(
        &side(None, Some("192.0.2.1"), "10.77.0.3"),
        &side(None, Some("127.0.0.1"), "10.77.0.4"),
    );
    // Another family, port or protocol.
    accepted(&any(), &side(None, Some("2001:db8::1"), "2001:db8:1::2"));
    accepted(
        &any(),
        &Mapping {
            host_port: 8081,
            host_port_end: None,
            ..side(None, Some("127.0.0.1"), "10.77.0.3")
        },
    );
    accepted(
        &any(),
        &Mapping {
            proto: Proto::Udp,
            ..side(None, Some("127.0.0.1"), "10.77.0.3")
        },
    );
}

#[test]
fn force_publishes_both_and_the_specific_one_is_in_its_own_map() {
    let mut fake = Fake::default();
    publish(&mut fake, &[any()]).unwrap();
    let lo = side(None, Some("127.0.0.1"), "10.77.0.3");
    let eth0 = side(Some("eth0"), None, "10.77.0.4");
    publish_with(&mut fake, &[lo.clone(), eth0.clone()], true).unwrap();
    assert_eq!(fake.elements_of(SET_ANY4).len(), 1);
    assert!(fake.elements_of(SET_ADDR4).contains_key(&lo.key()));
    assert!(fake.elements_of(SET_ON4).contains_key(&eth0.key()));
    // Re-publishing the wildcard, which is there, still succeeds without --force: it is
    // the same host side, not an overlap.
    publish(&mut fake, &[any()]).unwrap();
}

#[test]
fn the_update_path_refuses_overlaps_too() {
    // A re-publish with a new target falls back from `create` to `update` (`merged`),
    // which must apply the same rule.
    let lo = side(None, Some("127.0.0.1"), "10.77.0.3");
    let current = [any()];
    let error = transaction::merged(&current, std::slice::from_ref(&lo), false).unwrap_err();
    assert!(matches!(error, Error::Overlap { .. }), "{error:?}");
    assert_eq!(
        transaction::merged(&current, std::slice::from_ref(&lo), true)
            .unwrap()
            .len(),
        2
    );
    // Replacing a mapping's own host side is not an overlap with itself.
    let moved = side(None, None, "10.77.0.2");
    assert!(transaction::merged(&current, &[moved], false).is_ok());
}

#[test]
fn a_wildcard_publish_reads_no_wildcard_and_a_specific_one_gets_exact_keys() {
    let mut fake = Fake::default();
    let many: Vec<Mapping> = (1..=2000)
        .chain([8080])
        .map(|port| Mapping {
            host_port: port,
            host_port_end: None,
            ..any()
        })
        .collect();
    publish(&mut fake, &many).unwrap();
    // The maps of wildcards are never dumped: a wildcard publish reads only the narrower
    // maps (empty here), and one with an interface and an address gets the exact keys it
    // could meet and dumps nothing.
    fake.forbid_dumps_of(SET_ANY4);
    fake.forbid_dumps_of(SET_ANY6);
    publish(
        &mut fake,
        &[Mapping {
            host_port: 9000,
            host_port_end: None,
            ..any()
        }],
    )
    .unwrap();
    fake.forbid_dumps_of(SET_ADDR4);
    fake.forbid_dumps_of(SET_ON4);
    fake.forbid_dumps_of(SET_ONADDR4);
    publish(
        &mut fake,
        &[Mapping {
            host_port: 9001,
            host_port_end: None,
            ..side(Some("eth0"), Some("192.0.2.1"), "10.77.0.3")
        }],
    )
    .unwrap();
    assert_eq!(fake.elements_of(SET_ONADDR4).len(), 1);
    assert_eq!(fake.elements_of(SET_ONADDR6).len(), 0);
    // A refusal reads no more.
    for wanted in [
        side(None, Some("192.0.2.1"), "10.77.0.3"),
        side(Some("eth0"), Some("192.0.2.1"), "10.77.0.3"),
    ] {
        let error = publish(&mut fake, &[wanted]).unwrap_err();
        assert!(matches!(error, Error::Overlap { .. }), "{error:?}");
    }
}

#[test]
fn an_overlap_another_writer_adds_before_the_commit_is_seen() {
    // `add 127.0.0.1:8080` reads no overlap; before it commits, another writer publishes
    // the wildcard. The stale batch is refused, and the retry finds the overlap.
    let mut fake = Fake::default();
    publish(
        &mut fake,
        &[Mapping {
            host_port: 1,
            host_port_end: None,
            ..any()
        }],
    )
    .unwrap();
    let other = Element::mapping(&any());
    let mut done = false;
    fake.between_read_and_commit = Some(Box::new(move |fake: &mut Fake| {
        if !done {
            done = true;
            fake.commit_as_other(&[Change::AddElement(&other)]);
        }
    }));
    let error = publish(&mut fake, &[side(None, Some("127.0.0.1"), "10.77.0.3")]).unwrap_err();
    assert!(matches!(error, Error::Overlap { .. }), "{error:?}");
    assert_eq!(fake.refused_stale, 1);
    assert!(fake.elements_of(SET_ADDR4).is_empty());
}

#[test]
fn one_command_asking_for_both_is_refused_by_the_publish_itself() {
    let both = [any(), side(None, Some("127.0.0.1"), "10.77.0.2")];
    let error = super::overlap::check(&[], &both).unwrap_err();
    assert!(matches!(error, Error::Overlap { .. }), "{error:?}");
    // A wildcard publishes in both families; they do not overlap each other.
    let dual = [any(), side(None, None, "2001:db8:1::2")];
    assert_eq!(dual[1].set(), SET_ANY6);
    super::overlap::check(&[], &dual).unwrap();
}
