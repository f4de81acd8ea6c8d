//! The kernel settings nsport changed outside its table, with the values it found, so that
//! removing the last mapping that needed one, or `flush`, puts it back.
//!
//! The record lives in a small file under /run/nsport (tmpfs: it goes with a reboot, as the
//! settings do), named by the network namespace's cookie. It must live outside the table:
//! when someone deletes the table (`nft flush ruleset`), the record is how nsport knows that
//! route_localnet is left on without its guard, and what to reset it to.
//!
//! Every command that changes anything holds the namespace's writer lock (a separate
//! `.lock` file, flock'ed) from its first read to its last write, so nsport processes never
//! interleave their table changes and settings. The record itself is replaced atomically:
//! the new text goes into a spare file beside it (`.json.next`), which is then exchanged
//! with the record in one rename. A crash or a full /run leaves either the old record or
//! the new one, never a torn one, and a setting that exposes something is written only
//! after the record of its old value is.
//!
//! The record is written, not synced to disk: what it describes (sysctls, hairpin modes,
//! the namespace itself) lives in the kernel and goes with a reboot, so the only crash it
//! must survive is nsport's own, which the page cache already does. Syncing cost 3-12 ms a
//! change on an ext4 /run, and replacing the record with a new file cost up to 4 ms more
//! (freeing the old file's block issues a discard when /run is mounted with `discard`);
//! exchanging with a spare frees nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where the records live; tests point it elsewhere with `NSPORT_STATE_DIR`.
const DEFAULT_DIR: &str = "/run/nsport";

/// A bridge port whose hairpin mode nsport turned on, for the targets behind it (both
/// addresses of a dual-stack namespace): it goes back when none of them is published.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HairpinChange {
    #[serde(default)]
    pub targets: BTreeSet<IpAddr>,
    /// The one target an older record names.
    #[serde(default, skip_serializing)]
    pub target: Option<IpAddr>,
    pub was_on: bool,
    /// The index of the port nsport turned on (older records have none). A port of the
    /// same name with another index was made again since, and is not nsport's to put back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
}

impl HairpinChange {
    /// Whether any of the port's targets is still published.
    pub fn needed_by(&self, targets: &BTreeSet<IpAddr>) -> bool {
        self.targets
            .iter()
            .chain(&self.target)
            .any(|t| targets.contains(t))
    }
}

/// What nsport changed, and what was there before.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Originals {
    /// Interface name to its route_localnet value before nsport set it to 1.
    #[serde(default)]
    pub route_localnet: BTreeMap<String, String>,
    /// Bridge port name to its hairpin mode before nsport turned it on.
    #[serde(default)]
    pub hairpin: BTreeMap<String, HairpinChange>,
    /// Other settings (forwarding, accept_ra) by their path under /proc/sys, with the
    /// value before nsport changed them.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// How many mappings need each helper element, at the generation nsport's last
    /// change made (see the engine's `counts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<RecordedCounts>,
}

/// Helper element counts as recorded: `SET/HEXKEY` to mappings and loopback users.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedCounts {
    pub genid: u32,
    pub helpers: BTreeMap<String, [u32; 2]>,
    /// What else is known of the table at that generation (absent in records of nsport
    /// before it, and when no table was left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<RecordedTable>,
}

/// The table's layout, its maps' sizes by name, and the other firewalls' warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedTable {
    pub layout: u32,
    pub sizes: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<String>>,
}

impl Originals {
    /// Whether nsport changed no setting that must go back.
    pub fn changes_nothing(&self) -> bool {
        self.route_localnet.is_empty() && self.hairpin.is_empty() && self.sysctls.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.changes_nothing() && self.counts.is_none()
    }
}

/// The directory of the records.
pub fn dir() -> PathBuf {
    std::env::var_os("NSPORT_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// This namespace's record as it is now, read without the lock: a hint for a read-only
/// command, which takes the lock and reads it again before it acts. `None` when there is
/// none, or it cannot be read or parsed (a corrupt record is left to a change to report).
pub fn peek() -> Option<Originals> {
    let cookie = crate::netlink::netns_cookie().ok()?;
    let text = fs::read(file_of(&dir(), cookie, "json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// One of the files a namespace's cookie names in the state directory: its lock, its
/// record, its inode.
fn file_of(dir: &Path, cookie: u64, suffix: &str) -> PathBuf {
    dir.join(format!("netns-{cookie}.{suffix}"))
}

/// The writer lock of this network namespace, held until dropped.
pub struct WriterLock {
    _file: Flock<File>,
    /// The cookie of the namespace the lock was taken in, which names its files.
    cookie: u64,
    lock_path: PathBuf,
    record_path: PathBuf,
}

/// How a record was found.
#[derive(Debug)]
pub enum Loaded {
    /// Read whole (or absent, which is an empty record).
    Read(Originals),
    /// There but unreadable; the text is kept beside it with `.corrupt` appended.
    Corrupt { path: PathBuf, error: String },
}

impl WriterLock {
    /// Takes this namespace's writer lock, waiting for any other nsport holding it.
    ///
    /// The lock file is never removed while another process could be waiting on it: after
    /// taking the lock, the path is checked to still name the locked file, and the lock is
    /// taken again on the new file when a `flush` removed the old one in between.
    pub fn take() -> io::Result<WriterLock> {
        let dir = dir();
        let cookie = crate::netlink::netns_cookie()?;
        let lock_path = file_of(&dir, cookie, "lock");
        let record_path = file_of(&dir, cookie, "json");
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock_path)
        };
        loop {
            // The directory is made when it is missing, not asked for on every command.
            let file = match open() {
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir)?;
                    open()?
                }
                other => other?,
            };
            let file = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno)?;
            let locked = file.metadata()?;
            match fs::metadata(&lock_path) {
                Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {
                    return Ok(WriterLock {
                        _file: file,
                        cookie,
                        lock_path,
                        record_path,
                    });
                }
                // Removed or replaced while we waited: lock the file the path names now.
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
    }

    pub fn record_path(&self) -> &Path {
        &self.record_path
    }

    /// Reads the record. A missing file is an empty record; an unreadable one is moved
    /// aside and reported, so that the caller can fall back to safe values and say so.
    pub fn load(&self) -> io::Result<Loaded> {
        let text = match fs::read(&self.record_path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(Loaded::Read(Originals::default()));
            }
            Err(error) => return Err(error),
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(Loaded::Read(Originals::default()));
        }
        match serde_json::from_slice(&text) {
            Ok(originals) => Ok(Loaded::Read(originals)),
            Err(error) => {
                let mut aside = self.record_path.clone().into_os_string();
                aside.push(".corrupt");
                fs::rename(&self.record_path, &aside)?;
                Ok(Loaded::Corrupt {
                    path: self.record_path.clone(),
                    error: error.to_string(),
                })
            }
        }
    }

    /// Replaces the record atomically; an empty record removes the file.
    pub fn save(&self, originals: &Originals) -> io::Result<()> {
        if originals.is_empty() {
            return match fs::remove_file(&self.record_path) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
        }
        let text = serde_json::to_vec(originals).map_err(io::Error::other)?;
        let spare = self.spare_path();
        // The spare holds an older record (or a torn write of a crashed nsport): it is
        // overwritten in place, so that its block is reused rather than freed.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&spare)?;
        file.write_all(&text)?;
        file.set_len(text.len() as u64)?;
        drop(file);
        match exchange(&spare, &self.record_path) {
            Ok(()) => Ok(()),
            // No record yet, or a filesystem that cannot exchange: a plain rename.
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ENOENT | libc::EINVAL | libc::ENOSYS)
                ) =>
            {
                fs::rename(&spare, &self.record_path)
            }
            Err(error) => Err(error),
        }
    }

    /// The spare file the next record is written into before it takes the record's place.
    fn spare_path(&self) -> PathBuf {
        let mut spare = self.record_path.clone().into_os_string();
        spare.push(".next");
        PathBuf::from(spare)
    }

    /// Removes the lock file and the record, for `flush` once nothing is left to put back.
    /// Safe while others wait on the lock: they notice the file is gone and lock anew.
    pub fn remove_files(self) -> io::Result<()> {
        for path in [&self.record_path, &self.spare_path()] {
            match fs::remove_file(path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        let mut inode = self.lock_path.clone();
        inode.set_extension("inode");
        let _ = fs::remove_file(inode);
        match fs::remove_file(&self.lock_path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// Removes the records and locks of network namespaces that no longer exist: a record is
/// only useful while its namespace lives, since the settings it names go with it.
///
/// Records name namespaces by cookie, which cannot be looked up; each namespace's
/// `netns-COOKIE.inode` file holds the inode of its nsfs file instead, and `alive` says
/// whether a namespace with that inode is still held by a process or a mount.
pub fn remove_records_of_gone_namespaces(alive: &dyn Fn(u64) -> bool) -> io::Result<usize> {
    let mut removed = 0;
    let Ok(entries) = fs::read_dir(dir()) else {
        return Ok(0);
    };
    let own = crate::netlink::netns_cookie()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(cookie) = name
            .to_str()
            .and_then(|n| n.strip_prefix("netns-"))
            .and_then(|n| n.strip_suffix(".inode"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if cookie == own {
            continue;
        }
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(inode) = text.trim().parse::<u64>() else {
            continue;
        };
        if alive(inode) {
            continue;
        }
        for suffix in ["json", "json.next", "lock", "inode", "json.corrupt"] {
            let _ = fs::remove_file(file_of(&dir(), cookie, suffix));
        }
        removed += 1;
    }
    Ok(removed)
}

/// Swaps the names of two files in one step (`renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .map_err(io::Error::from)
}

/// Notes which namespace inode the namespace of `lock` has, so that a later
/// `remove_records_of_gone_namespaces` can tell whether it still exists. The cookie is the
/// lock's, read once per command.
pub fn note_namespace_inode(lock: &WriterLock) -> io::Result<()> {
    let cookie = lock.cookie;
    let path = file_of(&dir(), cookie, "inode");
    if path.exists() {
        return Ok(());
    }
    // The calling thread's namespace, whose cookie names the file: a library user's
    // thread may be in another namespace than the process's first thread.
    let inode = fs::metadata("/proc/thread-self/ns/net")?.ino();
    fs::write(path, format!("{inode}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer lock on files in a fresh directory of its own.
    fn lock_in(dir: &Path) -> WriterLock {
        fs::create_dir_all(dir).unwrap();
        let lock_path = dir.join("netns-1.lock");
        let file = File::create(&lock_path).unwrap();
        WriterLock {
            _file: Flock::lock(file, FlockArg::LockExclusive).unwrap(),
            cookie: 1,
            lock_path,
            record_path: dir.join("netns-1.json"),
        }
    }

    fn originals(iface: &str) -> Originals {
        let mut originals = Originals::default();
        originals
            .route_localnet
            .insert(iface.to_string(), "0".to_string());
        originals
    }

    #[test]
    fn each_save_replaces_the_record_and_flush_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("nsport-state-test-{}", std::process::id()));
        let lock = lock_in(&dir);
        // A longer record, then shorter ones: the spare's old bytes must not show through.
        let long = "a-rather-long-interface-name-that-makes-the-record-longer";
        for iface in [long, "br0", "v1", "br0"] {
            lock.save(&originals(iface)).unwrap();
            match lock.load().unwrap() {
                Loaded::Read(read) => assert_eq!(read, originals(iface)),
                Loaded::Corrupt { error, .. } => panic!("after saving {iface}: {error}"),
            }
        }
        // The previous record is the spare, kept for the next save to overwrite.
        assert!(dir.join("netns-1.json.next").exists());
        lock.save(&Originals::default()).unwrap();
        assert!(!dir.join("netns-1.json").exists());
        lock.save(&originals("br0")).unwrap();
        lock.remove_files().unwrap();
        let left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir(&dir).unwrap();
    }
}
