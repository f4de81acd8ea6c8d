//! Netfilter netlink sockets shared by `nftables` and `conntrack`: opening one sized for a
//! request, reading what the kernel queued, and walking the messages of an answer.
//!
//! Each thread keeps one netfilter socket for all its requests (`with_shared`), opened on
//! its first request and again only after a failure or a move to another network
//! namespace. Opening one cost six system calls and a 256 KiB buffer per request, and
//! closing one after a batch that deleted anything waits for an RCU grace period
//! (nf_tables frees what was deleted first, 10-20 ms here): with one socket that wait
//! comes once, when the thread or process ends, and overlaps whatever it does meanwhile.

use std::cell::RefCell;
use std::io;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use nix::sys::socket::{self, MsgFlags, NetlinkAddr, sockopt};
use nix::sys::time::TimeVal;

use super::NetlinkError;

pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
/// How long to wait for the kernel's answer before calling it lost.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Room for one recvmsg of an answer. The kernel never sends a dump's part larger than
/// the largest read asked for, capped at 32 KiB with its overhead (`netlink_recvmsg`), and
/// an acknowledgement echoes only its message's header (`NETLINK_CAP_ACK`). The room is
/// larger than that on purpose: above glibc's mmap threshold, the zeroed buffer is a fresh
/// mapping whose pages are touched only where an answer lands, where 64 KiB from the heap
/// are zeroed page by page (15 more page faults a publish, measured).
pub(super) const RECEIVE_BUFFER: usize = 256 * 1024;
/// Linux's usual net.core.[rw]mem_default.
const DEFAULT_SOCKET_BUFFER: usize = 200 * 1024;
/// Room one acknowledgement takes in a socket buffer, its skb overhead included.
const ANSWER_BYTES: usize = 1024;
const MAX_RECEIVE_BUFFER: usize = 32 << 20;

fn raw_fd(socket: &mnl::Socket) -> RawFd {
    // SAFETY: reads the descriptor of a live libmnl socket.
    unsafe { mnl::mnl_sys::mnl_socket_get_fd(socket.as_raw_socket()) }
}

/// Opens a netfilter socket able to send `send_bytes` at once and to queue `answers`
/// acknowledgements without dropping any.
pub(super) fn open(send_bytes: usize, answers: usize) -> Result<mnl::Socket, NetlinkError> {
    // Not bound: the kernel binds a netlink socket to a port of its choosing on its first
    // send, and answers are matched by sequence number, never by port (two system calls
    // fewer, `bind` and the `getsockname` after it).
    let socket = mnl::Socket::open(mnl::Bus::Netfilter).map_err(NetlinkError::Open)?;
    // SAFETY: the descriptor belongs to `socket`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(raw_fd(&socket)) };
    let set_error = |errno: nix::errno::Errno| NetlinkError::Open(errno.into());
    // A socket kept for the thread's life must not leak into programs it starts.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(set_error)?;
    let timeout = TimeVal::new(RECEIVE_TIMEOUT.as_secs() as i64, 0);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(set_error)?;
    // Errors then carry the refused message's header only, not all of it: a refused
    // message of hundreds of elements would otherwise be echoed whole.
    socket::setsockopt(&fd, NetlinkFlag(NETLINK_CAP_ACK), &true).map_err(set_error)?;
    // And they say which attribute was refused (NLMSGERR_ATTR_OFFS): for a message of many
    // elements, which element (since Linux 5.19; the option itself is from 4.12, and
    // kernels before it do not know it and say nothing).
    let _ = socket::setsockopt(&fd, NetlinkFlag(NETLINK_EXT_ACK), &true);
    size(&socket, send_bytes, answers)?;
    Ok(socket)
}

/// Raises the socket's buffers for a request of `send_bytes` with `answers` answers: past
/// the default socket buffers (about 200 KiB), large batches would fail with EMSGSIZE and
/// their acknowledgements with ENOBUFS; root may raise both.
fn size(socket: &mnl::Socket, send_bytes: usize, answers: usize) -> Result<(), NetlinkError> {
    // SAFETY: the descriptor belongs to `socket`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(raw_fd(socket)) };
    let set_error = |errno: nix::errno::Errno| NetlinkError::Open(errno.into());
    if send_bytes > DEFAULT_SOCKET_BUFFER {
        socket::setsockopt(&fd, sockopt::SndBufForce, &(send_bytes + 4096)).map_err(set_error)?;
    }
    let receive_bytes = answers.saturating_mul(ANSWER_BYTES).min(MAX_RECEIVE_BUFFER);
    if receive_bytes > DEFAULT_SOCKET_BUFFER {
        socket::setsockopt(&fd, sockopt::RcvBufForce, &receive_bytes).map_err(set_error)?;
    }
    Ok(())
}

/// A thread's netfilter socket, with what it was opened for.
pub(super) struct Shared {
    pub(super) socket: mnl::Socket,
    /// Room for one read of answers, kept with the socket rather than allocated per read.
    pub(super) buffer: AlignedBuffer,
    /// The inode of the network namespace the socket was opened in.
    netns: u64,
    send_bytes: usize,
    answers: usize,
}

thread_local! {
    static SHARED: RefCell<Option<Shared>> = const { RefCell::new(None) };
    /// The thread's next sequence number: every request gets its own, so that an answer is
    /// only ever matched to the request that asked for it.
    static NEXT_SEQ: std::cell::Cell<u32> = const { std::cell::Cell::new(1) };
}

/// The first of the sequence numbers a request of several messages numbers from; it tells
/// `used_seq` the last it used.
pub(super) fn next_seq() -> u32 {
    NEXT_SEQ.with(std::cell::Cell::get)
}

/// Marks the sequence numbers through `last` as used.
pub(super) fn used_seq(last: u32) {
    NEXT_SEQ.with(|next| next.set(last.wrapping_add(1).max(1)));
}

/// What a thread said of its network namespace (`pin_thread_namespace`).
#[derive(Clone, Copy)]
enum NamespacePin {
    /// Nothing: it may move between requests.
    Unpinned,
    /// It stays where it is; not looked up yet.
    Promised,
    /// It stays in this one.
    Known(u64),
}

thread_local! {
    static PIN: std::cell::Cell<NamespacePin> =
        const { std::cell::Cell::new(NamespacePin::Unpinned) };
    /// Whether the thread was pinned for good, which no call's end undoes.
    static PINNED_FOR_GOOD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Says that the calling thread stays in its network namespace for the rest of its life,
/// so that its kept sockets need not look the namespace up again before each request.
///
/// A kept socket speaks for the namespace it was opened in, and a library user's thread may
/// move between requests (setns), so each request looks up the thread's namespace in
/// /proc: 6 µs a look-up here, and a publish makes seven of them. A program whose thread
/// never calls setns, as nsport's own main thread (it enters other namespaces only on
/// threads of their own, `netns::Namespace::run`), pins it once; the namespace is then
/// looked up at the thread's first request only, and never by a command that sends none.
///
/// The promise is the caller's to keep: a pinned thread that moves anyway is answered, in a
/// release build, by the namespace it was pinned in, whose table it would then change.
/// Debug builds check the promise on every request and panic when it is broken.
pub fn pin_thread_namespace() {
    PINNED_FOR_GOOD.with(|for_good| for_good.set(true));
    PIN.with(|pin| {
        if let NamespacePin::Unpinned = pin.get() {
            pin.set(NamespacePin::Promised);
        }
    });
}

/// Runs `call` with the calling thread pinned to its network namespace for its length, as
/// `pin_thread_namespace` pins it for good: a library call never moves its caller's thread
/// (nsport enters other namespaces on threads of its own), so a publish looks the
/// namespace up once rather than before each of its requests. Afterwards, and after a
/// panic too, the thread is unpinned again unless it was, or was meanwhile, pinned for
/// good. `call` must not move the thread (see `pin_thread_namespace`).
pub fn pinned_for<T>(call: impl FnOnce() -> T) -> T {
    /// Unpins a thread the call pinned, when the call ends.
    struct Unpin(bool);
    impl Drop for Unpin {
        fn drop(&mut self) {
            if self.0 && !PINNED_FOR_GOOD.with(std::cell::Cell::get) {
                PIN.with(|pin| pin.set(NamespacePin::Unpinned));
            }
        }
    }
    let pinned_here = PIN.with(|pin| match pin.get() {
        NamespacePin::Unpinned => {
            pin.set(NamespacePin::Promised);
            true
        }
        _ => false,
    });
    let _unpin = Unpin(pinned_here);
    call()
}

/// The inode of the calling thread's network namespace.
pub(super) fn current_netns() -> Result<u64, NetlinkError> {
    match PIN.with(std::cell::Cell::get) {
        NamespacePin::Unpinned => look_up_netns(),
        NamespacePin::Promised => {
            let netns = look_up_netns()?;
            PIN.with(|pin| pin.set(NamespacePin::Known(netns)));
            Ok(netns)
        }
        NamespacePin::Known(netns) => {
            debug_assert_eq!(
                look_up_netns().ok(),
                Some(netns),
                "a thread pinned to its network namespace moved to another"
            );
            Ok(netns)
        }
    }
}

fn look_up_netns() -> Result<u64, NetlinkError> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|meta| meta.ino())
        .map_err(NetlinkError::Open)
}

/// Runs `exchange` on the calling thread's netfilter socket, sized for `send_bytes` and
/// `answers`. The socket is opened on first use and again when the thread moved to another
/// network namespace (a socket speaks for the namespace it was opened in), and it is kept
/// only when `exchange` succeeds: after a failure, answers nobody read may be queued on it.
pub(super) fn with_shared<T>(
    send_bytes: usize,
    answers: usize,
    exchange: impl FnOnce(&mut Shared) -> Result<T, NetlinkError>,
) -> Result<T, NetlinkError> {
    let netns = current_netns()?;
    let kept = SHARED.with(|cell| cell.borrow_mut().take());
    let mut shared = match kept {
        Some(mut shared) if shared.netns == netns => {
            if send_bytes > shared.send_bytes || answers > shared.answers {
                size(&shared.socket, send_bytes, answers)?;
                shared.send_bytes = shared.send_bytes.max(send_bytes);
                shared.answers = shared.answers.max(answers);
            }
            shared
        }
        _ => Shared {
            socket: open(send_bytes, answers)?,
            buffer: AlignedBuffer::new(RECEIVE_BUFFER),
            netns,
            send_bytes,
            answers,
        },
    };
    let result = exchange(&mut shared);
    if result.is_ok() {
        SHARED.with(|cell| *cell.borrow_mut() = Some(shared));
    }
    result
}

const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// An error message whose echo of the refused message is its header alone.
const NLM_F_CAPPED: u16 = 0x100;
/// An error message followed by extended-ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// The extended-ack attribute giving the refused attribute's offset in its message.
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// A boolean SOL_NETLINK option (`NETLINK_CAP_ACK`, `NETLINK_EXT_ACK`), which nix does not
/// name.
#[derive(Clone, Copy)]
struct NetlinkFlag(libc::c_int);

impl socket::SetSockOpt for NetlinkFlag {
    type Val = bool;

    fn set<F: std::os::fd::AsFd>(&self, fd: &F, value: &bool) -> nix::Result<()> {
        const SOL_NETLINK: libc::c_int = 270;
        let value = libc::c_int::from(*value);
        // SAFETY: setsockopt reads one c_int from a live local.
        let result = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd.as_fd()),
                SOL_NETLINK,
                self.0,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        nix::errno::Errno::result(result).map(drop)
    }
}

/// Sends `bytes` in one sendmsg(): nfnetlink treats each send as a whole batch, so a batch
/// must never be split the way sending page by page (`mnl::Socket::send_all`) would.
pub(super) fn send_whole(socket: &mnl::Socket, bytes: &[u8]) -> Result<(), NetlinkError> {
    let iov = [IoSlice::new(bytes)];
    let kernel = NetlinkAddr::new(0, 0);
    let sent = socket::sendmsg(raw_fd(socket), &iov, &[], MsgFlags::empty(), Some(&kernel))
        .map_err(|errno| NetlinkError::Send(errno.into()))?;
    if sent != bytes.len() {
        return Err(NetlinkError::Send(io::Error::other(
            "the batch was sent in part",
        )));
    }
    Ok(())
}

/// Reads what the kernel queued; without `wait`, an empty queue is `WouldBlock`.
pub(super) fn receive(
    socket: &mnl::Socket,
    buffer: &mut AlignedBuffer,
    wait: bool,
) -> Result<usize, NetlinkError> {
    // MSG_TRUNC: the answer's whole length, so that one larger than the buffer is an
    // error rather than a message cut short.
    let flags = match wait {
        true => MsgFlags::MSG_TRUNC,
        false => MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
    };
    let bytes = buffer.bytes_mut();
    let len = socket::recv(raw_fd(socket), bytes, flags)
        .map_err(|errno| NetlinkError::Receive(errno.into()))?;
    if len > bytes.len() {
        return Err(NetlinkError::Receive(io::Error::other(format!(
            "an answer of {len} bytes, larger than the {} bytes read",
            bytes.len()
        ))));
    }
    Ok(len)
}

/// One netlink message of a reply, with the error code when it is an NLMSG_ERROR.
pub(super) struct Reply<'a> {
    pub(super) kind: u16,
    pub(super) seq: u32,
    pub(super) errno: i32,
    /// For an error, the offset in the refused message of the attribute refused, when the
    /// kernel says.
    pub(super) bad_attr: Option<u32>,
    pub(super) message: &'a [u8],
}

pub(super) fn replies(bytes: &[u8]) -> impl Iterator<Item = Result<Reply<'_>, NetlinkError>> {
    mnl::NlMessages::new(bytes).map(|message| {
        let message = message.map_err(NetlinkError::Receive)?;
        // libmnl only yields messages whose length covers at least their header.
        let word = |at: usize| u32::from_ne_bytes(message[at..at + 4].try_into().unwrap());
        let kind = u16::from_ne_bytes([message[4], message[5]]);
        let flags = u16::from_ne_bytes([message[6], message[7]]);
        let (errno, bad_attr) = if kind == NLMSG_ERROR {
            if message.len() < 20 {
                return Err(NetlinkError::Receive(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink error message",
                )));
            }
            (-(word(16) as i32), error_offset(message, flags))
        } else {
            (0, None)
        };
        Ok(Reply {
            kind,
            seq: word(8),
            errno,
            bad_attr,
            message,
        })
    })
}

/// The NLMSGERR_ATTR_OFFS of an error message: its attributes follow the error code and the
/// echo of the refused message, whole or (capped) its header only.
fn error_offset(message: &[u8], flags: u16) -> Option<u32> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = message.get(20..24)?;
        u32::from_ne_bytes(len.try_into().ok()?) as usize
    };
    let attrs = message.get((20 + echoed).next_multiple_of(4)..)?;
    let offset = super::attributes::find(attrs, NLMSGERR_ATTR_OFFS)?;
    Some(u32::from_ne_bytes(offset.value.get(..4)?.try_into().ok()?))
}

/// Sends one request and hands each answer message to `on_message`. Returns false when the
/// kernel answered ENOENT (no such table, chain, set or element).
pub(super) fn exchange(
    request: &[u8],
    on_message: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<bool, NetlinkError> {
    exchange_until(request, false, on_message)
}

/// `exchange` for a request answered by one message that asks for no acknowledgement
/// (no NLM_F_ACK): that message, or the error standing for it, ends the request, one read
/// where an acknowledged request takes two.
pub(super) fn ask(
    request: &[u8],
    on_answer: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<bool, NetlinkError> {
    exchange_until(request, true, on_answer)
}

fn exchange_until(
    request: &[u8],
    one_answer: bool,
    mut on_message: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
) -> Result<bool, NetlinkError> {
    with_shared(request.len(), 1, |shared| {
        let mut request = request.to_vec();
        let seq = next_seq();
        used_seq(seq);
        // The request's own sequence number (bytes 8..12 of its header).
        request
            .get_mut(8..12)
            .ok_or_else(|| NetlinkError::Send(io::Error::other("a request without a header")))?
            .copy_from_slice(&seq.to_ne_bytes());
        shared.socket.send(&request).map_err(NetlinkError::Send)?;
        loop {
            let len = receive(&shared.socket, &mut shared.buffer, true)?;
            for reply in replies(&shared.buffer.bytes()[..len]) {
                let reply = reply?;
                // What an earlier request left unread (an acknowledgement a newer kernel
                // adds, say) answers another sequence number: it is not this answer.
                if reply.seq != seq {
                    continue;
                }
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
                    _ => {
                        on_message(reply.message)?;
                        if one_answer {
                            return Ok(true);
                        }
                    }
                }
            }
        }
    })
}

/// A buffer for libnftnl to build one message in, aligned for `nlmsghdr` and left
/// uninitialised: a message takes a few hundred bytes of the 68 KiB libnftnl may write, and
/// zeroing all of it would fault in seventeen fresh pages for every batch a process sends.
/// Only what libnftnl wrote is ever read.
pub(super) struct MessageBuffer(Box<[MaybeUninit<u64>]>);

impl MessageBuffer {
    pub(super) fn new(len: usize) -> Self {
        MessageBuffer(Box::new_uninit_slice(len.div_ceil(8)))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len() * 8
    }

    pub(super) fn as_mut_ptr(&mut self) -> *mut libc::c_char {
        self.0.as_mut_ptr().cast()
    }

    /// The message libnftnl built: as long as its header says, refused when that is
    /// longer than the buffer.
    ///
    /// # Safety
    /// A message header must have been written at the start of the buffer, and the bytes
    /// it counts (libmnl writes every one of them, padding included).
    pub(super) unsafe fn message(&self) -> Result<&[u8], NetlinkError> {
        // SAFETY: the caller wrote the header, whose first four bytes are the length.
        let len = unsafe { self.0.as_ptr().cast::<u32>().read() } as usize;
        if len < 16 || len > self.len() {
            return Err(NetlinkError::Send(io::Error::other(format!(
                "a built message of {len} bytes, in a buffer of {}",
                self.len()
            ))));
        }
        // SAFETY: the caller wrote these `len` bytes, which lie inside the buffer.
        Ok(unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), len) })
    }
}

/// A buffer aligned for `nlmsghdr`, as libmnl and libnftnl require of what they read and
/// write.
pub(super) struct AlignedBuffer(Vec<u64>);

impl AlignedBuffer {
    pub(super) fn new(len: usize) -> Self {
        AlignedBuffer(vec![0; len.div_ceil(8)])
    }

    /// A copy of `bytes` in aligned storage, for libnftnl's parsers.
    #[cfg(test)]
    pub(super) fn copy_of(bytes: &[u8]) -> Self {
        let mut buffer = Self::new(bytes.len());
        buffer.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        buffer
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: any u64 storage is valid as bytes, and the length is in bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 8) }
    }

    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned() -> bool {
        !matches!(PIN.with(std::cell::Cell::get), NamespacePin::Unpinned)
    }

    /// A library call pins its thread for its length only, and leaves a thread pinned for
    /// good (before or during the call) pinned; a panic in the call unpins too.
    #[test]
    fn a_call_pins_its_thread_for_its_length() {
        std::thread::spawn(|| {
            assert!(!pinned());
            assert!(pinned_for(pinned));
            assert!(!pinned(), "a library call left its caller's thread pinned");
            let panicked = std::panic::catch_unwind(|| pinned_for(|| panic!("in the call")));
            assert!(panicked.is_err());
            assert!(
                !pinned(),
                "a panicking call left its caller's thread pinned"
            );
            pinned_for(pin_thread_namespace);
            assert!(pinned(), "a call undid a pin for good made during it");
            pinned_for(|| ());
            assert!(pinned(), "a call unpinned a thread pinned for good");
        })
        .join()
        .unwrap();
    }
}
