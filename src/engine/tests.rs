//! The engine on the fake kernel: transactions, retries, conflicts and repairs, without
//! root. Each test plays the other writer through `between_read_and_commit`.

use std::net::IpAddr;

use super::counts::{Counts, Users};
use super::fake::Fake;
use super::transaction::{self, Committed};
use crate::Error;
use crate::netlink::nftables::Change;
use crate::ruleset::{
    self, CHAIN_GUARD, Element, Mapping, SET_ANY4, SET_HAIRPIN4, SET_REACH4, SET_TARGETS4,
};
use crate::spec::Proto;

fn mapping(host_port: u16, to: &str, via: &str) -> Mapping {
    Mapping {
        host_port,
        to_addr: to.parse().unwrap(),
        to_port: 3000,
        via: via.into(),
        netns: Some("c".into()),
        netns_inode: Some(7),
        ..Mapping::example()
    }
}

/// Runs a change with the counts the fake host's record keeps, and keeps them back.
fn with_counts<T>(fake: &mut Fake, change: impl FnOnce(&mut Fake, &mut Option<Counts>) -> T) -> T {
    let mut counts = fake.counts.take();
    let result = change(fake, &mut counts);
    fake.counts = counts;
    result
}

fn publish(fake: &mut Fake, mappings: &[Mapping]) -> Result<Committed, Error> {
    with_counts(fake, |fake, counts| {
        transaction::create(fake, counts, mappings, false, false)
    })
}

/// Removes by reading everything, as `rm --netns` and `apply` do.
fn remove(fake: &mut Fake, host_port: u16) -> Result<Committed, Error> {
    with_counts(fake, |fake, counts| update_without(fake, counts, host_port))
}

fn update_without(
    fake: &mut Fake,
    counts: &mut Option<Counts>,
    host_port: u16,
) -> Result<Committed, Error> {
    transaction::update(fake, counts, false, |all| {
        Ok(all
            .iter()
            .filter(|m| m.host_port != host_port)
            .cloned()
            .collect())
    })
}

/// Removes by key, reading only what it removes and the helpers, as `rm PORT` does.
fn remove_by_key(fake: &mut Fake, host_port: u16) -> Result<Committed, Error> {
    let keys = vec![(SET_ANY4, ruleset::host_key(Proto::Tcp, None, host_port))];
    with_counts(fake, |fake, counts| {
        transaction::remove(fake, counts, &keys, false, |found| match found {
            [Some(mapping)] => Ok(vec![mapping.clone()]),
            _ => Err(Error::NotPublished(host_port.to_string())),
        })
    })
}

/// What the fake host's record counts for a helper element.
fn users(fake: &Fake, element: &Element) -> Option<Users> {
    fake.counts
        .as_ref()?
        .helpers
        .get(&(element.set, element.key.clone()))
        .copied()
}

fn has(fake: &Fake, element: &Element) -> bool {
    fake.elements_of(element.set).contains_key(&element.key)
}

fn helpers_of(target: &str, via: &str) -> [Element; 3] {
    let addr: IpAddr = target.parse().unwrap();
    [
        Element::reach(via, addr),
        Element::hairpin(addr),
        Element::target(addr),
    ]
}

#[test]
fn a_first_publish_creates_the_table_with_its_helpers() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    assert_eq!(fake.elements_of(SET_ANY4).len(), 1);
    for helper in helpers_of("10.77.0.2", "br0") {
        assert!(has(&fake, &helper), "{helper:?} missing");
    }
    let table = fake.table.as_ref().unwrap();
    assert_eq!(table.chains.len(), ruleset::chains().len());
    assert_eq!(fake.commits, 1);
}

#[test]
fn a_stale_generation_is_read_and_planned_again() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let mut meddled = false;
    fake.between_read_and_commit = Some(Box::new(move |fake: &mut Fake| {
        if !meddled {
            meddled = true;
            fake.generation += 1;
        }
    }));
    remove(&mut fake, 4001).unwrap();
    assert_eq!(fake.refused_stale, 1);
    assert!(fake.elements_of(SET_ANY4).is_empty());
}

#[test]
fn a_ruleset_that_never_settles_is_a_clear_error() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    fake.between_read_and_commit = Some(Box::new(|fake: &mut Fake| fake.generation += 1));
    let error = remove(&mut fake, 4001).unwrap_err();
    assert!(matches!(error, Error::Busy { tries } if tries == transaction::TRIES));
    assert!(error.is_transient());
    assert!(error.to_string().contains("nothing was changed"), "{error}");
    // Nothing applied: the mapping is still there.
    assert_eq!(fake.elements_of(SET_ANY4).len(), 1);
}

#[test]
fn removing_keeps_helpers_another_writer_came_to_need() {
    // rm 4001 reads a table where 4001 is the only mapping to 10.77.0.2, so it plans to
    // delete the target's helpers; before it commits, another writer publishes 4002 to the
    // same target. The stale batch is refused, and the retry keeps the helpers.
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let other = mapping(4002, "10.77.0.2", "br0");
    let mut done = false;
    fake.between_read_and_commit = Some(Box::new(move |fake: &mut Fake| {
        if !done {
            done = true;
            let element = Element::mapping(&other);
            fake.commit_as_other(&[Change::AddElement(&element)]);
        }
    }));
    remove(&mut fake, 4001).unwrap();
    fake.between_read_and_commit = None;
    let left: Vec<_> = fake.elements_of(SET_ANY4).into_keys().collect();
    assert_eq!(left, vec![mapping(4002, "10.77.0.2", "br0").key()]);
    for helper in helpers_of("10.77.0.2", "br0") {
        assert!(has(&fake, &helper), "{helper:?} was stripped");
    }
}

#[test]
fn removing_the_last_mapping_of_a_target_removes_its_helpers_only() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    publish(&mut fake, &[mapping(5001, "10.88.0.2", "br1")]).unwrap();
    remove(&mut fake, 4001).unwrap();
    for helper in helpers_of("10.77.0.2", "br0") {
        assert!(!has(&fake, &helper), "{helper:?} left behind");
    }
    for helper in helpers_of("10.88.0.2", "br1") {
        assert!(has(&fake, &helper), "{helper:?} removed");
    }
}

#[test]
fn a_taken_host_port_is_a_named_conflict_and_changes_nothing() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let before = fake.table.clone();
    let elsewhere = Mapping {
        netns: Some("d".into()),
        ..mapping(4001, "10.77.0.9", "br0")
    };
    let error = publish(&mut fake, &[elsewhere]).unwrap_err();
    assert!(
        matches!(&error, Error::Conflict { host, existing }
            if host == "4001/tcp" && existing.contains("10.77.0.2:3000 via br0")),
        "{error}"
    );
    assert_eq!(fake.table, before);
}

#[test]
fn republishing_refreshes_what_the_mapping_records() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    // The namespace was deleted and made again under the same name: a new inode.
    let fresh = Mapping {
        netns_inode: Some(8),
        ..mapping(4001, "10.77.0.2", "br0")
    };
    publish(&mut fake, std::slice::from_ref(&fresh)).unwrap();
    let (_, comment) = fake.elements_of(SET_ANY4).into_values().next().unwrap();
    assert_eq!(comment, Some(fresh.comment()));
    // Publishing it once more changes nothing at all.
    let generation = fake.generation;
    publish(&mut fake, &[fresh]).unwrap();
    assert_eq!(fake.generation, generation);
}

#[test]
fn an_emptied_guard_is_restored_by_the_next_change() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let guard = ruleset::chains()
        .into_iter()
        .find(|c| c.name == CHAIN_GUARD)
        .unwrap();
    fake.commit_as_other(&[Change::FlushChain(&guard)]);
    assert!(
        fake.table.as_ref().unwrap().chains[CHAIN_GUARD]
            .rules
            .is_empty()
    );
    publish(&mut fake, &[mapping(4002, "10.77.0.2", "br0")]).unwrap();
    let expected: Vec<String> = ruleset::rules()
        .iter()
        .filter(|r| r.chain == CHAIN_GUARD)
        .map(crate::netlink::nftables::rule_exprs_text)
        .collect();
    assert_eq!(
        fake.table.as_ref().unwrap().chains[CHAIN_GUARD].rules,
        expected
    );
}

#[test]
fn an_edited_forward_chain_is_restored_even_by_a_removal() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    publish(&mut fake, &[mapping(4002, "10.77.0.2", "br0")]).unwrap();
    fake.table
        .as_mut()
        .unwrap()
        .chains
        .get_mut(ruleset::CHAIN_FORWARD)
        .unwrap()
        .rules
        .retain(|rule| !rule.contains("drop") && !rule.contains("lookup"));
    remove(&mut fake, 4001).unwrap();
    let expected = ruleset::rules()
        .iter()
        .filter(|r| r.chain == ruleset::CHAIN_FORWARD)
        .count();
    assert_eq!(
        fake.table.as_ref().unwrap().chains[ruleset::CHAIN_FORWARD]
            .rules
            .len(),
        expected
    );
}

#[test]
fn the_diff_touches_only_what_changes() {
    let mut fake = Fake::default();
    let many: Vec<Mapping> = (1000..6000)
        .map(|port| mapping(port, "10.77.0.2", "br0"))
        .collect();
    publish(&mut fake, &many).unwrap();
    let committed = remove(&mut fake, 1234).unwrap();
    // One mapping goes, and nothing else: the target's helpers stay for the others.
    assert_eq!(committed.plan.delete.len(), 1);
    assert!(committed.plan.add.is_empty());
    assert_eq!(fake.elements_of(SET_ANY4).len(), 4999);
    assert_eq!(fake.elements_of(SET_HAIRPIN4).len(), 1);
    assert_eq!(fake.elements_of(SET_TARGETS4).len(), 1);
    assert_eq!(fake.elements_of(SET_REACH4).len(), 1);
    let reach = Element::reach("br0", "10.77.0.2".parse().unwrap());
    assert_eq!(
        users(&fake, &reach),
        Some(Users {
            mappings: 4999,
            loopback: 4999
        })
    );
}

#[test]
fn allowing_direct_access_drops_the_targets_protection_when_no_mapping_needs_it() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let direct = Mapping {
        allow_direct: true,
        ..mapping(4001, "10.77.0.2", "br0")
    };
    with_counts(&mut fake, |fake, counts| {
        transaction::update(fake, counts, false, |_| Ok(vec![direct.clone()]))
    })
    .unwrap();
    assert!(!has(&fake, &Element::target("10.77.0.2".parse().unwrap())));
    assert!(has(&fake, &Element::hairpin("10.77.0.2".parse().unwrap())));
}

#[test]
fn helpers_count_their_mappings_through_every_path() {
    let mut fake = Fake::default();
    let hairpin = Element::hairpin("10.77.0.2".parse().unwrap());
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    publish(
        &mut fake,
        &[
            mapping(4002, "10.77.0.2", "br0"),
            mapping(4003, "10.77.0.2", "br0"),
        ],
    )
    .unwrap();
    assert_eq!(users(&fake, &hairpin).map(|u| u.mappings), Some(3));
    remove_by_key(&mut fake, 4002).unwrap();
    assert_eq!(users(&fake, &hairpin).map(|u| u.mappings), Some(2));
    remove(&mut fake, 4001).unwrap();
    assert_eq!(users(&fake, &hairpin).map(|u| u.mappings), Some(1));
    let committed = remove_by_key(&mut fake, 4003).unwrap();
    assert!(!has(&fake, &hairpin));
    assert!(fake.elements_of(SET_REACH4).is_empty());
    // Nothing is left that needs route_localnet or hairpin mode.
    let needed = committed.still_needed.unwrap();
    assert!(needed.loopback_vias.is_empty() && needed.targets.is_empty());
}

#[test]
fn removing_by_key_reads_no_other_mapping() {
    let mut fake = Fake::default();
    let many: Vec<Mapping> = (1000..3000)
        .map(|port| mapping(port, "10.77.0.2", "br0"))
        .collect();
    publish(&mut fake, &many).unwrap();
    fake.forbid_dumps_of(SET_ANY4);
    let committed = remove_by_key(&mut fake, 1500).unwrap();
    assert_eq!(committed.removed.len(), 1);
    assert_eq!(fake.elements_of(SET_ANY4).len(), 1999);
    let needed = committed.still_needed.unwrap();
    assert!(needed.loopback_vias.contains("br0"));
}

#[test]
fn removing_by_key_keeps_helpers_another_writer_came_to_need() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let other = mapping(4002, "10.77.0.2", "br0");
    let mut done = false;
    fake.between_read_and_commit = Some(Box::new(move |fake: &mut Fake| {
        if !done {
            done = true;
            publish(fake, std::slice::from_ref(&other)).unwrap();
        }
    }));
    remove_by_key(&mut fake, 4001).unwrap();
    fake.between_read_and_commit = None;
    for helper in helpers_of("10.77.0.2", "br0") {
        assert!(has(&fake, &helper), "{helper:?} was stripped");
    }
    let hairpin = Element::hairpin("10.77.0.2".parse().unwrap());
    assert_eq!(users(&fake, &hairpin).map(|u| u.mappings), Some(1));
}

#[test]
fn counts_of_another_generation_are_not_trusted() {
    // Another writer changed the ruleset after nsport last counted (here: deleted a
    // mapping by hand). Removing by key cannot trust the counts, reads everything, and
    // counts afresh.
    let mut fake = Fake::default();
    publish(
        &mut fake,
        &[
            mapping(4001, "10.77.0.2", "br0"),
            mapping(4002, "10.77.0.2", "br0"),
            mapping(4003, "10.77.0.2", "br0"),
        ],
    )
    .unwrap();
    let by_hand = Element::mapping(&mapping(4003, "10.77.0.2", "br0"));
    fake.commit_as_other(&[Change::DelElement(&by_hand)]);
    remove_by_key(&mut fake, 4001).unwrap();
    let hairpin = Element::hairpin("10.77.0.2".parse().unwrap());
    assert_eq!(users(&fake, &hairpin).map(|u| u.mappings), Some(1));
    assert_eq!(fake.elements_of(SET_ANY4).len(), 1);
    // And the last one takes the helpers with it.
    remove_by_key(&mut fake, 4002).unwrap();
    assert!(!has(&fake, &hairpin));
}

#[test]
fn counts_lost_with_the_record_are_counted_again() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    publish(&mut fake, &[mapping(4002, "10.77.0.2", "br0")]).unwrap();
    // An unreadable record, or a crash between a commit and the record.
    fake.counts = None;
    remove_by_key(&mut fake, 4001).unwrap();
    for helper in helpers_of("10.77.0.2", "br0") {
        assert!(has(&fake, &helper), "{helper:?} was stripped");
    }
    let hairpin = Element::hairpin("10.77.0.2".parse().unwrap());
    assert_eq!(users(&fake, &hairpin).map(|u| u.mappings), Some(1));
}

#[test]
fn publishing_deletes_nothing() {
    // A batch that deletes makes the process wait a grace period when its socket closes:
    // publishing to a target that has helpers already only adds.
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let committed = publish(&mut fake, &[mapping(4002, "10.77.0.2", "br0")]).unwrap();
    assert!(committed.plan.delete.is_empty());
    assert_eq!(fake.elements_of(SET_HAIRPIN4).len(), 1);
    let hairpin = Element::hairpin("10.77.0.2".parse().unwrap());
    assert_eq!(users(&fake, &hairpin).map(|u| u.mappings), Some(2));
}

#[test]
fn removing_what_is_not_published_names_it_and_changes_nothing() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let before = fake.table.clone();
    let error = remove_by_key(&mut fake, 4999).unwrap_err();
    assert!(
        matches!(&error, Error::NotPublished(what) if what == "4999"),
        "{error}"
    );
    assert_eq!(fake.table, before);
}

#[test]
fn republishing_a_namespace_that_came_back_with_a_new_address_retargets_it() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(4001, "10.77.0.2", "br0")]).unwrap();
    let moved = Mapping {
        netns_inode: Some(8),
        ..mapping(4001, "10.77.0.9", "br0")
    };
    publish(&mut fake, std::slice::from_ref(&moved)).unwrap();
    let (data, _) = fake.elements_of(SET_ANY4).into_values().next().unwrap();
    assert_eq!(data, moved.data());
    // The old address's helpers went with it.
    assert!(!has(&fake, &Element::hairpin("10.77.0.2".parse().unwrap())));
    assert!(has(&fake, &Element::hairpin("10.77.0.9".parse().unwrap())));
    // Another namespace on the same port is still a conflict.
    let other = Mapping {
        netns: Some("d".into()),
        ..mapping(4001, "10.77.0.5", "br0")
    };
    assert!(matches!(
        publish(&mut fake, &[other]),
        Err(Error::Conflict { .. })
    ));
}

#[test]
fn update_reports_as_added_and_removed_only_what_changed_and_sends_only_their_elements() {
    let mut fake = Fake::default();
    let (a, b, c) = (
        mapping(8080, "10.0.0.2", "br0"),
        mapping(8081, "10.0.0.2", "br0"),
        mapping(8082, "10.0.0.2", "br0"),
    );
    publish(&mut fake, &[a.clone(), b.clone()]).unwrap();
    let wanted = [a.clone(), c.clone()];
    let committed = with_counts(&mut fake, |fake, counts| {
        transaction::update(fake, counts, false, |_| Ok(wanted.to_vec()))
    })
    .unwrap();
    // The mapping kept is in neither list, nor is its element touched: its counters stay.
    assert_eq!(committed.removed, std::slice::from_ref(&b));
    assert_eq!(committed.added, std::slice::from_ref(&c));
    assert_eq!(committed.plan.delete, [Element::mapping(&b)]);
    let added: Vec<&Element> = committed
        .plan
        .add
        .iter()
        .filter(|e| e.set == SET_ANY4)
        .collect();
    assert_eq!(added, [&Element::mapping(&c)]);
    // Asked again for what is there, it changes nothing and reports nothing.
    let again = with_counts(&mut fake, |fake, counts| {
        transaction::update(fake, counts, false, |_| Ok(wanted.to_vec()))
    })
    .unwrap();
    assert!(
        again.removed.is_empty() && again.added.is_empty(),
        "{again:?}"
    );
    assert!(again.plan.is_empty(), "{:?}", again.plan);
    // A list given to a kept mapping changes the list's elements, not the mapping's.
    let listed = Mapping {
        allow_from: crate::model::parse_list(&["10.0.0.0/8"]).unwrap(),
        ..a.clone()
    };
    let committed = with_counts(&mut fake, |fake, counts| {
        transaction::update(fake, counts, false, |_| Ok(vec![listed.clone(), c.clone()]))
    })
    .unwrap();
    assert_eq!(committed.added, [listed]);
    let touched: Vec<&Element> = (committed.plan.add.iter())
        .chain(&committed.plan.delete)
        .filter(|e| e.set == SET_ANY4)
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    assert!(!committed.plan.add.is_empty());
}
