//! Source allow-lists in the engine: one list per host port, shared by every mapping of
//! the port, and the elements that carry them from one list to another in one batch.
//!
//! The kernel keeps a list as elements of interval sets keyed by the host port (`limited`,
//! `allow4`, `allow6`; see `ruleset::rules`), not in the mappings' elements: a packet pays
//! two lookups whatever the number of ports and prefixes, and a list of any length fits.
//! So a list cannot differ between two mappings of one port, and every change checks that
//! it does not.

use std::collections::{HashMap, HashSet};

use crate::error::Error;
use crate::model::list_label;
use crate::ruleset::{Element, Mapping, allow_elements_for};
use crate::spec::Proto;

/// Refuses `desired` when two mappings of one host port have different lists, naming the
/// mapping that holds the port's list already (one of `current`) and the one that differs.
pub fn check_shared_lists(current: &[Mapping], desired: &[Mapping]) -> Result<(), Error> {
    let existing: HashSet<&Mapping> = current.iter().collect();
    let mut first: HashMap<(Proto, u16, u16), &Mapping> = HashMap::new();
    for mapping in desired {
        let port = mapping.port_span();
        let Some(other) = first.get(&port) else {
            first.insert(port, mapping);
            continue;
        };
        if other.allow_from == mapping.allow_from {
            continue;
        }
        // The holder is the one already in the table, when one of the two is.
        let (holder, newcomer) = if existing.contains(mapping) && !existing.contains(*other) {
            (mapping, *other)
        } else {
            (*other, mapping)
        };
        return Err(Error::AllowListDiffers {
            host: newcomer.host_label(),
            wanted: describe(newcomer),
            holder: format!("{} to {}", holder.host_label(), holder.target_label()),
            held: describe(holder),
        });
    }
    // A limited span that overlaps another span (a range and a port inside it) would
    // give the kernel overlapping intervals: refused, naming the holder.
    let mut spans: Vec<(&(Proto, u16, u16), &&Mapping)> = first.iter().collect();
    spans.sort_by_key(|(span, _)| **span);
    for pair in spans.windows(2) {
        let ((a, held), (b, newcomer)) = (pair[0], pair[1]);
        let overlap = a.0 == b.0 && b.1 <= a.2;
        if overlap && (!held.allow_from.is_empty() || !newcomer.allow_from.is_empty()) {
            return Err(Error::AllowListDiffers {
                host: newcomer.host_label(),
                wanted: describe(newcomer),
                holder: format!("{} to {}", held.host_label(), held.target_label()),
                held: describe(held),
            });
        }
    }
    Ok(())
}

fn describe(mapping: &Mapping) -> String {
    match mapping.allow_from.is_empty() {
        true => "every source".to_string(),
        false => format!("only {}", list_label(&mapping.allow_from)),
    }
}

/// The allow-list elements to delete and to add to go from `current` (as read) to what
/// `desired` needs: a list that changes loses its old prefixes and gains its new ones in
/// the same batch, and a port whose last mapping goes loses its list.
pub fn allow_diff(current: &[Element], desired: &[Mapping]) -> (Vec<Element>, Vec<Element>) {
    let needed = allow_elements_for(desired);
    let needed_set: HashSet<&Element> = needed.iter().collect();
    let current_set: HashSet<&Element> = current.iter().collect();
    let delete = current
        .iter()
        .filter(|e| !needed_set.contains(e))
        .cloned()
        .collect();
    let add = needed
        .iter()
        .filter(|e| !current_set.contains(e))
        .cloned()
        .collect();
    (delete, add)
}

/// A mapping as its map element records it: its list lives elsewhere, so a mapping whose
/// list alone changes keeps its element (and its counters).
pub fn without_list(mapping: &Mapping) -> Mapping {
    Mapping {
        allow_from: Vec::new(),
        ..mapping.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn mapping(host: Option<&str>, list: &[&str]) -> Mapping {
        Mapping {
            host_addr: host.map(|h| h.parse::<IpAddr>().unwrap()),
            host_port: 8080,
            to_addr: "172.18.0.2".parse().unwrap(),
            to_port: 80,
            netns: Some("ns1".into()),
            allow_from: crate::model::parse_list(list).unwrap(),
            ..Mapping::example()
        }
    }

    #[test]
    fn one_list_per_port_and_the_holder_is_named() {
        let held = mapping(Some("192.0.2.1"), &["10.0.0.0/8"]);
        let same = mapping(None, &["10.0.0.0/8"]);
        let open = mapping(None, &[]);
        assert!(check_shared_lists(std::slice::from_ref(&held), &[held.clone(), same]).is_ok());
        let error = check_shared_lists(std::slice::from_ref(&held), &[held.clone(), open.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("8080/tcp would allow every source"),
            "{error}"
        );
        assert!(
            error.contains("192.0.2.1:8080/tcp to 172.18.0.2:80"),
            "{error}"
        );
        assert!(error.contains("only 10.0.0.0/8"), "{error}");
        // Another port, another list.
        let other_port = Mapping {
            host_port: 8081,
            ..open
        };
        assert!(check_shared_lists(&[], &[held, other_port]).is_ok());
    }

    /// The engine on the fake kernel: publish, switch and remove a list.
    mod on_the_fake_kernel {
        use super::*;
        use crate::engine::counts::Counts;
        use crate::engine::fake::Fake;
        use crate::engine::transaction;
        use crate::ruleset::{SET_ADDR4, SET_ALLOW4, SET_ANY4, SET_LIMITED, host_key};

        fn run<T>(fake: &mut Fake, change: impl FnOnce(&mut Fake, &mut Option<Counts>) -> T) -> T {
            let mut counts = fake.counts.take();
            let result = change(fake, &mut counts);
            fake.counts = counts;
            result
        }

        fn publish(fake: &mut Fake, mappings: &[Mapping]) -> Result<(), Error> {
            run(fake, |fake, counts| {
                transaction::create(fake, counts, mappings, false, false).map(|_| ())
            })
        }

        fn listed(fake: &mut Fake) -> Vec<Mapping> {
            crate::engine::table::read(fake, true)
                .unwrap()
                .mappings
                .into_iter()
                .map(|(m, _)| m)
                .collect()
        }

        #[test]
        fn a_list_is_published_switched_and_removed_with_its_port() {
            let mut fake = Fake::default();
            let one = |list: &[&str]| {
                let wildcard = mapping(None, list);
                let addr = mapping(Some("192.0.2.1"), list);
                [wildcard, addr]
            };
            publish(&mut fake, &one(&["10.0.0.0/8", "192.0.2.7"])[..1]).unwrap();
            // The address overlaps the wildcard (Docker's rule): forced, as `add --force` does.
            run(&mut fake, |fake, counts| {
                transaction::create(
                    fake,
                    counts,
                    &one(&["10.0.0.0/8", "192.0.2.7"])[1..],
                    true,
                    false,
                )
            })
            .unwrap();
            assert_eq!(fake.elements_of(SET_LIMITED).len(), 1);
            assert_eq!(fake.elements_of(SET_ALLOW4).len(), 2);
            for listed in listed(&mut fake) {
                assert_eq!(list_label(&listed.allow_from), "10.0.0.0/8, 192.0.2.7");
            }
            // Switching the list: the mapping elements stay, one prefix goes, one comes.
            let before = fake.elements_of(SET_ANY4);
            let switched = one(&["10.0.0.0/8", "198.51.100.0/24"]);
            let committed = run(&mut fake, |fake, counts| {
                transaction::create(fake, counts, &switched, true, false)
            })
            .unwrap();
            let deleted: Vec<String> = committed
                .plan
                .delete
                .iter()
                .map(Element::nft_delete)
                .collect();
            assert_eq!(
                deleted,
                ["delete element inet nsport allow4 { 192.0.2.7 . 8080 . tcp }"]
            );
            assert_eq!(fake.elements_of(SET_ANY4), before);
            for listed in listed(&mut fake) {
                assert_eq!(
                    list_label(&listed.allow_from),
                    "10.0.0.0/8, 198.51.100.0/24"
                );
            }
            // Removing by key falls back to a full read for a limited port; the first
            // removal keeps the list, the last takes it along.
            for (set, host_addr, left) in [
                (SET_ANY4, None, 1),
                (SET_ADDR4, Some("192.0.2.1".parse().unwrap()), 0),
            ] {
                let keys = vec![(set, host_key(Proto::Tcp, host_addr, 8080))];
                run(&mut fake, |fake, counts| {
                    transaction::remove(fake, counts, &keys, false, |found| {
                        Ok(found.iter().flatten().cloned().collect())
                    })
                })
                .unwrap();
                assert_eq!(fake.elements_of(SET_LIMITED).len(), left);
                assert_eq!(fake.elements_of(SET_ALLOW4).len(), 2 * left);
            }
        }

        #[test]
        fn another_list_on_a_port_is_refused_and_changes_nothing() {
            let mut fake = Fake::default();
            publish(&mut fake, &[mapping(Some("192.0.2.1"), &["10.0.0.0/8"])]).unwrap();
            let before = fake.table.clone();
            for list in [&[][..], &["192.0.2.0/24"][..]] {
                let error = publish(&mut fake, &[mapping(Some("198.51.100.1"), list)]).unwrap_err();
                assert!(matches!(error, Error::AllowListDiffers { .. }), "{error}");
                assert_eq!(fake.table, before);
            }
        }
    }

    #[test]
    fn a_new_list_replaces_the_old_one_element_by_element() {
        let old = mapping(None, &["10.0.0.0/8", "192.0.2.7"]);
        let new = mapping(None, &["10.0.0.0/8", "2001:db8::/32"]);
        let current = allow_elements_for([&old]);
        let (delete, add) = allow_diff(&current, std::slice::from_ref(&new));
        assert_eq!(delete.len(), 1);
        assert!(delete[0].nft_delete().contains("192.0.2.7"), "{delete:?}");
        assert_eq!(add.len(), 1);
        assert!(add[0].nft_add().contains("2001:db8::/32"), "{add:?}");
        let (delete, add) = allow_diff(&current, &[]);
        assert_eq!((delete.len(), add.len()), (3, 0));
        assert_eq!(without_list(&new), mapping(None, &[]));
    }
}
