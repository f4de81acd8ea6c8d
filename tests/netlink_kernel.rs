//! Kernel checks of the nftables layer (`nsport::netlink::nftables`), as root, each in a
//! network namespace of its own, with the real `nft` as an independent reader and writer:
//! the test's thread unshares a fresh one, which disappears with the thread, so nothing
//! here can touch the host's ruleset. Without root they are skipped, except under CI.

use std::process::Command;

use nsport::netlink::NetlinkError;
use nsport::netlink::nftables::*;
use nsport::ruleset::{self, ChainDef, Element, RuleDef, SetDef, TABLE};

mod fresh_netns;
use fresh_netns::in_fresh_netns;

/// Runs nft in the calling thread's namespace, which its child process inherits.
fn nft(args: &str) {
    let status = Command::new("nft")
        .args(args.split(' '))
        .status()
        .expect("run nft");
    assert!(status.success(), "nft {args}");
}

fn nft_output(args: &str) -> String {
    let output = Command::new("nft")
        .args(args.split(' '))
        .output()
        .expect("run nft");
    assert!(output.status.success(), "nft {args}");
    String::from_utf8(output.stdout).unwrap()
}

/// The whole table as nsport writes it on a first publish.
fn commit_table(chains: &[ChainDef], sets: &[SetDef], rules: &[RuleDef]) {
    let mut changes = vec![Change::AddTable { exclusive: true }];
    changes.extend(chains.iter().map(Change::AddChain));
    changes.extend(sets.iter().map(Change::AddSet));
    changes.extend(rules.iter().map(Change::AddRule));
    commit(&changes, None).expect("the table commits");
}

/// An element of `set` whose key and data are `n` in every byte's worth of its length.
fn element(set: &SetDef, n: u32, comment: Option<String>) -> Element {
    let bytes = |len: u32| {
        let mut bytes = n.to_be_bytes().repeat(len.div_ceil(4) as usize);
        bytes.truncate(len as usize);
        bytes
    };
    Element {
        set: set.name,
        key: bytes(set.key_len),
        key_end: None,
        data: set.data.map(|(_, len)| bytes(len)),
        comment,
    }
}

fn any4() -> SetDef {
    ruleset::sets()
        .into_iter()
        .find(|set| set.is_map())
        .unwrap()
}

#[test]
fn a_stale_generation_applies_nothing_and_the_current_one_applies() {
    in_fresh_netns(|| {
        let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
        let before = generation().unwrap();
        commit_table(&chains, &sets, &rules);
        let current = generation().unwrap();
        assert_ne!(before, current, "a commit moves the generation on");

        let map = any4();
        let first = element(&map, 1, Some("first".into()));
        let second = element(&map, 2, None);
        let changes = [Change::AddElement(&first), Change::AddElement(&second)];
        let stale = commit(&changes, Some(before)).unwrap_err();
        assert!(matches!(stale, NetlinkError::Stale), "{stale:?}");
        assert_eq!(stale.errno(), Some(libc::ERESTART));
        assert!(
            dump_elements(map.name).unwrap().is_empty(),
            "nothing applied"
        );
        assert_eq!(
            generation().unwrap(),
            current,
            "a refused batch changes nothing"
        );

        commit(&changes, Some(current)).unwrap();
        let dumped = dump_elements(map.name).unwrap();
        assert_eq!(dumped.len(), 2);
        assert!(generation().unwrap() != current);

        // Something else changing any table makes the generation stale too.
        let current = generation().unwrap();
        nft("add table ip other");
        let third = element(&map, 3, None);
        assert!(matches!(
            commit(&[Change::AddElement(&third)], Some(current)),
            Err(NetlinkError::Stale)
        ));
        assert_eq!(get_element(map.name, &third.key).unwrap(), None);
    });
}

#[test]
fn rules_read_back_equal_what_nsport_writes_and_edits_do_not() {
    in_fresh_netns(|| {
        let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
        commit_table(&chains, &sets, &rules);
        let dumped = dump_rules(TABLE).unwrap();
        assert_eq!(dumped.len(), rules.len());
        // The kernel dumps chain by chain, each in rule order.
        for chain in &chains {
            let written: Vec<String> = rules
                .iter()
                .filter(|rule| rule.chain == chain.name)
                .map(rule_exprs_text)
                .collect();
            let read: Vec<&str> = dumped
                .iter()
                .filter(|rule| rule.chain == chain.name)
                .map(|rule| rule.exprs.as_str())
                .collect();
            assert_eq!(read, written, "chain {}", chain.name);
        }
        assert!(dumped.iter().all(|rule| rule.handle > 0));
        // Another table's rules and chains are not this table's; a missing one has none.
        nft("add table inet other");
        nft("add chain inet other c");
        nft("add rule inet other c accept");
        assert_eq!(dump_rules(TABLE).unwrap().len(), rules.len());
        assert!(dump_rules("missing").unwrap().is_empty());
        assert!(dump_chains("missing").unwrap().is_empty());
        assert_eq!(dump_chains("other").unwrap(), ["c"]);
        let names: Vec<String> = chains.iter().map(|chain| chain.name.to_string()).collect();
        let mut read = dump_chains(TABLE).unwrap();
        read.sort();
        let mut expected = names.clone();
        expected.sort();
        assert_eq!(read, expected);

        let guard: Vec<String> = rules
            .iter()
            .filter(|rule| rule.chain == ruleset::CHAIN_GUARD)
            .map(rule_exprs_text)
            .collect();
        let guard_rules = || -> Vec<RuleDump> {
            dump_rules(TABLE)
                .unwrap()
                .into_iter()
                .filter(|rule| rule.chain == ruleset::CHAIN_GUARD)
                .collect()
        };
        // A rule added by hand is one that no rule of nsport's equals.
        nft("add rule inet nsport guard accept");
        let edited = guard_rules();
        assert_eq!(edited.len(), guard.len() + 1);
        assert!(!guard.contains(&edited.last().unwrap().exprs));

        // A rule replaced by a different one no longer compares equal.
        let handle = edited[0].handle;
        nft(&format!(
            "replace rule inet nsport guard handle {handle} iifname != \"lo\" ip daddr 127.0.0.0/16 drop"
        ));
        let replaced = guard_rules();
        assert_ne!(replaced[0].exprs, guard[0]);
        assert_eq!(replaced[0].handle, handle);
    });
}

#[test]
fn create_is_exclusive_and_add_is_not() {
    in_fresh_netns(|| {
        let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
        commit_table(&chains, &sets, &rules);
        let map = any4();
        let first = element(&map, 7, Some("netns=a".into()));
        commit(&[Change::CreateElement(&first)], None).unwrap();
        // The identical element again: accepted by an add, refused by a create.
        commit(&[Change::AddElement(&first)], None).unwrap();
        let other = element(&map, 8, None);
        let error = commit(
            &[Change::CreateElement(&other), Change::CreateElement(&first)],
            None,
        )
        .unwrap_err();
        assert_eq!(error.errno(), Some(libc::EEXIST));
        // Both share a message; the kernel names the element it refused.
        assert!(
            matches!(error, NetlinkError::Kernel { index: Some(1), .. }),
            "{error:?}"
        );
        assert_eq!(get_element(map.name, &other.key).unwrap(), None);

        // Deep inside a batch of messages of hundreds of elements, the index is still the
        // refused element's own.
        let many: Vec<Element> = (1000..3000)
            .map(|n| element(&map, n, Some(format!("netns={n}"))))
            .collect();
        let mut changes: Vec<Change> = many.iter().map(Change::CreateElement).collect();
        changes.insert(1234, Change::CreateElement(&first));
        let error = commit(&changes, None).unwrap_err();
        assert!(
            matches!(
                error,
                NetlinkError::Kernel {
                    index: Some(1234),
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(dump_elements(map.name).unwrap().len(), 1, "nothing applied");
    });
}

#[test]
fn chains_flush_and_delete() {
    in_fresh_netns(|| {
        let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
        commit_table(&chains, &sets, &rules);
        let guard = chains
            .iter()
            .find(|chain| chain.name == ruleset::CHAIN_GUARD)
            .unwrap();
        commit(&[Change::FlushChain(guard)], None).unwrap();
        let left = dump_rules(TABLE).unwrap();
        assert!(left.iter().all(|rule| rule.chain != guard.name));
        assert!(!left.is_empty(), "only the guard chain was flushed");
        commit(&[Change::DelChain(guard)], None).unwrap();
        assert!(!chain_exists(guard.name).unwrap());
        assert!(
            !dump_chains(TABLE)
                .unwrap()
                .iter()
                .any(|name| name == guard.name)
        );
        // Deleting a chain that still holds rules is refused, and names the change.
        let publish = chains.iter().find(|chain| chain.base.is_none()).unwrap();
        let error = commit(
            &[Change::FlushChain(guard), Change::DelChain(publish)],
            None,
        );
        assert!(error.is_err());
    });
}

#[test]
fn many_elements_with_the_longest_comments_commit_whole() {
    in_fresh_netns(|| {
        let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
        commit_table(&chains, &sets, &rules);
        let map = any4();
        // The case that once aborted with `free(): invalid size`: long comments, many
        // elements; now every message stays inside the byte budget.
        let elements: Vec<Element> = (0..5000)
            .map(|n| element(&map, n, Some(format!("{n:0>width$}", width = COMMENT_MAX))))
            .collect();
        let changes: Vec<Change> = elements.iter().map(Change::AddElement).collect();
        commit(&changes, None).unwrap();
        let dumped = dump_elements(map.name).unwrap();
        assert_eq!(dumped.len(), elements.len());
        for dump in &dumped {
            let n = u32::from_be_bytes(dump.key[..4].try_into().unwrap());
            assert_eq!(dump.comment.as_deref().map(str::len), Some(COMMENT_MAX));
            assert_eq!(dump.comment, elements[n as usize].comment);
        }
        // nft reads the longest comment back too.
        assert!(nft_output("list table inet nsport").contains(&"0".repeat(COMMENT_MAX - 4)));
        // One byte more is refused before anything is sent.
        let long = element(&map, 9999, Some("x".repeat(COMMENT_MAX + 1)));
        assert!(matches!(
            commit(&[Change::AddElement(&long)], None),
            Err(NetlinkError::TooLong { .. })
        ));
    });
}

#[test]
fn the_longest_comment_reads_back_from_every_set() {
    in_fresh_netns(|| {
        let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
        commit_table(&chains, &sets, &rules);
        for set in &sets {
            let element = element(set, 1, Some("y".repeat(COMMENT_MAX)));
            commit(&[Change::AddElement(&element)], None).unwrap();
            let back = get_element(set.name, &element.key).unwrap().unwrap();
            assert_eq!(back.comment, element.comment, "set {}", set.name);
        }
    });
}

/// The key of a TCP port in `range4`: `th dport . meta l4proto`.
fn range_key(port: u16) -> Vec<u8> {
    range_key_of(nsport::Proto::Tcp, port)
}

fn range_key_of(proto: nsport::Proto, port: u16) -> Vec<u8> {
    ruleset::host_key_in(ruleset::SET_RANGE4, None, proto, None, port)
}

/// An element of `range4`: `start-end . tcp : 10.0.0.<target>`.
fn range_element(start: u16, end: u16, target: u8) -> Element {
    let key = range_key;
    Element {
        set: ruleset::SET_RANGE4,
        key: key(start),
        key_end: Some(key(end)),
        data: Some(vec![10, 0, 0, target]),
        comment: None,
    }
}

/// The errno and the index of the refused change, of a batch the kernel refused.
fn refusal(changes: &[Change<'_>]) -> Option<(i32, Option<usize>)> {
    match commit(changes, None) {
        Ok(()) => None,
        Err(NetlinkError::Kernel { index, error }) => Some((error.raw_os_error()?, index)),
        Err(other) => panic!("{other:?}"),
    }
}

/// What the engine's Fake models of the kernel's interval maps (nftables' pipapo sets),
/// checked against the kernel; `engine::tests::the_fake_keeps_interval_maps_as_the_kernel_does`
/// runs the same steps against the Fake.
#[test]
fn interval_maps_refuse_overlaps_and_find_the_interval_holding_a_key() {
    in_fresh_netns(|| {
        let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
        commit_table(&chains, &sets, &rules);
        let range = range_element(20000, 29999, 2);
        let key = range_key;
        assert_eq!(refusal(&[Change::AddElement(&range)]), None);
        // The protocol is a field of its own: no UDP port is inside a TCP range.
        let udp = range_key_of(nsport::Proto::Udp, 20005);
        assert_eq!(get_element(ruleset::SET_RANGE4, &udp).unwrap(), None);
        // The same interval with the same data again: accepted by an add only.
        assert_eq!(refusal(&[Change::AddElement(&range)]), None);
        let eexist = Some((libc::EEXIST, Some(0)));
        assert_eq!(refusal(&[Change::CreateElement(&range)]), eexist);
        // One that encloses it whole is taken: only an interval that starts or ends inside
        // another is refused.
        let around = range_element(19000, 30005, 4);
        assert_eq!(refusal(&[Change::CreateElement(&around)]), None);
        assert_eq!(refusal(&[Change::DelElement(&around)]), None);
        // Other data, an interval inside, one across the end, a single key inside: EEXIST.
        for clash in [
            range_element(20000, 29999, 3),
            range_element(20005, 20010, 2),
            range_element(29990, 30010, 2),
            range_element(20005, 20005, 2),
            range_element(19000, 20000, 2),
        ] {
            assert_eq!(refusal(&[Change::AddElement(&clash)]), eexist, "{clash:?}");
        }
        // Adjacent intervals do not overlap.
        let next = range_element(30000, 30010, 3);
        assert_eq!(refusal(&[Change::AddElement(&next)]), None);
        // A lookup of one key answers with the interval holding it.
        let held = get_element(ruleset::SET_RANGE4, &key(20005))
            .unwrap()
            .unwrap();
        assert_eq!((held.key, held.key_end), (key(20000), key(29999)));
        assert_eq!(held.data, [10, 0, 0, 2]);
        let held = get_element(ruleset::SET_RANGE4, &key(30010))
            .unwrap()
            .unwrap();
        assert_eq!(held.key, key(30000));
        assert_eq!(get_element(ruleset::SET_RANGE4, &key(40000)).unwrap(), None);
        // A probe (an interval of one port created and deleted in one batch) is refused at
        // the creation where a range holds the port, and leaves nothing where none does.
        let probe = range_element(20005, 20005, 9);
        assert_eq!(
            refusal(&[Change::CreateElement(&probe), Change::DelElement(&probe)]),
            eexist
        );
        let free = range_element(40000, 40000, 9);
        let generation_before = generation().unwrap();
        assert_eq!(
            refusal(&[Change::CreateElement(&free), Change::DelElement(&free)]),
            None
        );
        assert_ne!(generation().unwrap(), generation_before);
        assert_eq!(get_element(ruleset::SET_RANGE4, &key(40000)).unwrap(), None);
        assert_eq!(dump_elements(ruleset::SET_RANGE4).unwrap().len(), 2);
        // Deleting the exact interval; deleting it again is ENOENT.
        assert_eq!(refusal(&[Change::DelElement(&range)]), None);
        assert_eq!(get_element(ruleset::SET_RANGE4, &key(20005)).unwrap(), None);
        assert_eq!(
            refusal(&[Change::DelElement(&range)]),
            Some((libc::ENOENT, Some(0)))
        );
        // A hash map and an interval map are apart: a single port in any4 beside a range
        // holding it in range4 is no clash to the kernel (hence the engine's probes).
        let single = Element {
            set: ruleset::SET_ANY4,
            key: ruleset::host_key(nsport::Proto::Tcp, None, 30005),
            key_end: None,
            data: Some(vec![10, 0, 0, 4, 0, 80, 0, 0]),
            comment: None,
        };
        assert_eq!(refusal(&[Change::AddElement(&single)]), None);
        // nft reads the interval back as written.
        let listed = nft_output("list map inet nsport range4");
        assert!(
            listed.contains("30000-30010 . tcp counter packets 0 bytes 0 : 10.0.0.3"),
            "{listed}"
        );
    });
}

/// Each thread keeps its netlink sockets between requests; a thread that moves to another
/// network namespace must be answered by that namespace, not by the one its sockets were
/// opened in: netfilter (the table), rtnetlink (the links) and sock_diag (the listeners).
#[test]
fn a_thread_that_changes_namespace_is_answered_by_the_new_one() {
    in_fresh_netns(|| {
        commit_table(&[], &[], &[]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        nft("add table ip other");
        assert!(table_exists().unwrap());
        let listening = |port| {
            nsport::netlink::sock_diag::bound_sockets(nsport::Proto::Tcp)
                .unwrap()
                .iter()
                .any(|socket| socket.port == port)
        };
        assert!(listening(port));
        nsport::netlink::rtnetlink::links().unwrap();
        // The same thread, a new namespace: no table, only lo, no listener.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare again");
        assert!(
            !table_exists().unwrap(),
            "the table of the namespace left behind"
        );
        assert!(!listening(port), "a listener of the namespace left behind");
        let links = nsport::netlink::rtnetlink::links().unwrap();
        let names: Vec<&str> = links.iter().map(|link| link.name.as_str()).collect();
        assert_eq!(names, ["lo"]);
        drop(listener);
    });
}

/// A library call pins its thread for its length only: a thread that moves between two
/// calls is answered by its new namespace in the second.
#[test]
fn a_thread_that_moves_between_library_calls_is_answered_by_the_new_namespace() {
    in_fresh_netns(|| {
        nsport::netlink::pinned_for(|| {
            commit_table(&[], &[], &[]);
            assert!(table_exists().unwrap());
        });
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare again");
        let seen = std::panic::catch_unwind(|| nsport::netlink::pinned_for(table_exists));
        assert!(
            matches!(seen, Ok(Ok(false))),
            "the second call was answered by the namespace left behind, or not at all"
        );
    });
}

/// A thread pinned to its namespace (as nsport's main thread is) looks it up once and is
/// answered by it; one that moves after all is caught in debug builds, which the tests use,
/// rather than answered by the namespace its sockets were opened in. A release build takes
/// the promise on trust, as documented, so the check is only there.
#[cfg(debug_assertions)]
#[test]
fn a_pinned_thread_that_moves_is_caught() {
    in_fresh_netns(|| {
        nsport::netlink::pin_thread_namespace();
        commit_table(&[], &[], &[]);
        assert!(table_exists().unwrap());
        nsport::netlink::rtnetlink::links().unwrap();
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare again");
        let moved = std::panic::catch_unwind(|| table_exists().unwrap_or(false));
        let message = moved.expect_err("a pinned thread moved unnoticed");
        let message = message
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        assert!(message.contains("moved to another"), "{message}");
    });
}
