//! nftables over netlink: encoding `crate::ruleset` values with libnftnl, sending them in
//! one generation-checked batch, matching every answer to its sequence number, and reading
//! tables back.
//!
//! - `encode`: the checks every length passes before libnftnl sees it, and the objects;
//!   `expr`: the expressions of rules;
//! - `batch`: `Change`, the byte-bounded split into messages, the batch frame, `commit`
//!   and `generation`;
//! - `dump`: reading tables, chains, sets, elements and rules back, and `rule_exprs_text`,
//!   the canonical text a written and a dumped rule compare equal by;
//! - `ruleset_dump`: the rules of other tables as structured expressions, for `doctor`.

mod batch;
mod dump;
mod encode;
mod expr;
#[cfg(test)]
mod fuzz;
mod ruleset_dump;

pub use batch::{Change, commit, commit_to, generation, next_generation};
pub use dump::{
    ChainDump, ElementDump, RuleDump, chain_exists, dump_base_chains, dump_chains, dump_elements,
    dump_family_rules, dump_rules, get_element, rule_exprs_text, set_exists, table_exists,
    table_userdata,
};
pub use encode::{
    COMMENT_MAX, ELEMENT_USERDATA_MAX, MESSAGE_BUDGET, NAME_MAX, USERDATA_MAX, VALUE_MAX,
};
pub use ruleset_dump::{Expr, RulesetRule, dump_table_exprs};
