//! Everything that talks to the kernel over netlink, and the only place with `unsafe`.
//!
//! `nftables` writes and reads `table inet nsport` through libnftnl and libmnl;
//! `rtnetlink` reads addresses, routes and links and sets bridge-port hairpin mode;
//! `conntrack` deletes tracked connections; `sock_diag` finds the sockets holding a port;
//! `socket` holds the netfilter socket plumbing `nftables` and `conntrack` share;
//! `messages` walks the answers of the protocols read by hand.

use std::io;

mod attributes;
pub mod conntrack;
mod kept;
mod messages;
pub mod nftables;
pub mod rtnetlink;
pub mod sock_diag;
mod socket;

pub use socket::{pin_thread_namespace, pinned_for};

/// A netlink exchange that failed, by the stage at which it failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket")]
    Open(#[source] io::Error),
    #[error("cannot send to the kernel over netlink")]
    Send(#[source] io::Error),
    #[error("cannot read the kernel's netlink answer")]
    Receive(#[source] io::Error),
    /// The kernel refused a message; `index` is its position in the batch, when known.
    #[error("the kernel refused the change")]
    Kernel {
        index: Option<usize>,
        #[source]
        error: io::Error,
    },
    /// The batch was planned from a generation of the ruleset that is no longer current:
    /// the kernel applied none of it (it answered ERESTART). Read again and retry.
    #[error("the ruleset changed since it was read; nothing was applied")]
    Stale,
    /// A value would not fit the field the kernel or netlink gives it; nothing was sent.
    #[error("{what} is {len} bytes long, more than the {max} bytes nftables accepts")]
    TooLong {
        what: String,
        len: usize,
        max: usize,
    },
    /// A string netlink carries NUL-terminated holds a NUL byte; nothing was sent.
    #[error("{what} holds a NUL byte, which nftables cannot carry")]
    Nul { what: String },
}

impl NetlinkError {
    /// The errno of a refusal or of a failed socket operation: ERESTART for a stale
    /// generation, none for a value refused before anything was sent.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Open(error)
            | NetlinkError::Send(error)
            | NetlinkError::Receive(error)
            | NetlinkError::Kernel { error, .. } => error.raw_os_error(),
            NetlinkError::Stale => Some(libc::ERESTART),
            NetlinkError::TooLong { .. } | NetlinkError::Nul { .. } => None,
        }
    }
}

/// The cookie of the calling thread's network namespace: unlike its inode, never reused
/// while the system runs, so it names the namespace's saved state safely.
///
/// Read from an unbound AF_UNIX datagram socket, which belongs to the namespace it was
/// made in like any socket, without the port a bound UDP socket would take. It is read on
/// every call, not remembered by the namespace's inode: once a namespace is gone, the
/// kernel gives its inode number to the next namespace made, and a thread that was in
/// the old one would be handed its cookie, and so its record and writer lock, in the new.
pub fn netns_cookie() -> io::Result<u64> {
    read_netns_cookie()
}

fn read_netns_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: socket has no memory preconditions; the descriptor it returns is owned below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns; dropping it closes it.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a live u64.
    let result = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<u64>() {
        return Err(io::Error::other(format!(
            "a namespace cookie of {len} bytes, not 8"
        )));
    }
    Ok(cookie)
}
