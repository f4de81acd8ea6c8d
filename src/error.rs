//! The library's one error type, and which of its cases are the user's input (exit code 2)
//! rather than the system's state (exit code 1).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::host::netns::NamespaceError;
use crate::netlink::NetlinkError;
use crate::spec::SpecError;

/// The longest interface name Linux accepts (IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = 15;

/// Everything that can go wrong, each with a message that names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(
        "network namespace {0:?} has no global IPv4 or IPv6 address on a non-loopback interface"
    )]
    NoAddress(String),
    #[error("{spec} asks for an {family} host address, but the target has no {family} address")]
    FamilyMismatch { spec: String, family: &'static str },
    #[error("interface name {0:?} is longer than {MAX_IFNAME} bytes")]
    IfaceTooLong(String),
    #[error("{0:?} is not a valid interface name (no /, :, whitespace or control characters)")]
    BadIfaceName(String),
    #[error("network namespace name {0:?} is not accepted: {1}")]
    BadNetnsName(String, &'static str),
    #[error("interface {0:?} is the host's loopback: give the interface toward the target")]
    LoopbackVia(String),
    #[error(
        "cannot publish on interface {0:?}: the host's own traffic has no input interface; publish on 127.0.0.1 instead"
    )]
    OnLoopback(String),
    #[error("host address {addr} never arrives on interface {on:?}: only lo carries 127.0.0.0/8")]
    LoopbackOn { addr: IpAddr, on: String },
    #[error("host address {addr} is {why}: no traffic to it is ever published")]
    BadHostAddr { addr: IpAddr, why: &'static str },
    #[error("interface {0:?} does not exist")]
    NoSuchIface(String),
    #[error("no route to target {0}: give the interface with --via")]
    NoRoute(IpAddr),
    #[error("target {addr} is {why}: publish to one host's unicast address")]
    BadTarget { addr: IpAddr, why: &'static str },
    #[error("target {0} is an address of this host, not of a namespace")]
    TargetIsLocal(IpAddr),
    #[error("host address {0} is not an address of this host")]
    NotLocal(IpAddr),
    #[error("{spec} is published twice in one command, to {first} and {second}")]
    Duplicate {
        spec: String,
        first: String,
        second: String,
    },
    #[error(
        "host port {host} would allow {wanted}, but {holder} on the same port allows {held}: \
         every mapping of a port shares one --allow-from list (re-add them all to change it)"
    )]
    AllowListDiffers {
        host: String,
        wanted: String,
        holder: String,
        held: String,
    },
    #[error("{0}")]
    Prefix(#[from] crate::model::PrefixError),
    #[error("host port {host} is already published to {existing}")]
    Conflict { host: String, existing: String },
    /// Docker's rule: a specific host address (or interface) and the wildcard on the same
    /// port and protocol conflict, as two sockets would.
    #[error(
        "host port {host} overlaps host port {holder}, published to {existing}: \
         two sockets could not share them; publish with --force (\"force\": true in a \
         mappings file) to have both, the more specific one winning where they overlap"
    )]
    Overlap {
        host: String,
        holder: String,
        existing: String,
    },
    #[error(
        "host port {host} is in use by {owner}; publishing it would cut that socket off (use --force to publish anyway)"
    )]
    HostPortInUse { host: String, owner: String },
    #[error("{0} is not published")]
    NotPublished(String),
    #[error("nsport needs root or CAP_NET_ADMIN")]
    Permission(#[source] io::Error),
    #[error("cannot change nftables")]
    Netlink(#[from] NetlinkError),
    /// Every try to commit found that another writer had changed the ruleset since it was
    /// read; nothing was changed. Runtimes should retry (CNI code 11).
    #[error(
        "the nftables ruleset kept changing while nsport planned its change ({tries} tries); nothing was changed, try again"
    )]
    Busy { tries: u32 },
    #[error("cannot set hairpin mode of bridge port {port}")]
    Hairpin {
        port: String,
        #[source]
        error: NetlinkError,
    },
    #[error("cannot write {name}")]
    Sysctl {
        name: String,
        #[source]
        error: io::Error,
    },
    #[error("cannot keep the record of changed settings ({})", path.display())]
    State {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    /// The table was changed, a later step failed, and the change was taken back: the
    /// kernel holds what it held before the command.
    #[error("nothing was changed: {}", with_causes(.0))]
    RolledBack(Box<Error>),
    /// The table was changed and a later step failed; taking the change back failed too.
    #[error("the table was changed, but {}", with_causes(.0))]
    Unfinished(Box<Error>),
    /// The table was written by a newer nsport, in a layout this one does not know.
    #[error(
        "table inet nsport has layout {found}, newer than this nsport knows (layout {known}): \
         nothing was changed; upgrade nsport to change it"
    )]
    NewerLayout { found: u32, known: u32 },
    #[error("invalid mappings file: {0}")]
    File(String),
}

impl Error {
    /// Whether the error is the user's input rather than the system's state (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Spec(_)
                | Error::Namespace(NamespaceError::NotFound(_) | NamespaceError::NotANamespace(_))
                | Error::NoAddress(_)
                | Error::FamilyMismatch { .. }
                | Error::IfaceTooLong(_)
                | Error::BadIfaceName(_)
                | Error::LoopbackVia(_)
                | Error::OnLoopback(_)
                | Error::LoopbackOn { .. }
                | Error::BadHostAddr { .. }
                | Error::BadNetnsName(..)
                | Error::NoSuchIface(_)
                | Error::TargetIsLocal(_)
                | Error::BadTarget { .. }
                | Error::NotLocal(_)
                | Error::Duplicate { .. }
                | Error::NotPublished(_)
                | Error::File(_)
                | Error::Prefix(_)
        )
    }

    /// Whether trying the same command again later may succeed without anything else
    /// changing: the ruleset was busy, or the kernel ran out of buffer room.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Busy { .. } => true,
            Error::Netlink(error) => matches!(
                error.errno(),
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EBUSY | libc::EINTR)
            ),
            Error::RolledBack(inner) => inner.is_transient(),
            _ => false,
        }
    }
}

/// An error and every cause after it, joined as `{:#}` joins an anyhow chain: a change
/// taken back says what failed, not only at which step ("cannot set hairpin mode of
/// bridge port v1: the kernel refused the change: No such device").
fn with_causes(error: &Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// Turns EPERM from the kernel into the message a user can act on.
pub(crate) fn kernel(error: NetlinkError) -> Error {
    match error.errno() {
        Some(errno @ (libc::EPERM | libc::EACCES)) => {
            Error::Permission(io::Error::from_raw_os_error(errno))
        }
        _ => Error::Netlink(error),
    }
}

/// The same for the record of changed settings, which only root may write.
pub(crate) fn state(path: PathBuf) -> impl FnOnce(io::Error) -> Error {
    move |error| match error.kind() {
        io::ErrorKind::PermissionDenied => Error::Permission(error),
        _ => Error::State { path, error },
    }
}
