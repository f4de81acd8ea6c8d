//! The engine's only way to the nftables side of the kernel: a small trait with the real
//! netlink implementation here and an in-memory fake (`fake.rs`) for tests that need no
//! root. Everything the engine plans from is read through it, and every change goes
//! through one `commit`, which the kernel applies whole or not at all.

use crate::netlink::NetlinkError;
use crate::netlink::nftables::{self, ChainDump, Change, ElementDump, RuleDump};
use crate::ruleset::{RuleDef, TABLE};

/// What the engine reads from and writes to nftables.
pub trait Kernel {
    /// The ruleset generation: every committed batch, by anyone, changes it.
    fn generation(&mut self) -> Result<u32, NetlinkError>;
    /// Every base chain of every table (hook, policy): whether nsport's table and its base
    /// chains exist, and which other tables drop forwarded traffic.
    fn base_chains(&mut self) -> Result<Vec<ChainDump>, NetlinkError>;
    /// Every rule of `table inet nsport`, with its expressions as canonical text; empty
    /// when there is no table.
    fn rules(&mut self) -> Result<Vec<RuleDump>, NetlinkError>;
    /// Every element of one set or map of the table; empty when it does not exist.
    fn elements(&mut self, set: &'static str) -> Result<Vec<ElementDump>, NetlinkError>;
    /// The one element of a set or map with this key, if there is one.
    fn element(
        &mut self,
        set: &'static str,
        key: &[u8],
    ) -> Result<Option<ElementDump>, NetlinkError>;
    /// Applies `changes` as one batch, refused whole with `NetlinkError::Stale` when
    /// `genid` is given and the ruleset is no longer at that generation.
    fn commit(&mut self, changes: &[Change<'_>], genid: Option<u32>) -> Result<(), NetlinkError>;
    /// The user data of `table inet nsport`, where its layout is recorded: `None` when
    /// there is no table. Tables made here record the current layout.
    fn table_userdata(&mut self) -> Result<Option<Vec<u8>>, NetlinkError> {
        Ok(Some(crate::ruleset::layout_userdata()))
    }
    /// Whether a set of the table exists (layout 1's `ifaces`, say).
    fn set_exists(&mut self, _set: &str) -> Result<bool, NetlinkError> {
        Ok(false)
    }
    /// The canonical text of a rule's expressions, as `rules` reports a rule.
    fn rule_text(&self, rule: &RuleDef) -> String {
        nftables::rule_exprs_text(rule)
    }
}

/// The kernel itself, over netlink.
#[derive(Debug, Default)]
pub struct Netlink;

impl Kernel for Netlink {
    fn generation(&mut self) -> Result<u32, NetlinkError> {
        nftables::generation()
    }

    fn base_chains(&mut self) -> Result<Vec<ChainDump>, NetlinkError> {
        nftables::dump_base_chains()
    }

    fn rules(&mut self) -> Result<Vec<RuleDump>, NetlinkError> {
        nftables::dump_rules(TABLE)
    }

    fn elements(&mut self, set: &'static str) -> Result<Vec<ElementDump>, NetlinkError> {
        nftables::dump_elements(set)
    }

    fn element(
        &mut self,
        set: &'static str,
        key: &[u8],
    ) -> Result<Option<ElementDump>, NetlinkError> {
        nftables::get_element(set, key)
    }

    fn commit(&mut self, changes: &[Change<'_>], genid: Option<u32>) -> Result<(), NetlinkError> {
        nftables::commit(changes, genid)
    }

    fn table_userdata(&mut self) -> Result<Option<Vec<u8>>, NetlinkError> {
        nftables::table_userdata()
    }

    fn set_exists(&mut self, set: &str) -> Result<bool, NetlinkError> {
        nftables::set_exists(set)
    }
}
