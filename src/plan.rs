//! What a command would change, written as nft commands: what `--dry-run` prints and what
//! `export --nft` builds on.

use crate::ruleset::{self, Element, TABLE};

/// The table's creation as a preview shows it: `ruleset::table_script` without the
/// `delete table` that makes that script safe to load twice. A preview of the first
/// publish creates a table that is not there; there is nothing to delete.
pub fn creation_script() -> String {
    let script = ruleset::table_script();
    let replace = format!("table inet {TABLE}\ndelete table inet {TABLE}\n\n");
    match script.strip_prefix(&replace) {
        Some(rest) => rest.to_string(),
        None => script,
    }
}

/// The changes one command makes to `table inet nsport`, and the settings it would touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The table does not exist yet and would be created, rules and all.
    pub create_table: bool,
    pub delete_table: bool,
    pub delete: Vec<Element>,
    pub add: Vec<Element>,
    /// Other changes (sysctls, hairpin mode), one line each.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        !self.create_table && !self.delete_table && self.delete.is_empty() && self.add.is_empty()
    }

    /// The plan as an `nft -f` script, the other changes as comments.
    pub fn nft(&self) -> String {
        let mut out = String::new();
        if self.create_table {
            out.push_str(&creation_script());
        }
        if self.delete_table {
            out.push_str(&format!("delete table inet {TABLE}\n"));
        }
        for element in &self.delete {
            out.push_str(&element.nft_delete());
            out.push('\n');
        }
        for element in &self.add {
            out.push_str(&element.nft_add());
            out.push('\n');
        }
        for note in &self.notes {
            out.push_str(&format!("# {note}\n"));
        }
        if out.is_empty() {
            out.push_str("# nothing to change\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_publish_previews_creation_without_a_delete() {
        let plan = Plan {
            create_table: true,
            ..Plan::default()
        };
        let text = plan.nft();
        assert!(text.starts_with("table inet nsport {\n"), "{text}");
        assert!(!text.contains("delete"), "{text}");
    }
}
