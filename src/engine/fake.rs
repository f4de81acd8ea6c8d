//! An in-memory `table inet nsport` that keeps the nftables semantics the engine relies
//! on, for tests without root: batches apply whole or not at all; a stale generation is
//! refused whole; an element added over one with other data is EEXIST, and so is any
//! existing element created exclusively; deleting what is not there is ENOENT; a refusal
//! names the index of the change. An interval map (`is_range_set`) refuses, as the kernel's
//! pipapo sets do, an interval that starts or ends inside another (EEXIST, unless it is the
//! same one with the same data and not created exclusively), and takes one that encloses
//! another whole; a lookup of one key finds the interval that holds it, and so does a
//! deletion. `between_read_and_commit` lets a test play another writer
//! that gets in after the engine read and before it commits.

use std::collections::BTreeMap;
use std::io;

use super::kernel::Kernel;
use crate::netlink::NetlinkError;
use crate::netlink::nftables::{ChainDump, Change, ElementDump, RuleDump};
use crate::ruleset::{Element, RuleDef, TABLE, is_range_set};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeChain {
    pub hook: Option<u32>,
    pub policy: u32,
    pub rules: Vec<String>,
}

/// An element's data and comment, by key; in a set of intervals, by the key and its end
/// one after the other (`stored_key`).
pub type FakeSet = BTreeMap<Vec<u8>, (Vec<u8>, Option<String>)>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeTable {
    pub chains: BTreeMap<String, FakeChain>,
    pub sets: BTreeMap<String, FakeSet>,
    /// The last key of each interval of an interval map, by set and first key.
    pub ends: BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl FakeTable {
    /// The first key of the interval of `set` that holds `key`, or that overlaps
    /// `key..=end`.
    fn holding(&self, set: &str, key: &[u8], end: &[u8]) -> Option<Vec<u8>> {
        let ends = self.ends.get(set)?;
        let (start, last) = ends.range(..=compared(end)).next_back()?;
        (*last >= compared(key)).then(|| compared(start))
    }
}

/// A range map's key as the fake compares it: the kernel compares each field of a
/// concatenation by itself, and in nsport's intervals only the port varies, so comparing
/// the protocol before the port, bytes after bytes, finds the intervals the kernel would.
/// The keys put the port first (`key_order`): the two last 4-byte fields are swapped, and
/// swapping them again gives the key back. `ends` is kept in this form.
fn compared(key: &[u8]) -> Vec<u8> {
    let mut out = key.to_vec();
    if let Some(at) = key.len().checked_sub(8) {
        out[at..].rotate_left(4);
    }
    out
}

type Meddler = Box<dyn FnMut(&mut Fake)>;

#[derive(Default)]
pub struct Fake {
    pub generation: u32,
    pub table: Option<FakeTable>,
    /// Run once per commit, before the generation is checked: another writer.
    pub between_read_and_commit: Option<Meddler>,
    pub commits: usize,
    pub refused_stale: usize,
    /// How often the generation was asked for.
    pub generation_reads: usize,
    /// Refusals name the first change of the refused element's message, as kernels
    /// before 5.19 do: one message holds every element of a set.
    pub refusals_name_the_message: bool,
    /// Sets whose dump fails the test: a change that must not read every mapping.
    pub forbidden_dumps: Vec<&'static str>,
    /// How many times the chains' rules were read: a change that trusted its last
    /// verification reads none.
    pub rule_dumps: usize,
    /// How many reads of anything but the generation were made: base chains, rules, set
    /// dumps and element lookups.
    pub reads: usize,
    /// The counts this host's settings record would keep.
    pub counts: Option<super::counts::Counts>,
}

/// The allow-lists' sets are intervals in several dimensions at once (ports and
/// addresses): the fake keeps each element by its key and end one after the other
/// (`stored_key`), and relies on the engine never writing two that overlap.
fn is_allow_set(set: &str) -> bool {
    matches!(
        set,
        crate::ruleset::SET_LIMITED | crate::ruleset::SET_ALLOW4 | crate::ruleset::SET_ALLOW6
    )
}

/// How the fake keys an element: its key and, in an allow-list's set, its end after it.
fn stored_key(element: &Element) -> Vec<u8> {
    [
        element.key.as_slice(),
        element.key_end.as_deref().unwrap_or_default(),
    ]
    .concat()
}

/// A stored key of an allow-list's set as the kernel gives it back: key and end.
fn split_key(stored: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let half = stored.len() / 2;
    (stored[..half].to_vec(), stored[half..].to_vec())
}

fn refused(index: usize, errno: i32) -> NetlinkError {
    NetlinkError::Kernel {
        index: Some(index),
        error: io::Error::from_raw_os_error(errno),
    }
}

impl Fake {
    /// Applies one batch to a copy of the table, as the kernel would.
    fn apply(&self, changes: &[Change<'_>]) -> Result<Option<FakeTable>, NetlinkError> {
        let mut table = self.table.clone();
        for (index, change) in changes.iter().enumerate() {
            let fail = |errno| Err(refused(index, errno));
            match change {
                Change::AddTable { exclusive } => match &table {
                    Some(_) if *exclusive => return fail(libc::EEXIST),
                    Some(_) => {}
                    None => table = Some(FakeTable::default()),
                },
                Change::DelTable => {
                    if table.take().is_none() {
                        return fail(libc::ENOENT);
                    }
                }
                other => {
                    let Some(table) = table.as_mut() else {
                        return fail(libc::ENOENT);
                    };
                    if let Err(errno) = Self::apply_to_table(table, other) {
                        return fail(errno);
                    }
                }
            }
        }
        Ok(table)
    }

    fn apply_to_table(table: &mut FakeTable, change: &Change<'_>) -> Result<(), i32> {
        let set = |table: &mut FakeTable, element: &Element| {
            table
                .sets
                .get_mut(element.set)
                .map(|_| ())
                .ok_or(libc::ENOENT)
        };
        match change {
            Change::AddChain(chain) => {
                let entry = table.chains.entry(chain.name.to_string()).or_default();
                if let Some((hook, _, _)) = chain.base {
                    entry.hook = Some(hook.number());
                    entry.policy = 1;
                }
            }
            Change::DelChain(chain) => {
                table.chains.remove(chain.name).ok_or(libc::ENOENT)?;
            }
            Change::FlushChain(chain) => {
                table
                    .chains
                    .get_mut(chain.name)
                    .ok_or(libc::ENOENT)?
                    .rules
                    .clear();
            }
            Change::AddSet(def) => {
                table.sets.entry(def.name.to_string()).or_default();
            }
            Change::AddRule(rule) => {
                let text = crate::netlink::nftables::rule_exprs_text(rule);
                table
                    .chains
                    .get_mut(rule.chain)
                    .ok_or(libc::ENOENT)?
                    .rules
                    .push(text);
            }
            Change::AddElement(element) | Change::CreateElement(element)
                if is_range_set(element.set) =>
            {
                set(table, element)?;
                let exclusive = matches!(change, Change::CreateElement(_));
                let end = element
                    .key_end
                    .clone()
                    .unwrap_or_else(|| element.key.clone());
                let data = element.data.clone().unwrap_or_default();
                let held = (table.holding(element.set, &element.key, &element.key))
                    .or_else(|| table.holding(element.set, &end, &end));
                match held {
                    Some(start) => {
                        let same = start == element.key
                            && table.ends[element.set][&compared(&start)] == compared(&end)
                            && table.sets[element.set][&start].0 == data;
                        if exclusive || !same {
                            return Err(libc::EEXIST);
                        }
                    }
                    None => {
                        let elements = table.sets.get_mut(element.set).expect("checked");
                        elements.insert(element.key.clone(), (data, element.comment.clone()));
                        let ends = table.ends.entry(element.set.to_string()).or_default();
                        ends.insert(compared(&element.key), compared(&end));
                    }
                }
            }
            Change::DelElement(element) if is_range_set(element.set) => {
                set(table, element)?;
                let start = table
                    .holding(element.set, &element.key, &element.key)
                    .ok_or(libc::ENOENT)?;
                table
                    .sets
                    .get_mut(element.set)
                    .expect("checked")
                    .remove(&start);
                table
                    .ends
                    .get_mut(element.set)
                    .expect("held")
                    .remove(&compared(&start));
            }
            Change::AddElement(element) | Change::CreateElement(element) => {
                set(table, element)?;
                let exclusive = matches!(change, Change::CreateElement(_));
                let elements = table.sets.get_mut(element.set).expect("checked");
                let data = element.data.clone().unwrap_or_default();
                let key = stored_key(element);
                match elements.get(&key) {
                    Some(_) if exclusive => return Err(libc::EEXIST),
                    Some((old, _)) if *old != data => return Err(libc::EEXIST),
                    Some(_) => {}
                    None => {
                        elements.insert(key, (data, element.comment.clone()));
                    }
                }
            }
            Change::DelElement(element) => {
                set(table, element)?;
                let elements = table.sets.get_mut(element.set).expect("checked");
                elements.remove(&stored_key(element)).ok_or(libc::ENOENT)?;
            }
            Change::AddTable { .. } | Change::DelTable => unreachable!("handled by apply"),
        }
        Ok(())
    }

    /// Commits a batch outside the engine, as another writer would (no generation check).
    pub fn commit_as_other(&mut self, changes: &[Change<'_>]) {
        let table = self
            .apply(changes)
            .expect("the other writer's batch applies");
        self.table = table;
        self.generation += 1;
    }

    pub fn forbid_dumps_of(&mut self, set: &'static str) {
        self.forbidden_dumps.push(set);
    }

    pub fn elements_of(&self, set: &str) -> FakeSet {
        self.table
            .as_ref()
            .and_then(|t| t.sets.get(set))
            .cloned()
            .unwrap_or_default()
    }

    /// The last key of the interval starting at `key`, for an element of an interval map.
    fn end_of(&self, set: &str, key: &[u8]) -> Vec<u8> {
        self.table
            .as_ref()
            .and_then(|t| t.ends.get(set))
            .and_then(|ends| ends.get(&compared(key)))
            .map(|last| compared(last))
            .unwrap_or_default()
    }
}

impl Kernel for Fake {
    fn generation(&mut self) -> Result<u32, NetlinkError> {
        self.generation_reads += 1;
        Ok(self.generation)
    }

    fn base_chains(&mut self) -> Result<Vec<ChainDump>, NetlinkError> {
        self.reads += 1;
        Ok(self
            .table
            .iter()
            .flat_map(|table| &table.chains)
            .filter_map(|(name, chain)| {
                Some(ChainDump {
                    family: libc::NFPROTO_INET as u32,
                    table: TABLE.to_string(),
                    name: name.clone(),
                    hook: chain.hook?,
                    policy: chain.policy,
                })
            })
            .collect())
    }

    fn rules(&mut self) -> Result<Vec<RuleDump>, NetlinkError> {
        self.rule_dumps += 1;
        self.reads += 1;
        let mut out = Vec::new();
        for (name, chain) in self.table.iter().flat_map(|table| &table.chains) {
            for (handle, exprs) in chain.rules.iter().enumerate() {
                out.push(RuleDump {
                    chain: name.clone(),
                    handle: handle as u64,
                    exprs: exprs.clone(),
                });
            }
        }
        Ok(out)
    }

    fn elements(&mut self, set: &'static str) -> Result<Vec<ElementDump>, NetlinkError> {
        self.reads += 1;
        assert!(
            !self.forbidden_dumps.contains(&set),
            "{set} was dumped whole"
        );
        Ok(self
            .elements_of(set)
            .into_iter()
            .map(|(key, (data, comment))| match is_allow_set(set) {
                true => {
                    let (key, key_end) = split_key(key);
                    ElementDump {
                        key,
                        key_end,
                        data,
                        comment,
                        counter: None,
                    }
                }
                false => ElementDump {
                    key_end: self.end_of(set, &key),
                    key,
                    data,
                    comment,
                    counter: None,
                },
            })
            .collect())
    }

    fn element(
        &mut self,
        set: &'static str,
        key: &[u8],
    ) -> Result<Option<ElementDump>, NetlinkError> {
        self.reads += 1;
        let start = match is_range_set(set) {
            true => self.table.as_ref().and_then(|t| t.holding(set, key, key)),
            false => Some(key.to_vec()),
        };
        let Some(start) = start else {
            return Ok(None);
        };
        Ok(self
            .elements_of(set)
            .remove(&start)
            .map(|(data, comment)| ElementDump {
                key_end: self.end_of(set, &start),
                key: start.clone(),
                data,
                comment,
                counter: None,
            }))
    }

    fn commit(&mut self, changes: &[Change<'_>], genid: Option<u32>) -> Result<(), NetlinkError> {
        if let Some(mut meddle) = self.between_read_and_commit.take() {
            meddle(self);
            self.between_read_and_commit = Some(meddle);
        }
        if genid.is_some_and(|genid| genid != self.generation) {
            self.refused_stale += 1;
            return Err(NetlinkError::Stale);
        }
        let table = self.apply(changes).map_err(|error| match error {
            NetlinkError::Kernel {
                index: Some(index),
                error,
            } if self.refusals_name_the_message => NetlinkError::Kernel {
                index: Some(first_of_message(changes, index)),
                error,
            },
            other => other,
        })?;
        // The kernel bumps the generation only for a batch that made a transaction: one
        // that adds what is there already (a table, a chain, an element with its data)
        // leaves it where it was. A rule is a transaction whatever it says.
        let changed =
            table != self.table || changes.iter().any(|c| matches!(c, Change::AddRule(_)));
        self.table = table;
        if changed {
            self.generation = crate::netlink::nftables::next_generation(self.generation);
        }
        self.commits += 1;
        Ok(())
    }

    fn rule_text(&self, rule: &RuleDef) -> String {
        crate::netlink::nftables::rule_exprs_text(rule)
    }
}

/// The first change of the message `changes[index]` is encoded in: elements of one set in
/// a row share a message.
fn first_of_message(changes: &[Change<'_>], mut index: usize) -> usize {
    fn set(change: &Change<'_>) -> Option<(u8, &'static str)> {
        match change {
            Change::AddElement(e) => Some((0, e.set)),
            Change::CreateElement(e) => Some((1, e.set)),
            Change::DelElement(e) => Some((2, e.set)),
            _ => None,
        }
    }
    while index > 0
        && set(&changes[index]).is_some()
        && set(&changes[index - 1]) == set(&changes[index])
    {
        index -= 1;
    }
    index
}
