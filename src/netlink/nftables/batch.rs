//! Batches: the changes nsport makes, framed by hand between a batch-begin message that can
//! carry the generation the batch was planned from and a batch-end message, sent in one
//! sendmsg(), with every answer matched back to the change it refuses.
//!
//! nftnl's `Batch` writes the begin and end messages itself and cannot add
//! `NFNL_BATCH_GENID`, so they are plain bytes here; libnftnl still encodes every object.

use std::io;

use nftnl::nftnl_sys::{self as sys, libc};

use super::encode::{
    self, CheckedElement, FAMILY_INET, MESSAGE_BUDGET, MESSAGE_BUFFER, chain_named, chain_object,
    elements_header_size, rule_named, rule_object, set_named, set_object, table_object,
};
use crate::netlink::NetlinkError;
use crate::netlink::attributes;
use crate::netlink::socket::{
    MessageBuffer, NLMSG_ERROR, next_seq, receive, replies, send_whole, used_seq, with_shared,
};
use crate::ruleset::{ChainDef, Element, RuleDef, SetDef, TABLE};

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_BATCH_GENID: u16 = 1;
const NFNETLINK_V0: u8 = 0;
const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const ERESTART: i32 = libc::ERESTART;

/// One change to `table inet nsport`; a batch of them is applied by the kernel atomically.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Creates the table; `exclusive` fails with EEXIST when it is already there, which is
    /// how concurrent first publishes agree on who writes the chains and rules.
    AddTable {
        exclusive: bool,
    },
    DelTable,
    AddChain(&'a ChainDef),
    /// Deletes every rule of the chain (a rule deletion that names no rule).
    FlushChain(&'a ChainDef),
    /// Deletes the chain, which must hold no rules and be the target of no jump.
    DelChain(&'a ChainDef),
    AddSet(&'a SetDef),
    AddRule(&'a RuleDef),
    /// Adds an element; an identical element is accepted, one with other data is EEXIST.
    AddElement(&'a Element),
    /// Creates an element; any element with its key, even an identical one, is EEXIST.
    CreateElement(&'a Element),
    DelElement(&'a Element),
}

/// What a change is, for `-v`.
fn describe(change: &Change) -> String {
    match change {
        Change::AddTable { .. } => format!("NEWTABLE inet {TABLE}"),
        Change::DelTable => format!("DELTABLE inet {TABLE}"),
        Change::AddChain(chain) => format!("NEWCHAIN {}", chain.name),
        Change::FlushChain(chain) => format!("DELRULE {} (flush)", chain.name),
        Change::DelChain(chain) => format!("DELCHAIN {}", chain.name),
        Change::AddSet(set) => format!("NEWSET {}", set.name),
        Change::AddRule(rule) => format!("NEWRULE {}: {}", rule.chain, rule.nft),
        Change::AddElement(element) => format!("NEWSETELEM {}", element.nft_add()),
        Change::CreateElement(element) => format!("NEWSETELEM excl {}", element.nft_add()),
        Change::DelElement(element) => format!("DELSETELEM {}", element.nft_delete()),
    }
}

/// Sends `changes` to `table inet nsport` as one batch and waits for the kernel to answer.
///
/// With `genid`, the kernel applies the batch only while the ruleset is still at that
/// generation (`generation()`), and otherwise refuses all of it with `NetlinkError::Stale`.
/// On any failure the kernel has applied none of it. A refusal (`NetlinkError::Kernel`)
/// names the index in `changes` of the first change the kernel refused: in a message of
/// many elements the refused element itself, as the kernel reports it (Linux 5.19 and
/// later), or else the message's first change. Values that would not fit their fields
/// are refused before anything is sent (`TooLong`, `Nul`).
pub fn commit(changes: &[Change<'_>], genid: Option<u32>) -> Result<(), NetlinkError> {
    commit_to(TABLE, changes, genid)
}

/// The generation a commit that made a change moves the ruleset on to from `genid`: the
/// next, where the kernel skips 0 (which a batch reads as "no check"). A batch that
/// changes nothing (it adds only what is there) leaves the generation where it was.
pub fn next_generation(genid: u32) -> u32 {
    match genid.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

/// The generation of the whole nftables ruleset of this network namespace: any change to
/// any table moves it on, so a batch sent with it applies only to what was read under it.
pub fn generation() -> Result<u32, NetlinkError> {
    const NFT_MSG_GETGEN: u16 = 16;
    const NFT_MSG_NEWGEN: u16 = 15;
    const NFTA_GEN_ID: u16 = 1;
    let kind = |message: u16| (NFNL_SUBSYS_NFTABLES << 8) | message;
    // Not acknowledged: the NEWGEN answer, or an error, is the whole of it.
    let request = attributes::message(
        kind(NFT_MSG_GETGEN),
        NLM_F_REQUEST,
        1,
        &[libc::AF_UNSPEC as u8, NFNETLINK_V0, 0, 0],
    )?;
    let mut genid = None;
    crate::netlink::socket::ask(&request, |message| {
        let kind_of = u16::from_ne_bytes([message[4], message[5]]);
        if kind_of == kind(NFT_MSG_NEWGEN) {
            genid = message
                .get(encode::MESSAGE_HEADER..)
                .and_then(|attrs| attributes::find(attrs, NFTA_GEN_ID))
                .and_then(|attr| attr.be32());
        }
        Ok(())
    })?;
    genid.ok_or_else(|| {
        NetlinkError::Receive(io::Error::new(
            io::ErrorKind::InvalidData,
            "the kernel's answer to GETGEN holds no generation",
        ))
    })
}

/// The same for another table: `nsport doctor` probes with a throwaway one.
pub fn commit_to(
    table: &str,
    changes: &[Change<'_>],
    genid: Option<u32>,
) -> Result<(), NetlinkError> {
    for change in changes {
        log::debug!("netlink: {}", describe(change));
    }
    let batch = encode_batch(table, changes, genid, next_seq())?;
    used_seq(batch.end_seq);
    with_shared(batch.bytes.len(), batch.first_change.len() + 2, |shared| {
        send_whole(&shared.socket, &batch.bytes)?;
        // The kernel handles a batch inside sendmsg(), so every answer is queued by now, in
        // sequence order: an error for each refused message, whatever its flags. Begin and
        // end never ask for an acknowledgement (only Linux 6.10 and later would give one),
        // so success is silence and an empty queue ends the wait on every kernel. The first
        // error is the one reported, and the rest (a refused batch can queue thousands) are
        // dropped with the socket, which is not kept after a failure.
        let mut first_error: Option<(u32, i32, Option<u32>)> = None;
        'answers: loop {
            let len = match receive(&shared.socket, &mut shared.buffer, false) {
                Ok(len) => len,
                Err(NetlinkError::Receive(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(error) => return Err(error),
            };
            for reply in replies(&shared.buffer.bytes()[..len]) {
                let reply = reply?;
                // Answers to earlier requests on this socket are not this batch's.
                let span = batch.end_seq.wrapping_sub(batch.begin_seq);
                if reply.seq.wrapping_sub(batch.begin_seq) > span {
                    continue;
                }
                if reply.kind == NLMSG_ERROR && reply.errno != 0 {
                    first_error = Some((reply.seq, reply.errno, reply.bad_attr));
                    break 'answers;
                }
                if reply.seq == batch.end_seq {
                    break 'answers;
                }
            }
        }
        match first_error {
            None => Ok(()),
            // A stale generation is answered on the begin message, and nothing is applied.
            Some((seq, ERESTART, _)) if seq == batch.begin_seq => Err(NetlinkError::Stale),
            // In a message of several elements, the kernel names the refused one by its
            // offset; before Linux 5.19 it names the message alone (extended acks, 4.12,
            // point at no element), and the message's first change stands for all.
            Some((seq, errno, bad_attr)) => Err(NetlinkError::Kernel {
                index: batch.change_of(seq, bad_attr),
                error: io::Error::from_raw_os_error(errno),
            }),
        }
    })
}

/// A batch as it is sent: its bytes, and which sequence number is which message.
pub(super) struct EncodedBatch {
    pub(super) bytes: Vec<u8>,
    pub(super) begin_seq: u32,
    pub(super) end_seq: u32,
    /// For the n-th message after the begin message (sequence number `begin_seq + 1 + n`),
    /// the index in `changes` of its first change.
    pub(super) first_change: Vec<usize>,
    /// For the n-th message, the offset in it of each of its elements, in order: element
    /// k is change `first_change[n] + k`. Empty for other messages.
    pub(super) element_offsets: Vec<Vec<u32>>,
}

impl EncodedBatch {
    /// The index of the change refused in the message with sequence number `seq`: the
    /// element at `bad_attr` when the kernel named one, else the message's first change.
    fn change_of(&self, seq: u32, bad_attr: Option<u32>) -> Option<usize> {
        let n = seq.checked_sub(self.begin_seq.checked_add(1)?)? as usize;
        let first = *self.first_change.get(n)?;
        let element =
            bad_attr.and_then(|offset| self.element_offsets[n].iter().position(|&at| at == offset));
        Some(first + element.unwrap_or(0))
    }
}

/// Where each element of an element message starts: the children of its
/// NFTA_SET_ELEM_LIST_ELEMENTS attribute, which the kernel names when it refuses one.
fn element_offsets(message: &[u8]) -> Vec<u32> {
    const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
    let header = encode::MESSAGE_HEADER;
    let Some(list) = message
        .get(header..)
        .and_then(|attrs| attributes::find(attrs, NFTA_SET_ELEM_LIST_ELEMENTS))
    else {
        return Vec::new();
    };
    // `list.value` lies inside `message`; its distance from the start is its offset.
    let start = list.value.as_ptr() as usize - message.as_ptr() as usize;
    attributes::attributes(list.value)
        .map(|element| {
            (start + (element.raw.as_ptr() as usize - list.value.as_ptr() as usize)) as u32
        })
        .collect()
}

/// What an element message does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ElementOp {
    Add,
    Create,
    Delete,
}

/// One message of a batch: a change to an object, or elements of one set.
enum Part<'a> {
    Object(Change<'a>),
    Elements {
        op: ElementOp,
        set: &'a str,
        set_id: u32,
        elements: Vec<CheckedElement<'a>>,
        /// The most bytes the message can take, by `encode`'s conservative estimates.
        size: usize,
    },
}

/// Splits changes into messages: consecutive additions (or deletions) of elements of one
/// set share a message, which saves the kernel and libnftnl per-message work, for as long
/// as the message stays inside `MESSAGE_BUDGET` bytes. Each message remembers the index of
/// its first change. Every change is checked here, before anything is encoded.
fn messages<'a>(
    table: &str,
    changes: &[Change<'a>],
) -> Result<Vec<(usize, Part<'a>)>, NetlinkError> {
    let mut messages: Vec<(usize, Part<'a>)> = Vec::new();
    for (index, change) in changes.iter().enumerate() {
        let (op, element) = match *change {
            Change::AddElement(element) => (ElementOp::Add, element),
            Change::CreateElement(element) => (ElementOp::Create, element),
            Change::DelElement(element) => (ElementOp::Delete, element),
            other => {
                check_object(table, &other)?;
                messages.push((index, Part::Object(other)));
                continue;
            }
        };
        let previous = match messages.last() {
            Some((_, Part::Elements { elements, .. })) => elements.last(),
            _ => None,
        };
        let checked = CheckedElement::new(element, previous)?;
        if let Some((
            _,
            Part::Elements {
                op: last_op,
                set,
                elements,
                size,
                ..
            },
        )) = messages.last_mut()
            && *last_op == op
            && *set == element.set
            && *size + checked.size <= MESSAGE_BUDGET
        {
            *size += checked.size;
            elements.push(checked);
            continue;
        }
        let size = elements_header_size(table, element.set) + checked.size;
        messages.push((
            index,
            Part::Elements {
                op,
                set: element.set,
                set_id: element.set_id(),
                elements: vec![checked],
                size,
            },
        ));
    }
    Ok(messages)
}

/// Checks the names and values of a change to an object, as `messages` checks elements,
/// so that a batch is refused before any of it is encoded.
fn check_object(table: &str, change: &Change) -> Result<(), NetlinkError> {
    match change {
        Change::AddTable { .. } | Change::DelTable => encode::name("table", table).map(drop),
        Change::AddChain(chain) | Change::FlushChain(chain) | Change::DelChain(chain) => {
            encode::name("chain", chain.name).map(drop)
        }
        Change::AddSet(set) => encode::check_set(table, set),
        Change::AddRule(rule) => encode::check_rule(table, rule).map(drop),
        Change::AddElement(_) | Change::CreateElement(_) | Change::DelElement(_) => Ok(()),
    }
}

/// Encodes a whole batch, begin and end included, exactly as `commit_to` sends it; the
/// begin message has sequence number `begin_seq` and the others follow it.
pub(super) fn encode_batch(
    table: &str,
    changes: &[Change<'_>],
    genid: Option<u32>,
    begin_seq: u32,
) -> Result<EncodedBatch, NetlinkError> {
    encode::name("table", table)?;
    let messages = messages(table, changes)?;
    let mut bytes = frame(NFNL_MSG_BATCH_BEGIN, begin_seq, genid)?;
    // Room for the elements up front, by their estimates: a range of 10,000 ports is a
    // megabyte of messages, which growing by doubling would copy twice over.
    bytes.reserve(
        messages
            .iter()
            .map(|(_, part)| match part {
                Part::Elements { size, .. } => *size,
                Part::Object(_) => 0,
            })
            .sum(),
    );
    let mut buffer = MessageBuffer::new(MESSAGE_BUFFER);
    let mut seq = begin_seq;
    let mut offsets = Vec::with_capacity(messages.len());
    for (_, part) in &messages {
        seq = seq.wrapping_add(1);
        let message = write_message(&mut buffer, table, part, seq)?;
        offsets.push(match part {
            Part::Elements { .. } => element_offsets(message),
            Part::Object(_) => Vec::new(),
        });
        bytes.extend_from_slice(message);
    }
    let end_seq = seq.wrapping_add(1);
    bytes.extend(frame(NFNL_MSG_BATCH_END, end_seq, None)?);
    Ok(EncodedBatch {
        bytes,
        begin_seq,
        end_seq,
        first_change: messages.iter().map(|(index, _)| *index).collect(),
        element_offsets: offsets,
    })
}

/// A batch begin or end message: an nfgenmsg addressed to nf_tables (`res_id`, in network
/// order), then for a checked batch the generation it was planned from. No NLM_F_ACK: Linux
/// 6.10 and later would acknowledge it, older kernels would not, and nothing is gained.
fn frame(kind: u16, seq: u32, genid: Option<u32>) -> Result<Vec<u8>, NetlinkError> {
    let mut payload = vec![libc::AF_UNSPEC as u8, NFNETLINK_V0];
    payload.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    if let Some(genid) = genid {
        attributes::put(&mut payload, NFNL_BATCH_GENID, &genid.to_be_bytes())?;
    }
    attributes::message(kind, NLM_F_REQUEST, seq, &payload)
}

/// Writes one message into `buffer` with libnftnl and returns its bytes.
///
/// Every name, value and element was checked before this (`messages`, `encode`), and the
/// message is bounded by `MESSAGE_BUDGET`, half of the buffer libnftnl writes into.
fn write_message<'b>(
    buffer: &'b mut MessageBuffer,
    table: &str,
    part: &Part,
    seq: u32,
) -> Result<&'b [u8], NetlinkError> {
    assert!(buffer.len() >= MESSAGE_BUFFER);
    let buf = buffer.as_mut_ptr();
    // No NLM_F_ACK: the kernel answers a refused message anyway, and acknowledging each of
    // thousands of messages would cost a socket buffer full of answers.
    let create = libc::NLM_F_CREATE as u16;
    let header = |kind: i32, flags: u16| {
        // SAFETY: `buf` is the start of an aligned buffer of MESSAGE_BUFFER bytes.
        unsafe { sys::nftnl_nlmsg_build_hdr(buf, kind as u16, FAMILY_INET, flags, seq) }
    };
    let estimate = match part {
        Part::Elements {
            op,
            set,
            set_id,
            elements,
            size,
        } => {
            let (kind, flags) = match op {
                ElementOp::Add => (libc::NFT_MSG_NEWSETELEM, create),
                ElementOp::Create => (libc::NFT_MSG_NEWSETELEM, create | libc::NLM_F_EXCL as u16),
                ElementOp::Delete => (libc::NFT_MSG_DELSETELEM, 0),
            };
            let object = set_named(table, set, Some(*set_id))?;
            for element in elements {
                encode::add_element(&object, element);
            }
            let nlh = header(kind, flags);
            // SAFETY: `nlh` heads the buffer; the message fits it (`size` bounds it).
            unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, object.ptr()) };
            *size
        }
        Part::Object(change) => match *change {
            Change::AddTable { exclusive } => {
                let object = table_object(table)?;
                // nsport's own table records its layout. The kernel keeps a table's user
                // data from its creation on: adding a table that exists leaves it as it is.
                if table == TABLE {
                    let userdata = crate::ruleset::layout_userdata();
                    // SAFETY: a setter on the object we own; libnftnl copies the bytes,
                    // a few dozen (far below USERDATA_MAX).
                    unsafe {
                        sys::nftnl_table_set_data(
                            object.ptr(),
                            sys::NFTNL_TABLE_USERDATA as u16,
                            userdata.as_ptr().cast(),
                            userdata.len() as u32,
                        )
                    };
                }
                let flags = if exclusive {
                    create | libc::NLM_F_EXCL as u16
                } else {
                    create
                };
                let nlh = header(libc::NFT_MSG_NEWTABLE, flags);
                // SAFETY: `nlh` heads the buffer; a table message is a few hundred bytes.
                unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, object.ptr()) };
                1024
            }
            Change::DelTable => {
                let object = table_object(table)?;
                let nlh = header(libc::NFT_MSG_DELTABLE, 0);
                // SAFETY: as above.
                unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, object.ptr()) };
                1024
            }
            Change::AddChain(chain) => {
                let object = chain_object(table, chain)?;
                let nlh = header(libc::NFT_MSG_NEWCHAIN, create);
                // SAFETY: `nlh` heads the buffer; two checked names and a few numbers.
                unsafe { sys::nftnl_chain_nlmsg_build_payload(nlh, object.ptr()) };
                1024
            }
            Change::DelChain(chain) => {
                let object = chain_named(table, chain.name)?;
                let nlh = header(libc::NFT_MSG_DELCHAIN, 0);
                // SAFETY: as above.
                unsafe { sys::nftnl_chain_nlmsg_build_payload(nlh, object.ptr()) };
                1024
            }
            Change::FlushChain(chain) => {
                let object = rule_named(table, chain.name)?;
                let nlh = header(libc::NFT_MSG_DELRULE, 0);
                // SAFETY: as above.
                unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, object.ptr()) };
                1024
            }
            Change::AddSet(set) => {
                let object = set_object(table, set)?;
                let nlh = header(libc::NFT_MSG_NEWSET, create);
                // SAFETY: `nlh` heads the buffer; names, numbers and at most USERDATA_MAX
                // bytes of user data.
                unsafe { sys::nftnl_set_nlmsg_build_payload(nlh, object.ptr()) };
                2048
            }
            Change::AddRule(rule) => {
                let size = encode::check_rule(table, rule)?;
                let object = rule_object(table, rule)?;
                let flags = (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16;
                let nlh = header(libc::NFT_MSG_NEWRULE, flags);
                // SAFETY: `nlh` heads the buffer; `check_rule` bounded the message by
                // MESSAGE_BUDGET.
                unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, object.ptr()) };
                size
            }
            Change::AddElement(_) | Change::CreateElement(_) | Change::DelElement(_) => {
                unreachable!("elements travel as Part::Elements")
            }
        },
    };
    // SAFETY: libnftnl wrote the header and the payload it counts.
    let message = unsafe { buffer.message() }?;
    let len = message.len();
    // The estimates are conservative and the buffer twice the budget, so this never fires;
    // if it did, refusing is the only honest answer.
    if len > estimate || len > MESSAGE_BUDGET {
        return Err(NetlinkError::TooLong {
            what: format!("an encoded message (estimated at {estimate} bytes)"),
            len,
            max: estimate.min(MESSAGE_BUDGET),
        });
    }
    Ok(message)
}
