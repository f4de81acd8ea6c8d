//! Network namespaces given by name (`ip netns add`) or by path (`/proc/PID/ns/net`).
//!
//! Reading a namespace's address needs a netlink socket inside it. nsport opens that socket
//! on a short-lived scoped thread that enters the namespace with setns(); the main thread,
//! and so every other socket nsport opens, stays in the namespace it started in.

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns};

use crate::netlink::{NetlinkError, rtnetlink};

/// Where `ip netns add NAME` mounts its namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// An opened network namespace.
#[derive(Debug)]
pub struct Namespace {
    /// As the user gave it: a name under /run/netns or a path.
    pub name: String,
    pub inode: u64,
    file: File,
}

/// Why a namespace could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("network namespace {0:?} does not exist")]
    NotFound(String),
    #[error(
        "{0:?} is not a network namespace (expected a name under /run/netns or a path such as /proc/PID/ns/net)"
    )]
    NotANamespace(String),
    #[error("cannot open network namespace {name:?}")]
    Open {
        name: String,
        #[source]
        error: io::Error,
    },
    #[error("cannot enter network namespace {name:?}")]
    Enter {
        name: String,
        #[source]
        error: io::Error,
    },
    #[error("cannot read the addresses of network namespace {name:?}")]
    Read {
        name: String,
        #[source]
        error: NetlinkError,
    },
}

/// An address nsport publishes to, as read inside the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceTarget {
    pub addr: IpAddr,
    /// The index, in the peer namespace, of the veth peer of the interface holding `addr`.
    pub peer_ifindex: Option<u32>,
}

impl Namespace {
    pub fn open(name: &str) -> Result<Namespace, NamespaceError> {
        let path = if name.contains('/') {
            PathBuf::from(name)
        } else if name.is_empty() || name == "." || name == ".." {
            return Err(NamespaceError::NotFound(name.to_string()));
        } else {
            PathBuf::from(NETNS_RUN_DIR).join(name)
        };
        let file = File::open(&path).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound
            | io::ErrorKind::InvalidFilename
            | io::ErrorKind::NotADirectory => NamespaceError::NotFound(name.to_string()),
            _ => NamespaceError::Open {
                name: name.to_string(),
                error,
            },
        })?;
        // A namespace file is on nsfs; anything else (a regular file, a directory) is the
        // user's mistake, named as such rather than as the EINVAL setns() would give.
        match nix::sys::statfs::fstatfs(&file) {
            Ok(fs) if fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {}
            Ok(_) => return Err(NamespaceError::NotANamespace(name.to_string())),
            Err(_) => {}
        }
        let inode = file
            .metadata()
            .map_err(|error| NamespaceError::Open {
                name: name.to_string(),
                error,
            })?
            .ino();
        Ok(Namespace {
            name: name.to_string(),
            inode,
            file,
        })
    }

    /// Runs `work` on a thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, NamespaceError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                        NamespaceError::Enter {
                            name: self.name.clone(),
                            error: errno.into(),
                        }
                    })?;
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The first global-scope IPv4 address and the first global-scope IPv6 address on a
    /// non-loopback interface of the namespace, IPv4 first; none, one or both.
    pub fn targets(&self) -> Result<Vec<NamespaceTarget>, NamespaceError> {
        let read = self.run(|| -> Result<_, NetlinkError> {
            let links = rtnetlink::links()?;
            let addrs = rtnetlink::addresses()?;
            let first = |ipv6: bool| {
                addrs.iter().find_map(|addr| {
                    let link = links.iter().find(|link| link.index == addr.ifindex)?;
                    (addr.global && !link.is_loopback && addr.addr.is_ipv6() == ipv6).then_some(
                        NamespaceTarget {
                            addr: addr.addr,
                            peer_ifindex: link.peer,
                        },
                    )
                })
            };
            Ok([first(false), first(true)].into_iter().flatten().collect())
        })?;
        read.map_err(|error| NamespaceError::Read {
            name: self.name.clone(),
            error,
        })
    }
}

/// Whether a network namespace with this nsfs inode still exists: some process is in it,
/// or a mount under /run/netns holds it. A namespace held only by an open descriptor is
/// not seen, which errs on the side of keeping what would otherwise be removed only when
/// that inode is reused.
pub fn inode_is_alive(inode: u64) -> bool {
    let mounted = std::fs::read_dir(NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| std::fs::metadata(entry.path()).is_ok_and(|m| m.ino() == inode));
    mounted
        || std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .any(|entry| {
                std::fs::metadata(entry.path().join("ns/net")).is_ok_and(|m| m.ino() == inode)
            })
}

/// The names under /run/netns by the inode of the namespace each holds.
pub fn names_by_inode() -> std::collections::HashMap<u64, String> {
    std::fs::read_dir(NETNS_RUN_DIR)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let inode = std::fs::metadata(entry.path()).ok()?.ino();
                    Some((inode, entry.file_name().to_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}
