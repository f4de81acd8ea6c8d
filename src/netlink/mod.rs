//! Everything that talks to the kernel over netlink, and the only place with `unsafe`.
//!
//! `nftables` writes and reads `table inet nsport` through libnftnl and libmnl;
//! `rtnetlink` reads addresses, routes and links and sets bridge-port hairpin mode.

use std::io;

pub mod nftables;
pub mod rtnetlink;

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
}

impl NetlinkError {
    /// The errno of a refusal or of a failed socket operation.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Open(error)
            | NetlinkError::Send(error)
            | NetlinkError::Receive(error)
            | NetlinkError::Kernel { error, .. } => error.raw_os_error(),
        }
    }
}
