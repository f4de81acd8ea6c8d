//! The kernel settings nsport changed outside its table, with the values it found, so that
//! removing the last mapping that needed one, or `flush`, puts it back.
//!
//! The record lives in a small file under /run/nsport (tmpfs: it goes with a reboot, as the
//! settings do), named by the network namespace's cookie, and is read and written under an
//! exclusive lock. It must live outside the table: when someone deletes the table
//! (`nft flush ruleset`), the record is how nsport knows that route_localnet is left on
//! without its guard, and what to reset it to.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

/// Where the records live; tests point it elsewhere with `NSPORT_STATE_DIR`.
const DEFAULT_DIR: &str = "/run/nsport";

/// A bridge port whose hairpin mode nsport turned on for `target`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HairpinChange {
    pub target: IpAddr,
    pub was_on: bool,
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
}

impl Originals {
    pub fn is_empty(&self) -> bool {
        self.route_localnet.is_empty() && self.hairpin.is_empty()
    }
}

/// The locked record of this network namespace; the lock is released on drop.
pub struct Record {
    file: Flock<File>,
    path: PathBuf,
    /// As read, so that saving an unchanged record writes nothing.
    read: Originals,
    pub originals: Originals,
}

impl Record {
    /// Opens and locks this namespace's record, waiting for any other nsport holding it.
    pub fn lock() -> io::Result<Record> {
        let dir = std::env::var_os("NSPORT_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("netns-{}.json", crate::netlink::netns_cookie()?));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut file = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let originals = if text.trim().is_empty() {
            Originals::default()
        } else {
            serde_json::from_str(&text).map_err(io::Error::other)?
        };
        Ok(Record {
            file,
            path,
            read: originals.clone(),
            originals,
        })
    }

    /// Writes the record back when it changed; an empty record removes the file.
    pub fn save(mut self) -> io::Result<()> {
        if self.originals.is_empty() {
            return match fs::remove_file(&self.path) {
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            };
        }
        if self.originals == self.read {
            return Ok(());
        }
        let text = serde_json::to_string(&self.originals).map_err(io::Error::other)?;
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(text.as_bytes())
    }
}
