//! nftables over netlink: encoding `crate::ruleset` values with libnftnl, sending them in
//! one batch with libmnl, and matching every acknowledgement to its sequence number.

use std::ffi::{CStr, CString, c_void};
use std::io;
use std::io::IoSlice;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::{Batch, MsgType, NlMsg};
use nix::sys::socket::{self, MsgFlags, NetlinkAddr, sockopt};
use nix::sys::time::TimeVal;

use super::NetlinkError;
use crate::ruleset::{
    ChainDef, ChainType, CmpOp, CtKey, Element, Expr, Hook, MetaKey, PayloadBase, RuleDef, SetDef,
    TABLE, Verdict,
};

const FAMILY_INET: u16 = libc::NFPROTO_INET as u16;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
const NFT_SET_MAP: u32 = 0x8;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_DIRECTION: u32 = 1;
const NFT_CT_STATUS: u32 = 2;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_NAT_DNAT: u32 = 1;
const NF_ACCEPT: u32 = 1;
/// How long to wait for the kernel's answer before calling it lost.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for one recvmsg of a dump; the kernel fills up to this much per read.
pub(super) const RECEIVE_BUFFER: usize = 256 * 1024;
/// Linux's usual net.core.[rw]mem_default.
const DEFAULT_SOCKET_BUFFER: usize = 200 * 1024;
/// Room one acknowledgement takes in a socket buffer, its skb overhead included.
const ANSWER_BYTES: usize = 1024;
const MAX_RECEIVE_BUFFER: usize = 32 << 20;

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
    AddSet(&'a SetDef),
    AddRule(&'a RuleDef),
    /// Adds an element; an identical element is accepted, one with other data is EEXIST.
    AddElement(&'a Element),
    DelElement(&'a Element),
    /// TEMPORARY until the netlink branch lands.
    CreateElement(&'a Element),
    FlushChain(&'a ChainDef),
    DelChain(&'a ChainDef),
}

/// TEMPORARY until the netlink branch lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDump {
    pub chain: String,
    pub handle: u64,
    pub exprs: String,
}

/// TEMPORARY until the netlink branch lands.
pub fn generation() -> Result<u32, NetlinkError> {
    Ok(0)
}

/// TEMPORARY until the netlink branch lands.
pub fn dump_rules(_table: &str) -> Result<Vec<RuleDump>, NetlinkError> {
    Ok(Vec::new())
}

/// TEMPORARY until the netlink branch lands.
pub fn rule_exprs_text(rule: &RuleDef) -> String {
    format!("{:?}", rule.exprs)
}

/// An element as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementDump {
    pub key: Vec<u8>,
    pub data: Vec<u8>,
    pub comment: Option<String>,
    /// Packets and bytes, for an element of a set that counts.
    pub counter: Option<(u64, u64)>,
}

/// Sends `changes` as one batch and waits for the kernel to answer every message.
///
/// On failure the kernel has applied none of it; the error names the index in `changes`
/// of the first message the kernel refused.
pub fn commit(changes: &[Change<'_>], _genid: Option<u32>) -> Result<(), NetlinkError> {
    commit_to(TABLE, changes, None)
}

/// The most elements one message carries: about 200 bytes each, they stay well inside the
/// 64 KiB a netlink message may hold.
const ELEMENTS_PER_MESSAGE: usize = 200;

/// Splits changes into messages: consecutive additions (or deletions) of elements of one
/// set share a message, which saves the kernel and libnftnl per-message work. Each message
/// remembers the index of its first change.
fn messages<'a>(table: &'a str, changes: &[Change<'a>]) -> Vec<(usize, Message<'a>)> {
    let mut messages: Vec<(usize, Message<'a>)> = Vec::new();
    for (index, change) in changes.iter().enumerate() {
        let element = match change {
            Change::AddElement(element) => Some((true, *element)),
            Change::DelElement(element) => Some((false, *element)),
            _ => None,
        };
        if let (Some((add, element)), Some((_, last))) = (element, messages.last_mut())
            && let Part::Elements {
                add: last_add,
                elements,
            } = &mut last.part
            && *last_add == add
            && elements[0].set == element.set
            && elements.len() < ELEMENTS_PER_MESSAGE
        {
            elements.push(element);
            continue;
        }
        let part = match element {
            Some((add, element)) => Part::Elements {
                add,
                elements: vec![element],
            },
            None => Part::Object(*change),
        };
        messages.push((index, Message { table, part }));
    }
    messages
}

/// The same for another table: `nsport doctor` probes with a throwaway one.
pub fn commit_to(
    table: &str,
    changes: &[Change<'_>],
    _genid: Option<u32>,
) -> Result<(), NetlinkError> {
    for change in changes {
        log::debug!("netlink: {}", describe(change));
    }
    let messages = messages(table, changes);
    let mut batch = Batch::new();
    for (_, message) in &messages {
        batch.add(message, MsgType::Add);
    }
    let batch = batch.finalize();
    let seqs = batch.sequence_numbers();
    // From Linux 6.10 the batch's begin and end messages are acknowledged too and nftnl
    // gives them the first and last sequence numbers; before, only the messages are.
    let frame_acked = seqs.len() == messages.len() + 2;
    let first_message_seq = seqs.start + u32::from(frame_acked);
    let last_seq = seqs.end - 1;

    let pages: Vec<&[u8]> = batch.iter().collect();
    let socket = open(pages.iter().map(|page| page.len()).sum(), seqs.len())?;
    send_batch(&socket, &pages)?;

    // The kernel handles a batch inside sendmsg(), so every answer is queued by now, in
    // sequence order: an error for each refused message, whatever its flags, and on success
    // the end message's acknowledgement (Linux 6.10 and later). The first error is the one
    // reported, and the rest (a refused batch of 10,000 elements queues 10,000) are
    // dropped with the socket. Before 6.10 success is silence, so an empty queue ends it.
    let mut buffer = AlignedBuffer::new(RECEIVE_BUFFER);
    let mut first_error: Option<(u32, i32)> = None;
    'answers: loop {
        let len = match receive(&socket, &mut buffer, frame_acked) {
            Ok(len) => len,
            Err(NetlinkError::Receive(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                break;
            }
            Err(error) => return Err(error),
        };
        for reply in replies(&buffer.bytes()[..len]) {
            let reply = reply?;
            if reply.kind == NLMSG_ERROR && reply.errno != 0 {
                first_error = Some((reply.seq, reply.errno));
                break 'answers;
            }
            if reply.seq == last_seq {
                break 'answers;
            }
        }
    }
    match first_error {
        None => Ok(()),
        // A message of several elements names its first; the caller finds which one.
        Some((seq, errno)) => Err(NetlinkError::Kernel {
            index: seq
                .checked_sub(first_message_seq)
                .and_then(|i| messages.get(i as usize))
                .map(|(index, _)| *index),
            error: io::Error::from_raw_os_error(errno),
        }),
    }
}

/// What a change is, for `-v`.
fn describe(change: &Change) -> String {
    match change {
        Change::AddTable { .. } => format!("NEWTABLE inet {TABLE}"),
        Change::DelTable => format!("DELTABLE inet {TABLE}"),
        Change::AddChain(chain) => format!("NEWCHAIN {}", chain.name),
        Change::AddSet(set) => format!("NEWSET {}", set.name),
        Change::AddRule(rule) => format!("NEWRULE {}: {}", rule.chain, rule.nft),
        Change::AddElement(element) => format!("NEWSETELEM {}", element.nft_add()),
        Change::DelElement(element) => format!("DELSETELEM {}", element.nft_delete()),
        _ => todo!("the netlink branch"),
    }
}

/// Sends the pages of a batch in one sendmsg(): the kernel treats each send as a whole
/// batch, so a batch larger than one page must not be split the way sending page by page
/// (`mnl::Socket::send_all`) would.
fn send_batch(socket: &mnl::Socket, pages: &[&[u8]]) -> Result<(), NetlinkError> {
    let iov: Vec<IoSlice> = pages.iter().map(|page| IoSlice::new(page)).collect();
    let kernel = NetlinkAddr::new(0, 0);
    let total: usize = pages.iter().map(|page| page.len()).sum();
    let sent = socket::sendmsg(raw_fd(socket), &iov, &[], MsgFlags::empty(), Some(&kernel))
        .map_err(|errno| NetlinkError::Send(errno.into()))?;
    if sent != total {
        return Err(NetlinkError::Send(io::Error::other(
            "the batch was sent in part",
        )));
    }
    Ok(())
}

/// A base chain of any table, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDump {
    pub family: u32,
    pub table: String,
    pub name: String,
    pub hook: u32,
    pub policy: u32,
}

/// Sends one request and hands each answer message to `on_message`. Returns false when the
/// kernel answered ENOENT (no such table, chain, set or element).
fn exchange(
    request: &[u8],
    mut on_message: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<bool, NetlinkError> {
    let socket = open(request.len(), 1)?;
    socket.send(request).map_err(NetlinkError::Send)?;
    let mut buffer = AlignedBuffer::new(RECEIVE_BUFFER);
    loop {
        let len = receive(&socket, &mut buffer, true)?;
        for reply in replies(&buffer.bytes()[..len]) {
            let reply = reply?;
            match reply.kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR if reply.errno == libc::ENOENT => return Ok(false),
                NLMSG_ERROR if reply.errno != 0 => {
                    return Err(NetlinkError::Kernel {
                        index: None,
                        error: io::Error::from_raw_os_error(reply.errno),
                    });
                }
                // The acknowledgement that ends a request that is not a dump.
                NLMSG_ERROR => return Ok(true),
                _ => on_message(reply.message)?,
            }
        }
    }
}

/// Builds a request with libnftnl into an aligned buffer.
fn build_request(
    kind: i32,
    family: u16,
    dump: bool,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> Vec<u8> {
    let flags = if dump {
        libc::NLM_F_DUMP | libc::NLM_F_ACK
    } else {
        libc::NLM_F_ACK
    };
    let mut buffer = AlignedBuffer::new(nftnl::nft_nlmsg_maxsize() as usize);
    buffer.build(|buf| {
        // SAFETY: the buffer has room for one maximal message.
        let nlh = unsafe { sys::nftnl_nlmsg_build_hdr(buf, kind as u16, family, flags as u16, 1) };
        payload(nlh);
        nlh
    })
}

/// Whether `table inet nsport` exists.
pub fn table_exists() -> Result<bool, NetlinkError> {
    let table = TableHandle::new(TABLE);
    let request = build_request(libc::NFT_MSG_GETTABLE, FAMILY_INET, false, |nlh| {
        // SAFETY: `table` is live; the payload fits the buffer.
        unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, table.0.as_ptr()) }
    });
    exchange(&request, |_| Ok(()))
}

/// Whether chain `name` of `table inet nsport` exists.
pub fn chain_exists(name: &str) -> Result<bool, NetlinkError> {
    // SAFETY: an owned chain, freed below.
    let ptr = unsafe { chain_named(TABLE, name) };
    let request = build_request(libc::NFT_MSG_GETCHAIN, FAMILY_INET, false, |nlh| {
        // SAFETY: `ptr` is live; the payload fits the buffer.
        unsafe { sys::nftnl_chain_nlmsg_build_payload(nlh, ptr) }
    });
    // SAFETY: allocated above, freed once.
    unsafe { sys::nftnl_chain_free(ptr) };
    exchange(&request, |_| Ok(()))
}

/// Every base chain of every table, in one dump.
pub fn dump_base_chains() -> Result<Vec<ChainDump>, NetlinkError> {
    let request = build_request(
        libc::NFT_MSG_GETCHAIN,
        libc::NFPROTO_UNSPEC as u16,
        true,
        |_| {},
    );
    let mut chains = Vec::new();
    exchange(&request, |message| {
        // SAFETY: a fresh chain parsed from one whole, aligned message, then freed.
        unsafe {
            let ptr = sys::nftnl_chain_alloc();
            let parsed = sys::nftnl_chain_nlmsg_parse(message.as_ptr().cast(), ptr);
            if parsed >= 0 && sys::nftnl_chain_is_set(ptr, sys::NFTNL_CHAIN_HOOKNUM as u16) {
                let text = |attr: u32| {
                    CStr::from_ptr(sys::nftnl_chain_get_str(ptr, attr as u16))
                        .to_string_lossy()
                        .into_owned()
                };
                chains.push(ChainDump {
                    family: sys::nftnl_chain_get_u32(ptr, sys::NFTNL_CHAIN_FAMILY as u16),
                    table: text(sys::NFTNL_CHAIN_TABLE),
                    name: text(sys::NFTNL_CHAIN_NAME),
                    hook: sys::nftnl_chain_get_u32(ptr, sys::NFTNL_CHAIN_HOOKNUM as u16),
                    // A base chain without a policy accepts.
                    policy: if sys::nftnl_chain_is_set(ptr, sys::NFTNL_CHAIN_POLICY as u16) {
                        sys::nftnl_chain_get_u32(ptr, sys::NFTNL_CHAIN_POLICY as u16)
                    } else {
                        NF_ACCEPT
                    },
                });
            }
            sys::nftnl_chain_free(ptr);
        }
        Ok(())
    })?;
    Ok(chains)
}

/// Reads every element of one set or map of `table inet nsport`, in one dump.
/// A missing table or set reads as empty.
pub fn dump_elements(set: &str) -> Result<Vec<ElementDump>, NetlinkError> {
    let handle = SetHandle::for_elements(TABLE, set, None);
    let request = build_request(libc::NFT_MSG_GETSETELEM, FAMILY_INET, true, |nlh| {
        // SAFETY: `handle` is live; the payload fits the buffer.
        unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, handle.0.as_ptr()) }
    });
    let mut elements = Vec::new();
    exchange(&request, |message| parse_elements(message, &mut elements))?;
    Ok(elements)
}

/// Reads the one element of `set` with this key, if there is one.
pub fn get_element(set: &str, key: &[u8]) -> Result<Option<ElementDump>, NetlinkError> {
    let handle = SetHandle::for_elements(TABLE, set, None);
    let probe = Element {
        set: "",
        key: key.to_vec(),
        data: None,
        comment: None,
    };
    // SAFETY: the set takes ownership of the element.
    unsafe { sys::nftnl_set_elem_add(handle.0.as_ptr(), element_object(&probe)) };
    let request = build_request(libc::NFT_MSG_GETSETELEM, FAMILY_INET, false, |nlh| {
        // SAFETY: `handle` is live; the payload fits the buffer.
        unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, handle.0.as_ptr()) }
    });
    let mut elements = Vec::new();
    exchange(&request, |message| parse_elements(message, &mut elements))?;
    Ok(elements.into_iter().next())
}

fn raw_fd(socket: &mnl::Socket) -> RawFd {
    // SAFETY: reads the descriptor of a live libmnl socket.
    unsafe { mnl::mnl_sys::mnl_socket_get_fd(socket.as_raw_socket()) }
}

/// Opens a netfilter socket able to send `send_bytes` at once and to queue `answers`
/// acknowledgements without dropping any.
pub(super) fn open(send_bytes: usize, answers: usize) -> Result<mnl::Socket, NetlinkError> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NetlinkError::Open)?;
    // SAFETY: the descriptor belongs to `socket`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(raw_fd(&socket)) };
    let set_error = |errno: nix::errno::Errno| NetlinkError::Open(errno.into());
    let timeout = TimeVal::new(RECEIVE_TIMEOUT.as_secs() as i64, 0);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(set_error)?;
    // Errors then carry the refused message's header only, not all of it: a refused
    // message of 200 elements would otherwise be echoed whole.
    socket::setsockopt(&fd, NetlinkCapAck, &true).map_err(set_error)?;
    // Past the default socket buffers (about 200 KiB), large batches would fail with
    // EMSGSIZE and their acknowledgements with ENOBUFS; root may raise both.
    if send_bytes > DEFAULT_SOCKET_BUFFER {
        socket::setsockopt(&fd, sockopt::SndBufForce, &(send_bytes + 4096)).map_err(set_error)?;
    }
    let receive_bytes = (answers * ANSWER_BYTES).min(MAX_RECEIVE_BUFFER);
    if receive_bytes > DEFAULT_SOCKET_BUFFER {
        socket::setsockopt(&fd, sockopt::RcvBufForce, &receive_bytes).map_err(set_error)?;
    }
    Ok(socket)
}

/// `NETLINK_CAP_ACK`, which nix does not name.
#[derive(Clone, Copy)]
struct NetlinkCapAck;

impl socket::SetSockOpt for NetlinkCapAck {
    type Val = bool;

    fn set<F: std::os::fd::AsFd>(&self, fd: &F, value: &bool) -> nix::Result<()> {
        const SOL_NETLINK: libc::c_int = 270;
        const NETLINK_CAP_ACK: libc::c_int = 10;
        let value = libc::c_int::from(*value);
        // SAFETY: setsockopt reads one c_int from a live local.
        let result = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
                SOL_NETLINK,
                NETLINK_CAP_ACK,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        nix::errno::Errno::result(result).map(drop)
    }
}

/// Reads what the kernel queued; without `wait`, an empty queue is `WouldBlock`.
pub(super) fn receive(
    socket: &mnl::Socket,
    buffer: &mut AlignedBuffer,
    wait: bool,
) -> Result<usize, NetlinkError> {
    let flags = if wait {
        MsgFlags::empty()
    } else {
        MsgFlags::MSG_DONTWAIT
    };
    socket::recv(raw_fd(socket), buffer.bytes_mut(), flags)
        .map_err(|errno| NetlinkError::Receive(errno.into()))
}

/// One netlink message of a reply, with the error code when it is an NLMSG_ERROR.
pub(super) struct Reply<'a> {
    pub(super) kind: u16,
    pub(super) seq: u32,
    pub(super) errno: i32,
    pub(super) message: &'a [u8],
}

pub(super) fn replies(bytes: &[u8]) -> impl Iterator<Item = Result<Reply<'_>, NetlinkError>> {
    mnl::NlMessages::new(bytes).map(|message| {
        let message = message.map_err(NetlinkError::Receive)?;
        let word = |at: usize| u32::from_ne_bytes(message[at..at + 4].try_into().unwrap());
        let kind = u16::from_ne_bytes([message[4], message[5]]);
        let errno = if kind == NLMSG_ERROR {
            if message.len() < 20 {
                return Err(NetlinkError::Receive(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink error message",
                )));
            }
            -(word(16) as i32)
        } else {
            0
        };
        Ok(Reply {
            kind,
            seq: word(8),
            errno,
            message,
        })
    })
}

/// A receive buffer aligned for `nlmsghdr`, as libmnl and libnftnl require.
pub(super) struct AlignedBuffer(Vec<u64>);

impl AlignedBuffer {
    pub(super) fn new(len: usize) -> Self {
        AlignedBuffer(vec![0; len.div_ceil(8)])
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: any u64 storage is valid as bytes, and the length is in bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 8) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 8) }
    }

    /// Runs a libnftnl message builder on the buffer and returns the message it wrote.
    fn build(&mut self, write: impl FnOnce(*mut libc::c_char) -> *mut libc::nlmsghdr) -> Vec<u8> {
        let nlh = write(self.bytes_mut().as_mut_ptr().cast());
        // SAFETY: libnftnl returned a header it wrote inside this buffer.
        let len = unsafe { (*nlh).nlmsg_len } as usize;
        self.bytes()[..len].to_vec()
    }
}

fn parse_elements(message: &[u8], out: &mut Vec<ElementDump>) -> Result<(), NetlinkError> {
    let set = SetHandle::alloc();
    // SAFETY: `message` is one whole, aligned netlink message from the kernel.
    let parsed =
        unsafe { sys::nftnl_set_elems_nlmsg_parse(message.as_ptr().cast(), set.0.as_ptr()) };
    if parsed < 0 {
        return Err(NetlinkError::Receive(io::Error::new(
            io::ErrorKind::InvalidData,
            "undecodable set element message",
        )));
    }
    // SAFETY: the iterator and the elements it yields live as long as `set`.
    unsafe {
        let iter = sys::nftnl_set_elems_iter_create(set.0.as_ptr());
        // `iter_next` returns the current element and then advances.
        let mut elem = sys::nftnl_set_elems_iter_next(iter);
        while !elem.is_null() {
            let key = elem_attr(elem, sys::NFTNL_SET_ELEM_KEY as u16);
            let data = elem_attr(elem, sys::NFTNL_SET_ELEM_DATA as u16);
            let userdata = elem_attr(elem, sys::NFTNL_SET_ELEM_USERDATA as u16);
            out.push(ElementDump {
                key,
                data,
                comment: comment_from_userdata(&userdata),
                counter: elem_counter(elem),
            });
            elem = sys::nftnl_set_elems_iter_next(iter);
        }
        sys::nftnl_set_elems_iter_destroy(iter);
    }
    Ok(())
}

/// The packets and bytes of an element's counter, its only expression.
///
/// # Safety
/// `elem` must be a live element.
unsafe fn elem_counter(elem: *mut sys::nftnl_set_elem) -> Option<(u64, u64)> {
    let mut len = 0u32;
    // SAFETY: the caller guarantees `elem`; with the attribute set, libnftnl returns the
    // first of the element's expressions, owned by the element.
    unsafe {
        let expr = sys::nftnl_set_elem_get(elem, sys::NFTNL_SET_ELEM_EXPR as u16, &mut len);
        if expr.is_null() {
            return None;
        }
        let expr = expr.cast::<sys::nftnl_expr>();
        Some((
            sys::nftnl_expr_get_u64(expr, sys::NFTNL_EXPR_CTR_PACKETS as u16),
            sys::nftnl_expr_get_u64(expr, sys::NFTNL_EXPR_CTR_BYTES as u16),
        ))
    }
}

/// # Safety
/// `elem` must be a live element.
unsafe fn elem_attr(elem: *mut sys::nftnl_set_elem, attr: u16) -> Vec<u8> {
    let mut len = 0u32;
    // SAFETY: the caller guarantees `elem`; libnftnl returns null or `len` readable bytes.
    unsafe {
        let ptr = sys::nftnl_set_elem_get(elem, attr, &mut len);
        if ptr.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize).to_vec()
        }
    }
}

/// nftables' comment user data: type 0, length, NUL-terminated text.
const UDATA_COMMENT: u8 = 0;

fn userdata_comment(comment: &str) -> Vec<u8> {
    let mut out = vec![UDATA_COMMENT, (comment.len() + 1) as u8];
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    out
}

fn comment_from_userdata(mut userdata: &[u8]) -> Option<String> {
    while userdata.len() >= 2 {
        let (kind, len) = (userdata[0], userdata[1] as usize);
        let value = userdata.get(2..2 + len)?;
        if kind == UDATA_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        userdata = &userdata[2 + len..];
    }
    None
}

fn cstring(text: &str) -> CString {
    CString::new(text).expect("names hold no NUL")
}

struct TableHandle(NonNull<sys::nftnl_table>);

impl TableHandle {
    fn new(name: &str) -> Self {
        // SAFETY: plain allocation and setters on the object we own.
        unsafe {
            let table = NonNull::new(sys::nftnl_table_alloc()).expect("allocation");
            sys::nftnl_table_set_str(
                table.as_ptr(),
                sys::NFTNL_TABLE_NAME as u16,
                cstring(name).as_ptr(),
            );
            sys::nftnl_table_set_u32(
                table.as_ptr(),
                sys::NFTNL_TABLE_FAMILY as u16,
                u32::from(FAMILY_INET),
            );
            TableHandle(table)
        }
    }
}

impl Drop for TableHandle {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once.
        unsafe { sys::nftnl_table_free(self.0.as_ptr()) }
    }
}

struct SetHandle(NonNull<sys::nftnl_set>);

impl SetHandle {
    fn alloc() -> Self {
        // SAFETY: plain allocation.
        SetHandle(NonNull::new(unsafe { sys::nftnl_set_alloc() }).expect("allocation"))
    }

    /// A set object naming `set` of `table`, as element messages need.
    fn for_elements(table: &str, set: &str, id: Option<u32>) -> Self {
        let handle = Self::alloc();
        let ptr = handle.0.as_ptr();
        // SAFETY: setters on the object we own; libnftnl copies the strings.
        unsafe {
            sys::nftnl_set_set_str(ptr, sys::NFTNL_SET_TABLE as u16, cstring(table).as_ptr());
            sys::nftnl_set_set_str(ptr, sys::NFTNL_SET_NAME as u16, cstring(set).as_ptr());
            sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_FAMILY as u16, u32::from(FAMILY_INET));
            if let Some(id) = id {
                sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_ID as u16, id);
            }
        }
        handle
    }
}

impl Drop for SetHandle {
    fn drop(&mut self) {
        // SAFETY: allocated by `alloc`, freed once.
        unsafe { sys::nftnl_set_free(self.0.as_ptr()) }
    }
}

/// One message of a batch: a change to an object, or elements of one set.
enum Part<'a> {
    Object(Change<'a>),
    Elements {
        add: bool,
        elements: Vec<&'a Element>,
    },
}

/// A message to `table`, as nftnl's batch writes it.
struct Message<'a> {
    table: &'a str,
    part: Part<'a>,
}

unsafe impl NlMsg for Message<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _: MsgType) {
        let buf = buf.cast::<libc::c_char>();
        // No NLM_F_ACK: the kernel answers a refused message anyway, and acknowledging each
        // of thousands of elements would cost a socket buffer full of answers.
        let create = libc::NLM_F_CREATE as u16;
        // SAFETY: nftnl's batch hands us room for one maximal message; every object built
        // here is owned by this function and freed before it returns.
        unsafe {
            let header = |kind: i32, flags: u16| {
                sys::nftnl_nlmsg_build_hdr(buf, kind as u16, FAMILY_INET, flags, seq)
            };
            let change = match &self.part {
                Part::Elements { add, elements } => {
                    let (kind, flags) = if *add {
                        (libc::NFT_MSG_NEWSETELEM, create)
                    } else {
                        (libc::NFT_MSG_DELSETELEM, 0)
                    };
                    let handle = SetHandle::for_elements(
                        self.table,
                        elements[0].set,
                        Some(elements[0].set_id()),
                    );
                    for element in elements {
                        sys::nftnl_set_elem_add(handle.0.as_ptr(), element_object(element));
                    }
                    let nlh = header(kind, flags);
                    sys::nftnl_set_elems_nlmsg_build_payload(nlh, handle.0.as_ptr());
                    return;
                }
                Part::Object(change) => *change,
            };
            match change {
                Change::AddTable { exclusive } => {
                    let table = TableHandle::new(self.table);
                    let flags = if exclusive {
                        create | libc::NLM_F_EXCL as u16
                    } else {
                        create
                    };
                    let nlh = header(libc::NFT_MSG_NEWTABLE, flags);
                    sys::nftnl_table_nlmsg_build_payload(nlh, table.0.as_ptr());
                }
                Change::DelTable => {
                    let table = TableHandle::new(self.table);
                    let nlh = header(libc::NFT_MSG_DELTABLE, 0);
                    sys::nftnl_table_nlmsg_build_payload(nlh, table.0.as_ptr());
                }
                Change::AddChain(chain) => {
                    let ptr = chain_object(self.table, chain);
                    let nlh = header(libc::NFT_MSG_NEWCHAIN, create);
                    sys::nftnl_chain_nlmsg_build_payload(nlh, ptr);
                    sys::nftnl_chain_free(ptr);
                }
                Change::AddSet(set) => {
                    let handle = set_object(self.table, set);
                    let nlh = header(libc::NFT_MSG_NEWSET, create);
                    sys::nftnl_set_nlmsg_build_payload(nlh, handle.0.as_ptr());
                }
                Change::AddRule(rule) => {
                    let ptr = rule_object(self.table, rule);
                    let flags = (libc::NLM_F_CREATE | libc::NLM_F_APPEND) as u16;
                    let nlh = header(libc::NFT_MSG_NEWRULE, flags);
                    sys::nftnl_rule_nlmsg_build_payload(nlh, ptr);
                    sys::nftnl_rule_free(ptr);
                }
                Change::AddElement(_) | Change::DelElement(_) => {
                    unreachable!("elements travel as Part::Elements")
                }
                _ => todo!("the netlink branch"),
            }
        }
    }
}

/// # Safety
/// Returns an owned chain of our table the caller must free.
unsafe fn chain_named(table: &str, name: &str) -> *mut sys::nftnl_chain {
    // SAFETY: setters on a fresh object; libnftnl copies strings.
    unsafe {
        let ptr = sys::nftnl_chain_alloc();
        sys::nftnl_chain_set_str(ptr, sys::NFTNL_CHAIN_TABLE as u16, cstring(table).as_ptr());
        sys::nftnl_chain_set_str(ptr, sys::NFTNL_CHAIN_NAME as u16, cstring(name).as_ptr());
        sys::nftnl_chain_set_u32(ptr, sys::NFTNL_CHAIN_FAMILY as u16, u32::from(FAMILY_INET));
        ptr
    }
}

/// # Safety
/// Returns an owned chain the caller must free.
unsafe fn chain_object(table: &str, chain: &ChainDef) -> *mut sys::nftnl_chain {
    // SAFETY: setters on a fresh object; libnftnl copies strings.
    unsafe {
        let ptr = chain_named(table, chain.name);
        if let Some((hook, priority, kind)) = chain.base {
            let hooknum = match hook {
                Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
                Hook::Input => libc::NF_INET_LOCAL_IN,
                Hook::Forward => libc::NF_INET_FORWARD,
                Hook::Output => libc::NF_INET_LOCAL_OUT,
                Hook::Postrouting => libc::NF_INET_POST_ROUTING,
            };
            let kind: &CStr = match kind {
                ChainType::Filter => c"filter",
                ChainType::Nat => c"nat",
            };
            sys::nftnl_chain_set_u32(ptr, sys::NFTNL_CHAIN_HOOKNUM as u16, hooknum as u32);
            sys::nftnl_chain_set_s32(ptr, sys::NFTNL_CHAIN_PRIO as u16, priority);
            sys::nftnl_chain_set_str(ptr, sys::NFTNL_CHAIN_TYPE as u16, kind.as_ptr());
            sys::nftnl_chain_set_u32(ptr, sys::NFTNL_CHAIN_POLICY as u16, NF_ACCEPT);
        }
        ptr
    }
}

/// # Safety
/// Plain libnftnl setters on a fresh object.
unsafe fn set_object(table: &str, set: &SetDef) -> SetHandle {
    let handle = SetHandle::for_elements(table, set.name, Some(set.id));
    let ptr = handle.0.as_ptr();
    // SAFETY: setters on the object `handle` owns; libnftnl copies the user data.
    unsafe {
        let flags = if set.is_map() { NFT_SET_MAP } else { 0 };
        sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_FLAGS as u16, flags);
        sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_KEY_TYPE as u16, set.key_type);
        sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_KEY_LEN as u16, set.key_len);
        if let Some((data_type, data_len)) = set.data {
            sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_DATA_TYPE as u16, data_type);
            sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_DATA_LEN as u16, data_len);
        }
        if set.counter {
            // The set's own expression, which the kernel gives every element added.
            sys::nftnl_set_add_expr(ptr, sys::nftnl_expr_alloc(c"counter".as_ptr()));
        }
        sys::nftnl_set_set_data(
            ptr,
            sys::NFTNL_SET_USERDATA as u16,
            set.userdata.as_ptr().cast(),
            set.userdata.len() as u32,
        );
    }
    handle
}

/// # Safety
/// Returns an element that the set it is added to takes ownership of.
unsafe fn element_object(element: &Element) -> *mut sys::nftnl_set_elem {
    let set_bytes = |elem, attr: u32, bytes: &[u8]| {
        // SAFETY: libnftnl copies `bytes`.
        unsafe {
            sys::nftnl_set_elem_set(elem, attr as u16, bytes.as_ptr().cast(), bytes.len() as u32)
        };
    };
    // SAFETY: a fresh element.
    let elem = unsafe { sys::nftnl_set_elem_alloc() };
    set_bytes(elem, sys::NFTNL_SET_ELEM_KEY, &element.key);
    if let Some(data) = &element.data {
        set_bytes(elem, sys::NFTNL_SET_ELEM_DATA, data);
    }
    if let Some(comment) = &element.comment {
        set_bytes(
            elem,
            sys::NFTNL_SET_ELEM_USERDATA,
            &userdata_comment(comment),
        );
    }
    elem
}

/// # Safety
/// Returns an owned rule the caller must free.
unsafe fn rule_object(table: &str, rule: &RuleDef) -> *mut sys::nftnl_rule {
    // SAFETY: setters on a fresh rule, which takes ownership of each expression.
    unsafe {
        let ptr = sys::nftnl_rule_alloc();
        sys::nftnl_rule_set_str(ptr, sys::NFTNL_RULE_TABLE as u16, cstring(table).as_ptr());
        sys::nftnl_rule_set_str(
            ptr,
            sys::NFTNL_RULE_CHAIN as u16,
            cstring(rule.chain).as_ptr(),
        );
        sys::nftnl_rule_set_u32(ptr, sys::NFTNL_RULE_FAMILY as u16, u32::from(FAMILY_INET));
        for expr in &rule.exprs {
            sys::nftnl_rule_add_expr(ptr, expr_object(expr));
        }
        ptr
    }
}

/// Encodes one expression; the nft syntax each produces is beside it.
///
/// # Safety
/// Returns an expression the rule it is added to takes ownership of.
unsafe fn expr_object(expr: &Expr) -> *mut sys::nftnl_expr {
    let new = |name: &CStr| {
        // SAFETY: a fresh expression of a kind libnftnl knows.
        unsafe { sys::nftnl_expr_alloc(name.as_ptr()) }
    };
    let u32_attr = |e, attr: u32, value: u32| {
        // SAFETY: setter on a live expression.
        unsafe { sys::nftnl_expr_set_u32(e, attr as u16, value) }
    };
    let bytes_attr = |e, attr: u32, value: &[u8]| {
        // SAFETY: libnftnl copies `value`.
        unsafe { sys::nftnl_expr_set(e, attr as u16, value.as_ptr().cast(), value.len() as u32) };
    };
    match expr {
        // meta l4proto / iifname / …
        Expr::Meta { key, dreg } => {
            let e = new(c"meta");
            let key = match key {
                MetaKey::Nfproto => libc::NFT_META_NFPROTO,
                MetaKey::L4proto => libc::NFT_META_L4PROTO,
                MetaKey::Iifname => libc::NFT_META_IIFNAME,
                MetaKey::Oifname => libc::NFT_META_OIFNAME,
            };
            u32_attr(e, sys::NFTNL_EXPR_META_KEY, key as u32);
            u32_attr(e, sys::NFTNL_EXPR_META_DREG, *dreg);
            e
        }
        // ip daddr / th dport: bytes at an offset of a header
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            let e = new(c"payload");
            let base = match base {
                PayloadBase::Network => libc::NFT_PAYLOAD_NETWORK_HEADER,
                PayloadBase::Transport => libc::NFT_PAYLOAD_TRANSPORT_HEADER,
            };
            u32_attr(e, sys::NFTNL_EXPR_PAYLOAD_BASE, base as u32);
            u32_attr(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
            u32_attr(e, sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
            u32_attr(e, sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
            e
        }
        // == / != a constant
        Expr::Cmp { op, sreg, data } => {
            let e = new(c"cmp");
            let op = match op {
                CmpOp::Eq => libc::NFT_CMP_EQ,
                CmpOp::Neq => libc::NFT_CMP_NEQ,
            };
            u32_attr(e, sys::NFTNL_EXPR_CMP_SREG, *sreg);
            u32_attr(e, sys::NFTNL_EXPR_CMP_OP, op as u32);
            bytes_attr(e, sys::NFTNL_EXPR_CMP_DATA, data);
            e
        }
        // fib daddr type
        Expr::FibDaddrType { dreg } => {
            let e = new(c"fib");
            u32_attr(e, sys::NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
            u32_attr(e, sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
            u32_attr(e, sys::NFTNL_EXPR_FIB_DREG, *dreg);
            e
        }
        // ct state / ct status
        Expr::Ct { key, dreg } => {
            let e = new(c"ct");
            let key = match key {
                CtKey::State => NFT_CT_STATE,
                CtKey::Direction => NFT_CT_DIRECTION,
                CtKey::Status => NFT_CT_STATUS,
            };
            u32_attr(e, sys::NFTNL_EXPR_CT_KEY, key);
            u32_attr(e, sys::NFTNL_EXPR_CT_DREG, *dreg);
            e
        }
        // reg & mask ^ xor, as `ct status dnat` needs
        Expr::Bitwise { reg, mask, xor } => {
            let e = new(c"bitwise");
            u32_attr(e, sys::NFTNL_EXPR_BITWISE_SREG, *reg);
            u32_attr(e, sys::NFTNL_EXPR_BITWISE_DREG, *reg);
            u32_attr(e, sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32);
            bytes_attr(e, sys::NFTNL_EXPR_BITWISE_MASK, mask);
            bytes_attr(e, sys::NFTNL_EXPR_BITWISE_XOR, xor);
            e
        }
        // @set, or `map @map` when it loads the data into dreg
        Expr::Lookup {
            set,
            set_id,
            sreg,
            dreg,
            invert,
        } => {
            let e = new(c"lookup");
            // SAFETY: libnftnl copies the string.
            unsafe {
                sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, cstring(set).as_ptr())
            };
            u32_attr(e, sys::NFTNL_EXPR_LOOKUP_SET_ID, *set_id);
            u32_attr(e, sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
            if let Some(dreg) = dreg {
                u32_attr(e, sys::NFTNL_EXPR_LOOKUP_DREG, *dreg);
            }
            if *invert {
                u32_attr(e, sys::NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
            e
        }
        // dnat ip to <addr> . <port>, or dnat ip6
        Expr::Dnat {
            ipv6,
            reg_addr,
            reg_port,
        } => {
            let e = new(c"nat");
            let family = if *ipv6 {
                libc::NFPROTO_IPV6
            } else {
                libc::NFPROTO_IPV4
            };
            u32_attr(e, sys::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT);
            u32_attr(e, sys::NFTNL_EXPR_NAT_FAMILY, family as u32);
            u32_attr(e, sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, *reg_addr);
            u32_attr(e, sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *reg_port);
            e
        }
        // masquerade
        Expr::Masquerade => new(c"masq"),
        // drop / jump <chain>
        Expr::Verdict(verdict) => {
            let e = new(c"immediate");
            u32_attr(e, sys::NFTNL_EXPR_IMM_DREG, crate::ruleset::REG_VERDICT);
            match verdict {
                Verdict::Accept => u32_attr(e, sys::NFTNL_EXPR_IMM_VERDICT, libc::NF_ACCEPT as u32),
                Verdict::Return => {
                    u32_attr(e, sys::NFTNL_EXPR_IMM_VERDICT, libc::NFT_RETURN as u32)
                }
                Verdict::Drop => u32_attr(e, sys::NFTNL_EXPR_IMM_VERDICT, libc::NF_DROP as u32),
                Verdict::Jump(chain) => {
                    u32_attr(e, sys::NFTNL_EXPR_IMM_VERDICT, libc::NFT_JUMP as u32);
                    // SAFETY: libnftnl copies the string.
                    unsafe {
                        sys::nftnl_expr_set_str(
                            e,
                            sys::NFTNL_EXPR_IMM_CHAIN as u16,
                            cstring(chain).as_ptr(),
                        )
                    };
                }
            }
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_through_userdata() {
        let userdata = userdata_comment("via=br0 netns=ns1");
        assert_eq!(userdata[..2], [0, 18]);
        assert_eq!(
            comment_from_userdata(&userdata).as_deref(),
            Some("via=br0 netns=ns1")
        );
        // A record of another kind before the comment is skipped.
        let with_flags = [vec![1, 4, 0, 0, 0, 0], userdata].concat();
        assert_eq!(
            comment_from_userdata(&with_flags).as_deref(),
            Some("via=br0 netns=ns1")
        );
        assert_eq!(comment_from_userdata(&[0, 9, b'x']), None);
    }
}
