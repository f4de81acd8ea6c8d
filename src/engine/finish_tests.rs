//! Finish's own batches (the `closed` elements around turning forwarding on and off), on
//! the fake kernel: they keep the counts current when they provably are nsport's, so the
//! next change reads neither every mapping nor the chains; and after another writer, the
//! next change reads everything.

use super::counts::Counts;
use super::fake::Fake;
use super::finish::{commit_own, follow};
use super::table::MAPPING_SETS;
use super::transaction;
use crate::netlink::nftables::Change;
use crate::ruleset::{Element, Mapping, SET_CLOSED};

fn mapping(host_port: u16) -> Mapping {
    Mapping {
        host_port,
        to_addr: "10.0.0.2".parse().unwrap(),
        to_port: 3000,
        netns: Some("c".into()),
        netns_inode: Some(7),
        ..Mapping::example()
    }
}

/// Commits a batch of finish's as finish does, and moves the counts on as it does.
fn finish_batch(fake: &mut Fake, changes: &[Change<'_>]) {
    let mut counts = fake.counts.take();
    let own = counts.as_ref().map(|counts| counts.genid);
    let after = commit_own(fake, changes, own).expect("finish's batch commits");
    follow(&mut counts, after);
    fake.counts = counts;
}

/// Publishes as the library does, then closes IPv4 as finish does before forwarding goes on.
fn publish_turning_forwarding_on(fake: &mut Fake, host_port: u16) {
    let mut counts = fake.counts.take();
    transaction::create(fake, &mut counts, &[mapping(host_port)], false, false).unwrap();
    fake.counts = counts;
    let closed = Element::closed(false);
    finish_batch(fake, &[Change::CreateElement(&closed)]);
}

/// Removes by key as the library does, then opens IPv4 as finish does after forwarding
/// went back off.
fn remove_turning_forwarding_off(fake: &mut Fake, host_port: u16) {
    let gone = mapping(host_port);
    let keys = vec![(gone.set(), Element::mapping(&gone).key)];
    let mut counts = fake.counts.take();
    transaction::remove(fake, &mut counts, &keys, false, |found| {
        Ok(found.iter().flatten().cloned().collect())
    })
    .unwrap();
    fake.counts = counts;
    let closed = Element::closed(false);
    finish_batch(fake, &[Change::DelElement(&closed)]);
}

fn forbid_reading_every_mapping(fake: &mut Fake) {
    for set in MAPPING_SETS {
        fake.forbid_dumps_of(set);
    }
}

#[test]
fn a_round_that_turns_forwarding_on_and_off_leaves_the_next_change_nothing_to_read() {
    let mut fake = Fake::default();
    publish_turning_forwarding_on(&mut fake, 8080);
    assert_eq!(
        fake.counts.as_ref().map(|c| c.genid),
        Some(fake.generation),
        "the counts follow finish's own batch"
    );
    forbid_reading_every_mapping(&mut fake);
    let rules_read = fake.rule_dumps;
    remove_turning_forwarding_off(&mut fake, 8080);
    assert_eq!(
        fake.rule_dumps, rules_read,
        "the removal checked the chains again"
    );
    assert_eq!(fake.counts.as_ref().map(|c| c.genid), Some(fake.generation));
    // A publish reads the maps a new mapping could overlap, but not the chains.
    fake.forbidden_dumps.clear();
    publish_turning_forwarding_on(&mut fake, 8080);
    assert_eq!(
        fake.rule_dumps, rules_read,
        "the publish checked the chains again"
    );
    assert!(fake.elements_of(SET_CLOSED).len() <= 1);
}

#[test]
fn another_writer_before_finishs_batch_makes_the_next_change_read_everything() {
    let mut fake = Fake::default();
    let mut counts = None;
    transaction::create(&mut fake, &mut counts, &[mapping(8080)], false, false).unwrap();
    fake.counts = counts;
    // An `nft` run gets in between the change's commit and finish's batch.
    let mut meddled = false;
    fake.between_read_and_commit = Some(Box::new(move |fake: &mut Fake| {
        if !std::mem::replace(&mut meddled, true) {
            fake.generation += 1;
        }
    }));
    let closed = Element::closed(false);
    finish_batch(&mut fake, &[Change::CreateElement(&closed)]);
    fake.between_read_and_commit = None;
    assert!(
        fake.elements_of(SET_CLOSED).contains_key(&closed.key),
        "closed anyway"
    );
    assert!(Counts::valid_at(&fake.counts, fake.generation).is_none());
    the_removal_reads_the_chains(&mut fake, 8080);
}

#[test]
fn another_writer_after_finishs_batch_makes_the_next_change_read_everything() {
    let mut fake = Fake::default();
    publish_turning_forwarding_on(&mut fake, 8080);
    another_writer_then_the_removal_reads_the_chains(&mut fake, 8080);
}

/// Another writer commits; the removal of `host_port` after it must not trust the counts.
fn another_writer_then_the_removal_reads_the_chains(fake: &mut Fake, host_port: u16) {
    fake.commit_as_other(&[]);
    the_removal_reads_the_chains(fake, host_port);
}

/// The removal of `host_port` reads the chains: it did not trust the counts.
fn the_removal_reads_the_chains(fake: &mut Fake, host_port: u16) {
    let rules_read = fake.rule_dumps;
    remove_turning_forwarding_off(fake, host_port);
    assert!(
        fake.rule_dumps > rules_read,
        "the chains were trusted after another writer"
    );
}

#[test]
fn a_batch_of_finishs_that_changes_nothing_vouches_for_no_generation() {
    // Forwarding was turned off by hand while the family stayed closed: the next publish
    // closes it again, which commits nothing and leaves the generation as it was.
    // Vouching for the generation one on would vouch for the next writer's.
    let mut fake = Fake::default();
    publish_turning_forwarding_on(&mut fake, 8080);
    let closed_before = fake.elements_of(SET_CLOSED).len();
    publish_turning_forwarding_on(&mut fake, 8081);
    assert_eq!(fake.elements_of(SET_CLOSED).len(), closed_before);
    another_writer_then_the_removal_reads_the_chains(&mut fake, 8080);
}

#[test]
fn closing_a_closed_family_with_another_commits_the_other_and_follows_it() {
    let mut fake = Fake::default();
    publish_turning_forwarding_on(&mut fake, 8080);
    let (v4, v6) = (Element::closed(false), Element::closed(true));
    let reads = fake.generation_reads;
    finish_batch(
        &mut fake,
        &[Change::CreateElement(&v4), Change::CreateElement(&v6)],
    );
    assert!(fake.elements_of(SET_CLOSED).contains_key(&v6.key));
    assert_eq!(
        fake.counts.as_ref().map(|c| c.genid),
        Some(fake.generation),
        "the counts follow the batch that closed IPv6 alone"
    );
    assert_eq!(fake.generation_reads, reads, "nothing was read back");
}

#[test]
fn a_kernel_that_names_only_the_message_still_gets_the_family_that_is_open_closed() {
    // IPv6 was closed by an earlier publish and its forwarding turned off by hand since;
    // a publish of both families closes both before turning forwarding on. The refusal
    // of IPv6's element names the message, whose first element is IPv4's.
    let mut fake = Fake {
        refusals_name_the_message: true,
        ..Fake::default()
    };
    publish_turning_forwarding_on(&mut fake, 8080);
    let (v4, v6) = (Element::closed(false), Element::closed(true));
    fake.commit_as_other(&[Change::CreateElement(&v6)]);
    fake.commit_as_other(&[Change::DelElement(&v4)]);
    let own = Some(fake.generation);
    let after = commit_own(
        &mut fake,
        &[Change::CreateElement(&v4), Change::CreateElement(&v6)],
        own,
    )
    .unwrap();
    assert!(
        fake.elements_of(SET_CLOSED).contains_key(&v4.key),
        "IPv4 is not closed, and finish turns its forwarding on next"
    );
    assert_eq!(after, Some(fake.generation));
}
