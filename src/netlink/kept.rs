//! Route and sock_diag netlink sockets kept per thread, as the netfilter one is (`socket`):
//! a publish asked the kernel five questions on five sockets opened for one each (four
//! system calls apiece, and two reads per answer to size its buffer). A kept socket is
//! checked against the thread's network namespace before each use, and dropped after a
//! failure, whose unread answers must not be taken for another request's.

use std::cell::RefCell;
use std::io;

use netlink_sys::Socket;

use super::NetlinkError;
use super::messages;
use super::socket::{NLMSG_DONE, NLMSG_ERROR, current_netns};

/// Room for one datagram: the kernel sends dump answers in pieces of at most 32 KiB.
const DATAGRAM: usize = 64 * 1024;

/// Whether a request wants more answers after the one just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answered {
    More,
    Done,
}

/// A socket of one netlink protocol, with the buffer its answers are read into.
pub(super) struct Kept {
    pub(super) socket: Socket,
    netns: u64,
    buffer: Vec<u8>,
}

impl Kept {
    /// Reads the answers to request `seq` until it ends: at NLMSG_DONE or NLMSG_ERROR (an
    /// error when it carries one, as a failed dump's NLMSG_DONE does), or when `answer`
    /// says so. Every other message of the request goes to `answer` with its type; what an
    /// earlier request left unread answers another sequence number and is skipped.
    pub(super) fn read_answers(
        &mut self,
        seq: u32,
        mut answer: impl FnMut(u16, &[u8]) -> Result<Answered, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        loop {
            let mut data = self.receive()?;
            while let Some(message) = messages::next_message(&mut data)? {
                if message.seq != seq {
                    continue;
                }
                match message.kind {
                    NLMSG_DONE | NLMSG_ERROR => {
                        return match messages::errno(&message)? {
                            errno if errno > 0 => Err(NetlinkError::Kernel {
                                index: None,
                                error: io::Error::from_raw_os_error(errno),
                            }),
                            _ => Ok(()),
                        };
                    }
                    kind => {
                        if answer(kind, message.payload)? == Answered::Done {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Reads one datagram of answers whole; one larger than the buffer is an error rather
    /// than cut short.
    pub(super) fn receive(&mut self) -> Result<&[u8], NetlinkError> {
        self.buffer.clear();
        let len = self
            .socket
            .recv(&mut self.buffer, libc::MSG_TRUNC)
            .map_err(NetlinkError::Receive)?;
        if len > self.buffer.len() {
            return Err(NetlinkError::Receive(io::Error::other(format!(
                "a netlink answer of {len} bytes, more than the {DATAGRAM} bytes read"
            ))));
        }
        Ok(&self.buffer[..len])
    }
}

thread_local! {
    static KEPT: RefCell<Vec<(isize, Kept)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `exchange` on the calling thread's socket of `protocol`, opened when there is none
/// for the thread's current network namespace, and kept when `exchange` ends with the
/// request's last answer: after success or a refusal, which ends a request or a dump.
pub(super) fn with_kept<T>(
    protocol: isize,
    exchange: impl FnOnce(&mut Kept) -> Result<T, NetlinkError>,
) -> Result<T, NetlinkError> {
    let netns = current_netns()?;
    let kept = KEPT.with(|cell| {
        let mut all = cell.borrow_mut();
        let at = all.iter().position(|(p, _)| *p == protocol)?;
        Some(all.swap_remove(at).1)
    });
    let mut kept = match kept {
        Some(kept) if kept.netns == netns => kept,
        _ => {
            // Neither bound nor connected: the kernel binds a netlink socket to a port of
            // its choosing on its first send, and sends without an address go to the
            // kernel; three system calls fewer per socket.
            let socket = Socket::new(protocol).map_err(NetlinkError::Open)?;
            Kept {
                socket,
                netns,
                buffer: Vec::with_capacity(DATAGRAM),
            }
        }
    };
    let result = exchange(&mut kept);
    if matches!(result, Ok(_) | Err(NetlinkError::Kernel { .. })) {
        KEPT.with(|cell| cell.borrow_mut().push((protocol, kept)));
    }
    result
}
