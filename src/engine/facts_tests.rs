//! The table's facts in the counts, on the fake kernel: a publish into the table as
//! nsport's own last change left it reads nothing but the generation; a map the facts say
//! holds elements is still searched; and after anyone else's commit, or facts that do not
//! add up, everything is read again.

use super::counts::{Counts, TableFacts};
use super::fake::Fake;
use super::transaction::{self, Committed};
use crate::Error;
use crate::ruleset::{Element, Mapping, SET_ADDR4, SET_ANY4, SET_LIMITED};

fn mapping(host_port: u16) -> Mapping {
    Mapping {
        host_port,
        host_port_end: None,
        to_addr: "10.77.0.2".parse().unwrap(),
        to_port: 80,
        netns: Some("c".into()),
        netns_inode: Some(7),
        ..Mapping::example()
    }
}

fn on_loopback(host_port: u16) -> Mapping {
    Mapping {
        host_addr: Some("127.0.0.1".parse().unwrap()),
        ..mapping(host_port)
    }
}

fn publish(fake: &mut Fake, mappings: &[Mapping]) -> Result<Committed, Error> {
    let mut counts = fake.counts.take();
    let result = transaction::create(fake, &mut counts, mappings, false, false);
    fake.counts = counts;
    result
}

fn remove(fake: &mut Fake, gone: &Mapping) {
    let keys = vec![(gone.set(), Element::mapping(gone).key)];
    let mut counts = fake.counts.take();
    transaction::remove(fake, &mut counts, &keys, false, |found| {
        Ok(found.iter().flatten().cloned().collect())
    })
    .unwrap();
    fake.counts = counts;
}

fn facts(fake: &Fake) -> TableFacts {
    let counts = fake.counts.as_ref().expect("counts");
    assert_eq!(counts.genid, fake.generation, "the counts are current");
    counts.facts.clone().expect("facts")
}

#[test]
fn a_publish_into_the_table_nsport_left_reads_nothing_but_the_generation() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(8080)]).unwrap();
    assert_eq!(facts(&fake).sizes.get(SET_ANY4), Some(&1));
    let reads = fake.reads;
    let generation_reads = fake.generation_reads;
    publish(&mut fake, &[mapping(8081)]).unwrap();
    assert_eq!(fake.reads, reads, "the second publish read the table");
    // Once, before: the batch creates its element exclusively, so committing it against
    // that generation moved the ruleset on by one, to the batch's own.
    assert_eq!(fake.generation_reads, generation_reads + 1);
    assert_eq!(fake.elements_of(SET_ANY4).len(), 2);
    assert_eq!(facts(&fake).sizes.get(SET_ANY4), Some(&2));
    // A removal by key keeps them exact.
    remove(&mut fake, &mapping(8080));
    assert_eq!(facts(&fake).sizes.get(SET_ANY4), Some(&1));
}

#[test]
fn a_map_the_facts_say_holds_elements_is_still_searched() {
    let mut fake = Fake::default();
    publish(&mut fake, &[on_loopback(8080)]).unwrap();
    assert_eq!(facts(&fake).sizes.get(SET_ADDR4), Some(&1));
    let error = publish(&mut fake, &[mapping(8080)]).unwrap_err();
    assert!(matches!(error, Error::Overlap { .. }), "{error:?}");
    // Once it is gone, the map is known empty again and not read.
    remove(&mut fake, &on_loopback(8080));
    assert_eq!(facts(&fake).sizes.get(SET_ADDR4), Some(&0));
    fake.forbid_dumps_of(SET_ADDR4);
    publish(&mut fake, &[mapping(8080)]).unwrap();
}

#[test]
fn another_writers_commit_makes_the_facts_stand_for_nothing() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(8080)]).unwrap();
    // `nft` adds a 127.0.0.1 mapping by hand: the facts still say addr4 is empty, but the
    // generation moved, so they are not believed and the overlap is found.
    let by_hand = Element::mapping(&on_loopback(9090));
    fake.commit_as_other(&[crate::netlink::nftables::Change::AddElement(&by_hand)]);
    let reads = fake.reads;
    let error = publish(&mut fake, &[mapping(9090)]).unwrap_err();
    assert!(matches!(error, Error::Overlap { .. }), "{error:?}");
    assert!(fake.reads > reads);
}

#[test]
fn facts_that_do_not_add_up_are_dropped_and_the_next_change_reads() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(8080), mapping(8081)]).unwrap();
    // A record whose facts say the map is emptier than it is (written by hand, say).
    if let Some(facts) = fake.counts.as_mut().and_then(|c| c.facts.as_mut()) {
        facts.sizes.insert(SET_ANY4, 0);
    }
    remove(&mut fake, &mapping(8080));
    let counts = fake.counts.as_ref().expect("the counts stand");
    assert_eq!(counts.facts, None, "facts below zero are not kept");
    let reads = fake.reads;
    publish(&mut fake, &[mapping(8082)]).unwrap();
    assert!(
        fake.reads > reads,
        "a publish without facts reads the table"
    );
}

#[test]
fn facts_go_through_the_record_and_unknown_maps_drop_them() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(8080), on_loopback(8081)]).unwrap();
    let counts = fake.counts.clone().unwrap();
    let recorded = counts.to_record();
    assert_eq!(Counts::from_record(&recorded), Some(counts.clone()));
    // Helpers are named as records of earlier versions name them: the set, then the
    // key in lower-case hex, two digits a byte.
    for (set, key) in counts.helpers.keys() {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            recorded.helpers.contains_key(&format!("{set}/{hex}")),
            "{set}/{hex} in {:?}",
            recorded.helpers.keys()
        );
    }
    assert!(!counts.helpers.is_empty());
    let mut foreign = recorded.clone();
    if let Some(table) = foreign.table.as_mut() {
        table.sizes.insert("a map of a newer nsport".into(), 1);
    }
    let read = Counts::from_record(&foreign).unwrap();
    assert_eq!(read.helpers, counts.helpers);
    assert_eq!(read.facts, None);
    // A record of an older nsport has no facts at all, and reads as such.
    let old: crate::host::state::RecordedCounts =
        serde_json::from_str(r#"{"genid": 3, "helpers": {}}"#).unwrap();
    assert_eq!(Counts::from_record(&old).unwrap().facts, None);
}

#[test]
fn the_facts_of_mappings_count_each_limited_span_once() {
    let listed = |port| Mapping {
        allow_from: vec!["192.0.2.0/24".parse().unwrap()],
        ..mapping(port)
    };
    let v6 = Mapping {
        to_addr: "2001:db8::2".parse().unwrap(),
        ..listed(8080)
    };
    let facts = TableFacts::of(&[listed(8080), v6, listed(8081), mapping(8082)]);
    assert_eq!(facts.sizes.get(SET_LIMITED), Some(&2));
    assert_eq!(facts.sizes.get(SET_ANY4), Some(&3));
    assert!(facts.may_hold(SET_LIMITED) && !facts.may_hold(SET_ADDR4));
}

#[test]
fn a_second_publish_to_a_target_sends_only_its_mapping() {
    let mut fake = Fake::default();
    let first = publish(&mut fake, &[mapping(8080)]).unwrap();
    assert!(
        first.plan.add.len() > 1,
        "the first brings the target's helpers"
    );
    let helpers = fake.elements_of(crate::ruleset::SET_HAIRPIN4);
    let second = publish(&mut fake, &[mapping(8081)]).unwrap();
    assert_eq!(second.plan.add, vec![Element::mapping(&mapping(8081))]);
    assert_eq!(fake.elements_of(crate::ruleset::SET_HAIRPIN4), helpers);
    // Both are counted: removing one keeps the helpers, removing both takes them.
    remove(&mut fake, &mapping(8080));
    assert_eq!(fake.elements_of(crate::ruleset::SET_HAIRPIN4), helpers);
    remove(&mut fake, &mapping(8081));
    assert!(fake.elements_of(crate::ruleset::SET_HAIRPIN4).is_empty());
}

#[test]
fn the_generation_after_a_commit_is_told_only_when_the_batch_must_have_moved_it() {
    use super::transaction::{Moved, after};
    use crate::netlink::nftables::{Change, next_generation};
    use crate::ruleset::Element;
    assert_eq!(next_generation(7), 8);
    assert_eq!(next_generation(u32::MAX), 1, "the kernel skips 0");
    let element = Element::mapping(&mapping(8080));
    assert_eq!(Moved::of(&[Change::CreateElement(&element)]), Moved::ByOne);
    assert_eq!(Moved::of(&[Change::DelElement(&element)]), Moved::ByOne);
    assert_eq!(Moved::of(&[Change::AddElement(&element)]), Moved::Unknown);
    let mut fake = Fake {
        generation: 7,
        ..Fake::default()
    };
    assert_eq!(after(&mut fake, 7, Moved::ByOne), Some(8));
    assert_eq!(after(&mut fake, 7, Moved::Not), Some(7));
    assert_eq!(fake.generation_reads, 0);
    // An add that may have changed nothing is read back: at the read's generation it
    // changed nothing, one on it is the batch's, anything else another writer's.
    assert_eq!(after(&mut fake, 7, Moved::Unknown), Some(7));
    fake.generation = 8;
    assert_eq!(after(&mut fake, 7, Moved::Unknown), Some(8));
    fake.generation = 9;
    assert_eq!(after(&mut fake, 7, Moved::Unknown), None);
}

/// A change that reads everything (`apply`, a publish that falls back to it) and only adds
/// creates what it adds exclusively, every element being absent at the generation its
/// batch is checked against: the generation the commit leaves is known without asking,
/// so another writer's commit just after it cannot pass for nsport's own.
#[test]
fn an_update_that_only_adds_follows_its_commit_without_reading_it_back() {
    let mut fake = Fake::default();
    publish(&mut fake, &[mapping(8080)]).unwrap();
    let reads = fake.generation_reads;
    let before = fake.generation;
    let mut counts = fake.counts.take();
    transaction::update(&mut fake, &mut counts, false, |current| {
        Ok(current.iter().cloned().chain([mapping(8081)]).collect())
    })
    .unwrap();
    fake.counts = counts;
    assert_eq!(fake.elements_of(SET_ANY4).len(), 2);
    assert_ne!(fake.generation, before, "the update committed");
    assert_eq!(facts(&fake).sizes.get(SET_ANY4), Some(&2));
    // Once, for the read the batch is checked against; none after the commit.
    assert_eq!(fake.generation_reads, reads + 1);
}
