//! An in-memory `table inet nsport` that keeps the nftables semantics the engine relies
//! on, for tests without root: batches apply whole or not at all; a stale generation is
//! refused whole; an element added over one with other data is EEXIST, and so is any
//! existing element created exclusively; deleting what is not there is ENOENT; a refusal
//! names the index of the change. `between_read_and_commit` lets a test play another writer
//! that gets in after the engine read and before it commits.

use std::collections::BTreeMap;
use std::io;

use super::kernel::Kernel;
use crate::netlink::NetlinkError;
use crate::netlink::nftables::{ChainDump, Change, ElementDump, RuleDump};
use crate::ruleset::{Element, RuleDef, TABLE};

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
    /// Sets whose dump fails the test: a change that must not read every mapping.
    pub forbidden_dumps: Vec<&'static str>,
    /// The counts this host's settings record would keep.
    pub counts: Option<super::counts::Counts>,
}

/// How the fake keys an element: a key and, in a set of intervals, its end after it.
fn stored_key(element: &Element) -> Vec<u8> {
    [
        element.key.as_slice(),
        element.key_end.as_deref().unwrap_or_default(),
    ]
    .concat()
}

/// A stored key as the kernel gives it back: the key, and the end of its interval in a
/// set of intervals.
fn split_key(set: &str, stored: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let intervals = crate::ruleset::sets()
        .iter()
        .any(|def| def.name == set && def.intervals.is_some());
    if intervals {
        let half = stored.len() / 2;
        (stored[..half].to_vec(), stored[half..].to_vec())
    } else {
        (stored, Vec::new())
    }
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
}

impl Kernel for Fake {
    fn generation(&mut self) -> Result<u32, NetlinkError> {
        Ok(self.generation)
    }

    fn base_chains(&mut self) -> Result<Vec<ChainDump>, NetlinkError> {
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
        assert!(
            !self.forbidden_dumps.contains(&set),
            "{set} was dumped whole"
        );
        Ok(self
            .elements_of(set)
            .into_iter()
            .map(|(key, (data, comment))| {
                let (key, key_end) = split_key(set, key);
                ElementDump {
                    key,
                    key_end,
                    data,
                    comment,
                    counter: None,
                }
            })
            .collect())
    }

    fn element(
        &mut self,
        set: &'static str,
        key: &[u8],
    ) -> Result<Option<ElementDump>, NetlinkError> {
        Ok(self
            .elements_of(set)
            .remove(key)
            .map(|(data, comment)| ElementDump {
                key: key.to_vec(),
                key_end: Vec::new(),
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
        self.table = self.apply(changes)?;
        self.generation += 1;
        self.commits += 1;
        Ok(())
    }

    fn rule_text(&self, rule: &RuleDef) -> String {
        crate::netlink::nftables::rule_exprs_text(rule)
    }
}
