//! Property test of the batch encoder: random batches of element changes over the table's
//! sets, encoded to the bytes `commit` would send, then taken apart again — every netlink
//! and attribute length checked for consistency, every element decoded back with libnftnl
//! and compared with what went in. Over-long comments must be refused whole, never cut.
//!
//! Needs no root and no socket. `NSPORT_FUZZ_CASES` sets the number of cases (valgrind
//! runs few).

use proptest::prelude::*;

use super::batch::{Change, EncodedBatch, encode_batch};
use super::dump::{ElementDump, parse_elements};
use super::encode::{COMMENT_MAX, MESSAGE_BUDGET};
use crate::netlink::NetlinkError;
use crate::netlink::attributes::{self, NLA_F_NESTED};
use crate::netlink::socket::AlignedBuffer;
use crate::ruleset::{self, Element, SetDef, TABLE};

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

fn cases() -> u32 {
    std::env::var("NSPORT_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(48)
}

/// One element change, drawn: which set, which operation, a seed for its bytes, and the
/// length in bytes its comment should reach (none for no comment).
#[derive(Debug, Clone)]
struct Draw {
    set: usize,
    op: u8,
    seed: u64,
    comment: Option<usize>,
}

/// A run of changes of one operation on one set, as nsport makes them (a publish adds
/// many elements to one map): runs are what fill messages up to the byte budget.
fn run() -> impl Strategy<Value = Vec<Draw>> {
    (
        0..ruleset::sets().len(),
        0u8..3,
        1usize..=1500,
        any::<u64>(),
        0usize..=3,
    )
        .prop_map(|(set, op, count, seed, comments)| {
            let mut state = seed | 1;
            (0..count)
                .map(|n| {
                    let roll = bytes(&mut state, 2);
                    // Comment lengths: none, short, anything, or up to the limit.
                    let comment = match (comments, roll[0] % 4) {
                        (0, _) => None,
                        (1, _) => Some(usize::from(roll[1]) % 40),
                        (_, 0) => Some(COMMENT_MAX - 8 + usize::from(roll[1]) % 9),
                        _ => Some(usize::from(roll[1]).min(COMMENT_MAX)),
                    };
                    Draw {
                        set,
                        op,
                        seed: seed.wrapping_add(n as u64),
                        comment,
                    }
                })
                .collect()
        })
}

/// Up to 5,000 changes in runs; in one case of five, one comment somewhere is over the
/// limit (up to 300 bytes).
fn draws() -> impl Strategy<Value = Vec<Draw>> {
    (
        proptest::collection::vec(run(), 0..=12),
        proptest::option::weighted(0.2, (any::<usize>(), COMMENT_MAX + 1..=300)),
    )
        .prop_map(|(runs, overlong)| {
            let mut draws: Vec<Draw> = runs.into_iter().flatten().collect();
            draws.truncate(5000);
            if let Some((at, len)) = overlong
                && !draws.is_empty()
            {
                let at = at % draws.len();
                draws[at].comment = Some(len);
            }
            draws
        })
}

/// xorshift64*: cheap, deterministic bytes from a seed.
fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A comment of exactly `len` bytes, with multi-byte characters and quotes: lengths are
/// bytes, not characters.
fn comment(seed: &mut u64, len: usize) -> String {
    const CHARS: [char; 8] = ['a', 'Z', '0', ' ', '"', '=', 'é', '/'];
    let mut text = String::new();
    for byte in bytes(seed, len) {
        let mut next = CHARS[usize::from(byte) % CHARS.len()];
        if text.len() + next.len_utf8() > len {
            next = 'a';
        }
        text.push(next);
        if text.len() == len {
            break;
        }
    }
    text
}

fn element(sets: &[SetDef], draw: &Draw) -> Element {
    let set = &sets[draw.set];
    let mut seed = draw.seed | 1;
    Element {
        set: set.name,
        key: bytes(&mut seed, set.key_len as usize),
        key_end: None,
        data: set.data.map(|(_, len)| bytes(&mut seed, len as usize)),
        comment: draw.comment.map(|len| comment(&mut seed, len)),
    }
}

/// One netlink message of an encoded batch.
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    bytes: &'a [u8],
}

/// Splits a batch into its messages, checking each length against what holds it.
fn split(mut bytes: &[u8]) -> Vec<Message<'_>> {
    let mut messages = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 16, "a truncated netlink header");
        let len = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert!(len >= 20, "a message shorter than its headers: {len}");
        assert!(len <= bytes.len(), "a message longer than the batch");
        assert_eq!(len % 4, 0, "an unaligned message");
        assert!(len <= MESSAGE_BUDGET, "a message of {len} bytes");
        messages.push(Message {
            kind: u16::from_ne_bytes([bytes[4], bytes[5]]),
            flags: u16::from_ne_bytes([bytes[6], bytes[7]]),
            seq: u32::from_ne_bytes(bytes[8..12].try_into().unwrap()),
            bytes: &bytes[..len],
        });
        bytes = &bytes[len..];
    }
    messages
}

/// Walks attributes, descending into nested ones: each must be at least a header long, end
/// inside what holds it, and together they must fill it exactly, as they would not if a
/// 16-bit length had wrapped. Returns how many attributes there were.
fn walk(bytes: &[u8]) -> usize {
    let mut count = 0;
    let mut at = 0;
    while at < bytes.len() {
        assert!(bytes.len() - at >= 4, "a truncated attribute header");
        let len = usize::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]]));
        let kind = u16::from_ne_bytes([bytes[at + 2], bytes[at + 3]]);
        assert!(len >= 4, "an attribute shorter than its header");
        assert!(at + len <= bytes.len(), "an attribute past its container");
        if kind & NLA_F_NESTED != 0 {
            count += walk(&bytes[at + 4..at + len]);
        }
        count += 1;
        at += len.next_multiple_of(4);
    }
    assert_eq!(at, bytes.len(), "attributes do not fill their container");
    count
}

/// The message with each element of its element list typed NFTA_LIST_ELEM, as the kernel
/// dumps them. libnftnl numbers the elements of a message it writes 1, 2, 3… (the kernel
/// ignores the type), but its own parser refuses any type but NFTA_LIST_ELEM (1).
fn relabeled(message: &[u8]) -> Vec<u8> {
    const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    let mut bytes = message.to_vec();
    let mut at = 20;
    while at + 4 <= bytes.len() {
        let len = usize::from(u16::from_ne_bytes([bytes[at], bytes[at + 1]]));
        let kind = u16::from_ne_bytes([bytes[at + 2], bytes[at + 3]]) & !NLA_F_NESTED;
        if kind == NFTA_SET_ELEM_LIST_ELEMENTS {
            let mut inner = at + 4;
            while inner + 4 <= at + len {
                let inner_len = usize::from(u16::from_ne_bytes([bytes[inner], bytes[inner + 1]]));
                bytes[inner + 2..inner + 4].copy_from_slice(&(NLA_F_NESTED | 1).to_ne_bytes());
                inner += inner_len.next_multiple_of(4).max(4);
            }
        }
        at += len.next_multiple_of(4).max(4);
    }
    bytes
}

fn string_attr(attrs: &[u8], kind: u16) -> String {
    let value = attributes::find(attrs, kind).expect("attribute").value;
    String::from_utf8(value.strip_suffix(&[0]).expect("NUL-terminated").to_vec()).unwrap()
}

/// Checks an encoded batch message by message and returns the element changes it holds,
/// decoded by libnftnl, as (op, set, element) in order.
fn decode(batch: &EncodedBatch, genid: Option<u32>) -> Vec<(u8, String, ElementDump)> {
    let messages = split(&batch.bytes);
    assert!(messages.len() >= 2);
    let (begin, end) = (&messages[0], messages.last().unwrap());
    assert_eq!(
        (begin.kind, begin.seq),
        (NFNL_MSG_BATCH_BEGIN, batch.begin_seq)
    );
    assert_eq!((end.kind, end.seq), (NFNL_MSG_BATCH_END, batch.end_seq));
    for frame in [begin, end] {
        // nfgenmsg: AF_UNSPEC, version 0, res_id NFNL_SUBSYS_NFTABLES in network order.
        assert_eq!(frame.bytes[16..20], [0, 0, 0, 10]);
        assert_eq!(
            frame.flags & libc::NLM_F_ACK as u16,
            0,
            "begin and end ask no ack"
        );
        walk(&frame.bytes[20..]);
    }
    let genid_attr = attributes::find(&begin.bytes[20..], 1).map(|attr| attr.be32());
    assert_eq!(genid_attr, genid.map(Some));
    assert!(attributes::find(&end.bytes[20..], 1).is_none());

    let inner = &messages[1..messages.len() - 1];
    assert_eq!(inner.len(), batch.first_change.len());
    let mut decoded = Vec::new();
    for (n, message) in inner.iter().enumerate() {
        assert_eq!(message.seq, batch.begin_seq + 1 + n as u32);
        assert!(walk(&message.bytes[20..]) > 0);
        assert_eq!(message.kind >> 8, 10, "an nf_tables message");
        let op = match (
            message.kind & 0xff,
            message.flags & (NLM_F_CREATE | NLM_F_EXCL),
        ) {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE) => 0,
            (NFT_MSG_NEWSETELEM, flags) if flags == NLM_F_CREATE | NLM_F_EXCL => 1,
            (NFT_MSG_DELSETELEM, 0) => 2,
            other => panic!("unexpected message {other:?}"),
        };
        let attrs = &message.bytes[20..];
        assert_eq!(string_attr(attrs, NFTA_SET_ELEM_LIST_TABLE), TABLE);
        let set = string_attr(attrs, NFTA_SET_ELEM_LIST_SET);
        let aligned = AlignedBuffer::copy_of(&relabeled(message.bytes));
        let mut elements = Vec::new();
        parse_elements(&aligned.bytes()[..message.bytes.len()], &mut elements).unwrap();
        assert!(!elements.is_empty(), "an element message without elements");
        assert_eq!(
            batch.first_change[n],
            decoded.len(),
            "message {n} starts elsewhere"
        );
        decoded.extend(elements.into_iter().map(|e| (op, set.clone(), e)));
    }
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn encoded_batches_decode_to_what_went_in(
        draws in draws(),
        genid in proptest::option::of(any::<u32>()),
    ) {
        let sets = ruleset::sets();
        let elements: Vec<Element> = draws.iter().map(|draw| element(&sets, draw)).collect();
        let changes: Vec<Change> = draws
            .iter()
            .zip(&elements)
            .map(|(draw, element)| match draw.op {
                0 => Change::AddElement(element),
                1 => Change::CreateElement(element),
                _ => Change::DelElement(element),
            })
            .collect();
        let too_long = elements
            .iter()
            .filter_map(|element| element.comment.as_ref())
            .find(|comment| comment.len() > COMMENT_MAX);
        let result = encode_batch(TABLE, &changes, genid, 1);
        if let Some(comment) = too_long {
            // Refused whole, naming the first over-long comment, before any encoding.
            if std::env::var_os("NSPORT_FUZZ_STATS").is_some() {
                eprintln!("fuzz case: refused, a comment of {} bytes", comment.len());
            }
            match result {
                Err(NetlinkError::TooLong { len, max, .. }) => {
                    prop_assert_eq!(len, comment.len());
                    prop_assert_eq!(max, COMMENT_MAX);
                }
                Err(other) => prop_assert!(false, "refused otherwise: {other}"),
                Ok(_) => prop_assert!(false, "a comment of {} bytes was sent", comment.len()),
            }
            return Ok(());
        }
        let batch = result.unwrap();
        let decoded = decode(&batch, genid);
        if std::env::var_os("NSPORT_FUZZ_STATS").is_some() {
            let messages = split(&batch.bytes);
            let largest = messages.iter().map(|m| m.bytes.len()).max().unwrap_or(0);
            eprintln!(
                "fuzz case: {} elements, {} messages, {} bytes, largest message {largest}",
                elements.len(),
                messages.len(),
                batch.bytes.len()
            );
        }
        prop_assert_eq!(decoded.len(), elements.len());
        let no_data = Vec::new();
        for ((draw, element), (op, set, dump)) in draws.iter().zip(&elements).zip(&decoded) {
            prop_assert_eq!(*op, draw.op.min(2));
            prop_assert_eq!(set, element.set);
            prop_assert_eq!(&dump.key, &element.key);
            prop_assert_eq!(&dump.data, element.data.as_ref().unwrap_or(&no_data));
            prop_assert_eq!(&dump.comment, &element.comment);
        }
    }
}

/// The batch that once aborted with `free(): invalid size`: the longest comments and
/// thousands of elements of one set now split into messages well inside 64 KiB, and a
/// longer comment is refused instead of wrapping a length.
#[test]
fn the_longest_elements_stay_inside_the_budget() {
    let sets = ruleset::sets();
    let widest = sets
        .iter()
        .max_by_key(|set| set.key_len + set.data.map_or(0, |(_, len)| len))
        .unwrap();
    let elements: Vec<Element> = (0..5000u64)
        .map(|n| {
            let mut element = element(
                &sets,
                &Draw {
                    set: sets.iter().position(|set| set == widest).unwrap(),
                    op: 0,
                    seed: n,
                    comment: None,
                },
            );
            element.comment = Some("c".repeat(COMMENT_MAX));
            element
        })
        .collect();
    let changes: Vec<Change> = elements.iter().map(Change::AddElement).collect();
    let batch = encode_batch(TABLE, &changes, Some(7), 1).unwrap();
    let decoded = decode(&batch, Some(7));
    assert_eq!(decoded.len(), 5000);
    let messages = split(&batch.bytes);
    let largest = messages.iter().map(|m| m.bytes.len()).max().unwrap();
    assert!(
        largest <= MESSAGE_BUDGET && largest > MESSAGE_BUDGET / 2,
        "{largest}"
    );

    let mut long = elements[0].clone();
    long.comment = Some("c".repeat(1000));
    assert!(matches!(
        encode_batch(TABLE, &[Change::AddElement(&long)], None, 1),
        Err(NetlinkError::TooLong { len: 1000, .. })
    ));
}

/// Objects share the batch with elements: the whole table and its elements encode into
/// well-formed messages, each change's index mapped to its message.
#[test]
fn whole_tables_encode_to_well_formed_messages() {
    let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
    let mut changes = vec![Change::AddTable { exclusive: true }];
    changes.extend(chains.iter().map(Change::AddChain));
    changes.extend(sets.iter().map(Change::AddSet));
    changes.extend(rules.iter().map(Change::AddRule));
    changes.extend(chains.iter().map(Change::FlushChain));
    changes.extend(chains.iter().map(Change::DelChain));
    changes.push(Change::DelTable);
    let batch = encode_batch(TABLE, &changes, None, 100).unwrap();
    let messages = split(&batch.bytes);
    assert_eq!(messages.len(), changes.len() + 2);
    for (n, message) in messages[1..messages.len() - 1].iter().enumerate() {
        assert!(walk(&message.bytes[20..]) > 0);
        assert_eq!(batch.first_change[n], n);
        assert_eq!(message.seq, 101 + n as u32);
    }
}

/// Names and values that would not fit their fields refuse the whole batch before any of
/// it is encoded, wherever in the batch they are.
#[test]
fn overlong_names_and_values_refuse_the_batch() {
    use super::encode::{NAME_MAX, USERDATA_MAX};
    use crate::ruleset::ChainDef;
    // Names of ruleset values are &'static str: static bytes, not leaked strings, which
    // valgrind would rightly report.
    static LONG: [u8; NAME_MAX + 1] = [b'n'; NAME_MAX + 1];
    let long_name = std::str::from_utf8(&LONG).unwrap();
    let (chains, sets, rules) = (ruleset::chains(), ruleset::sets(), ruleset::rules());
    let long_chain = ChainDef {
        name: long_name,
        base: None,
    };
    let nul_chain = ChainDef {
        name: "a\0b",
        base: None,
    };
    let mut long_set = sets[0].clone();
    long_set.name = long_name;
    let mut long_userdata = sets[0].clone();
    long_userdata.userdata = vec![0; USERDATA_MAX + 1];
    let mut long_cmp = rules[0].clone();
    long_cmp.exprs.push(crate::ruleset::Expr::Cmp {
        op: crate::ruleset::CmpOp::Eq,
        sreg: 1,
        data: vec![0; 65],
    });
    let element = element(
        &sets,
        &Draw {
            set: 0,
            op: 0,
            seed: 1,
            comment: None,
        },
    );
    let mut long_key = element.clone();
    long_key.key = vec![0; 65];
    for (bad, what) in [
        (Change::AddChain(&long_chain), "chain name"),
        (Change::DelChain(&long_chain), "chain name"),
        (Change::FlushChain(&nul_chain), "NUL"),
        (Change::AddSet(&long_set), "set name"),
        (Change::AddSet(&long_userdata), "user data"),
        (Change::AddRule(&long_cmp), "compared value"),
        (Change::DelElement(&long_key), "key"),
    ] {
        let mut changes = vec![Change::AddTable { exclusive: false }];
        changes.extend(chains.iter().map(Change::AddChain));
        changes.push(Change::AddElement(&element));
        changes.push(bad);
        let error = match encode_batch(TABLE, &changes, None, 1) {
            Err(error) => error,
            Ok(_) => panic!("{bad:?} was encoded"),
        };
        assert!(error.to_string().contains(what), "{what}: {error}");
    }
    assert!(matches!(
        encode_batch(&"t".repeat(NAME_MAX + 1), &[Change::DelTable], None, 1),
        Err(NetlinkError::TooLong { .. })
    ));
}
