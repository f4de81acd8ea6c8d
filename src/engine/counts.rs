//! How many mappings need each helper element, kept in the settings record rather than in
//! the table.
//!
//! Removing one mapping must know whether another still needs its target's helpers;
//! reading every mapping to find out costs what the number of mappings does. The counts
//! answer it in one lookup. They live in the record, not in the elements' comments,
//! because a comment cannot be changed in place: bumping a count in the table means
//! deleting and adding the element again, and a batch that deletes anything makes the
//! process wait a whole RCU grace period when its netlink socket closes. Publishing, which
//! only ever adds, would pay that on every call.
//!
//! The counts are exact at the generation they name: every nsport change writes them with
//! the generation its own commit made, and the next change trusts them only while the
//! ruleset is still at that generation. Any other writer, a crash between a commit and the
//! record, or an unreadable record, and the next removal reads everything and counts
//! afresh.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::table::{HelperKey, MAPPING_SETS, helpers_for};
use crate::host::settings::StillNeeded;
use crate::host::state::{RecordedCounts, RecordedTable};
use crate::ruleset::{
    Element, IFNAME_LEN, Mapping, SET_HAIRPIN4, SET_HAIRPIN6, SET_LIMITED, SET_REACH4, SET_REACH6,
};

/// How many mappings need a helper element, and how many of those serve the host's
/// 127.0.0.1 (which is what route_localnet on its interface depends on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Users {
    pub mappings: u32,
    pub loopback: u32,
}

impl Users {
    fn plus(self, other: Users) -> Option<Users> {
        Some(Users {
            mappings: self.mappings.checked_add(other.mappings)?,
            loopback: self.loopback.checked_add(other.loopback)?,
        })
    }

    /// `None` below zero: the counts were wrong.
    fn minus(self, other: Users) -> Option<Users> {
        Some(Users {
            mappings: self.mappings.checked_sub(other.mappings)?,
            loopback: self.loopback.checked_sub(other.loopback)?,
        })
    }
}

/// Every helper element's users, exact at generation `genid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub genid: u32,
    pub helpers: HashMap<HelperKey, Users>,
    /// What else nsport's own last change knows of the table, when it left one.
    pub facts: Option<TableFacts>,
}

/// What a publish would otherwise read before its batch, known exactly at the counts'
/// generation: that the table exists in this layout (no table read), how many elements
/// each map of mappings and `limited` holds (an empty map need not be searched for a
/// clash or an overlap), and the other firewalls' warnings (no dump of every table's base
/// chains). Any commit by anyone else moves the generation on, and then they are read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableFacts {
    pub layout: u32,
    pub sizes: HashMap<&'static str, u32>,
    /// The warnings about other tables' forward chains, when they were judged.
    pub warnings: Option<Vec<String>>,
}

impl TableFacts {
    /// The facts of a table of the current layout holding exactly `mappings`.
    pub fn of(mappings: &[Mapping]) -> TableFacts {
        let mut facts = TableFacts {
            layout: crate::ruleset::LAYOUT,
            ..TableFacts::default()
        };
        facts.add(mappings);
        let limited: HashSet<_> = mappings
            .iter()
            .filter(|m| !m.allow_from.is_empty())
            .map(Mapping::port_span)
            .collect();
        if !limited.is_empty() {
            facts.sizes.insert(SET_LIMITED, limited.len() as u32);
        }
        facts
    }

    /// Whether `set` may hold an element: an empty map is not searched.
    pub fn may_hold(&self, set: &str) -> bool {
        self.sizes.get(set).is_some_and(|size| *size > 0)
    }

    /// With the elements of `mappings` added (each a new element).
    pub fn add(&mut self, mappings: &[Mapping]) {
        for mapping in mappings {
            let size = self.sizes.entry(mapping.set()).or_default();
            *size = size.saturating_add(1);
        }
    }

    /// With the elements of `mappings` deleted; `None` when a map would hold fewer than
    /// none, which means the facts were wrong.
    pub fn remove(&mut self, mappings: &[Mapping]) -> Option<()> {
        for mapping in mappings {
            let size = self.sizes.get_mut(mapping.set())?;
            *size = size.checked_sub(1)?;
        }
        Some(())
    }
}

impl Counts {
    /// The counts of exactly `mappings`.
    pub fn of<'a>(mappings: impl IntoIterator<Item = &'a Mapping>, genid: u32) -> Counts {
        Counts {
            genid,
            helpers: helpers_for(mappings)
                .into_iter()
                .map(|(element, users)| ((element.set, element.key), users))
                .collect(),
            facts: None,
        }
    }

    /// The counts if they describe the ruleset at `genid`.
    pub fn valid_at(counts: &Option<Counts>, genid: u32) -> Option<&Counts> {
        counts.as_ref().filter(|counts| counts.genid == genid)
    }

    /// These counts with `mappings` added: returns the helpers that are new.
    pub fn add(&mut self, needed: &[(Element, Users)]) -> Option<Vec<Element>> {
        let mut new = Vec::new();
        for (element, users) in needed {
            let key = (element.set, element.key.clone());
            match self.helpers.get_mut(&key) {
                Some(old) => *old = old.plus(*users)?,
                None => {
                    self.helpers.insert(key, *users);
                    new.push(element.clone());
                }
            }
        }
        Some(new)
    }

    /// These counts with `gone` taken away: returns the helpers no mapping needs any more.
    /// `None` when a count would go below zero, or a helper is not counted at all.
    pub fn remove(&mut self, gone: &[(Element, Users)]) -> Option<Vec<Element>> {
        let mut unneeded = Vec::new();
        for (element, users) in gone {
            let key = (element.set, element.key.clone());
            let left = self.helpers.get(&key)?.minus(*users)?;
            if left.mappings == 0 {
                self.helpers.remove(&key);
                unneeded.push(element.clone());
            } else {
                self.helpers.insert(key, left);
            }
        }
        Some(unneeded)
    }

    /// What the settings must stay on for: route_localnet on interfaces with loopback
    /// users, hairpin mode for targets with mappings, forwarding for families with any.
    pub fn still_needed(&self) -> StillNeeded {
        let mut needed = StillNeeded::default();
        for ((set, key), users) in &self.helpers {
            match *set {
                SET_REACH4 | SET_REACH6 => {
                    if *set == SET_REACH4 {
                        needed.ipv4 = true;
                    } else {
                        needed.ipv6 = true;
                    }
                    if users.loopback > 0 {
                        let name = key[..IFNAME_LEN.min(key.len())]
                            .split(|b| *b == 0)
                            .next()
                            .unwrap_or_default();
                        needed
                            .loopback_vias
                            .insert(String::from_utf8_lossy(name).into_owned());
                    }
                }
                SET_HAIRPIN4 | SET_HAIRPIN6 => {
                    let half = key.len() / 2;
                    let addr = match half {
                        4 => <[u8; 4]>::try_from(&key[..4])
                            .ok()
                            .map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(&key[..16])
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    needed.targets.extend(addr);
                }
                _ => {}
            }
        }
        needed
    }

    /// As the settings record keeps them: `SET/HEXKEY` to mappings and loopback users.
    pub fn to_record(&self) -> RecordedCounts {
        // Every publish writes the record: a helper's key in hex digit by digit, where a
        // `format!` per byte cost half the record's instructions.
        const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
        let helpers: BTreeMap<String, [u32; 2]> = self
            .helpers
            .iter()
            .map(|((set, key), users)| {
                let mut name = String::with_capacity(set.len() + 1 + 2 * key.len());
                name.push_str(set);
                name.push('/');
                for byte in key {
                    name.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
                    name.push(char::from(HEX_DIGITS[usize::from(byte & 0xf)]));
                }
                (name, [users.mappings, users.loopback])
            })
            .collect();
        RecordedCounts {
            genid: self.genid,
            helpers,
            table: self.facts.as_ref().map(|facts| RecordedTable {
                layout: facts.layout,
                sizes: facts
                    .sizes
                    .iter()
                    .filter(|(_, size)| **size > 0)
                    .map(|(set, size)| (set.to_string(), *size))
                    .collect(),
                warnings: facts.warnings.clone(),
            }),
        }
    }

    /// Read back from the record; `None` for anything this nsport did not write.
    pub fn from_record(recorded: &RecordedCounts) -> Option<Counts> {
        let mut helpers = HashMap::new();
        for (name, [mappings, loopback]) in &recorded.helpers {
            let (set, hex) = name.split_once('/')?;
            let set = *super::table::HELPER_SETS.iter().find(|s| **s == set)?;
            if hex.len() % 2 != 0 {
                return None;
            }
            let key: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect();
            helpers.insert(
                (set, key?),
                Users {
                    mappings: *mappings,
                    loopback: *loopback,
                },
            );
        }
        // Facts naming a map this nsport does not know are not this nsport's: the counts
        // stand, the table is read.
        let facts = recorded.table.as_ref().and_then(|table| {
            let mut sizes = HashMap::new();
            for (name, size) in &table.sizes {
                let set = *MAPPING_SETS
                    .iter()
                    .chain(&[SET_LIMITED])
                    .find(|s| **s == name)?;
                sizes.insert(set, *size);
            }
            Some(TableFacts {
                layout: table.layout,
                sizes,
                warnings: table.warnings.clone(),
            })
        });
        Some(Counts {
            genid: recorded.genid,
            helpers,
            facts,
        })
    }
}
