//! The table's layout version, and taking an older table to the current layout.
//!
//! A table records the layout it was written in as its comment, `nsport-layout=N`
//! (nftables' table user data), set when the table is created. The kernel keeps a table's
//! user data from its creation on and ignores it when a table that exists is added again,
//! so the record cannot be forged by adding the table and cannot be changed in place: a
//! table changes layout only by being made anew. Tables written before layouts were
//! recorded carry no comment: layout 1 had the set `ifaces`, layout 2 has not.
//!
//! Every command reads the layout with the chains (`table::read`):
//! - the current layout: nothing to do;
//! - an older one: the first change (add, rm, apply, prune, the CNI plugin, or
//!   `nsport migrate`) rebuilds the table in the current layout, in the same
//!   generation-checked batch as the change itself: the table is deleted and made again
//!   with every mapping (its host side, target, options and metadata, the comment written
//!   in the current form), the helper elements derived from the mappings, and the
//!   families the old table kept closed. The kernel applies the batch whole, so no packet
//!   sees a half-migrated table, and established connections keep their NAT in conntrack.
//!   The mappings' packet and byte counters start again from zero;
//! - a newer one: every change is refused, naming both layouts; `ls` lists what it can
//!   read, marked, and repairs nothing.

use serde::Serialize;

use super::kernel::Kernel;
use super::table::Declarations;
use crate::error::{Error, kernel};
use crate::netlink::nftables::{Change, ElementDump};
use crate::ruleset::{self, Element, LAYOUT, Mapping, SET_CLOSED};

/// The set of layout 1 that named every interface toward a target.
pub const SET_IFACES_V1: &str = "ifaces";

/// The layout of a table that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub version: u32,
    /// Whether the table records it (`nsport-layout=N`), or it was inferred from the sets
    /// of a table written before layouts were recorded.
    pub recorded: bool,
}

impl Layout {
    /// The layout this nsport writes.
    pub fn current() -> Layout {
        Layout {
            version: LAYOUT,
            recorded: true,
        }
    }

    pub fn is_current(&self) -> bool {
        self.version == LAYOUT
    }

    /// Older than this nsport writes: the next change migrates it.
    pub fn is_older(&self) -> bool {
        self.version < LAYOUT
    }

    /// Newer than this nsport knows: it must not change the table.
    pub fn is_newer(&self) -> bool {
        self.version > LAYOUT
    }

    /// Refuses a change to a table of a newer layout.
    pub fn check_changeable(&self) -> Result<(), Error> {
        if self.is_newer() {
            return Err(Error::NewerLayout {
                found: self.version,
                known: LAYOUT,
            });
        }
        Ok(())
    }

    /// What `ls` and `doctor` say about it; `None` for the current layout.
    pub fn note(&self) -> Option<String> {
        if self.is_newer() {
            Some(format!(
                "table inet nsport has layout {}, newer than this nsport knows (layout {LAYOUT}): \
                 listed as far as this nsport can read it; upgrade nsport to change it",
                self.version
            ))
        } else if self.is_older() {
            Some(format!(
                "table inet nsport has layout {} (this nsport writes layout {LAYOUT}): the next \
                 change, or nsport migrate, rebuilds it in layout {LAYOUT} in one batch",
                self.version
            ))
        } else {
            None
        }
    }
}

/// Reads the layout of `table inet nsport`, which exists: the one its comment records, or
/// else 1 when it has the set `ifaces` and 2 when it has not.
pub fn read(kernel: &mut impl Kernel) -> Result<Layout, Error> {
    let userdata = kernel.table_userdata().map_err(self::kernel_error)?;
    if let Some(version) = userdata.as_deref().and_then(ruleset::layout_of_userdata) {
        return Ok(Layout {
            version,
            recorded: true,
        });
    }
    let v1 = kernel
        .set_exists(SET_IFACES_V1)
        .map_err(self::kernel_error)?;
    Ok(Layout {
        version: if v1 { 1 } else { 2 },
        recorded: false,
    })
}

fn kernel_error(error: crate::netlink::NetlinkError) -> Error {
    kernel(error)
}

/// A mapping element of a layout-1 table. Its key and data are those of today; its comment
/// holds the same fields (`via= netns= ino= direct=allow cni=ID/IF`) with every value as it
/// is, not encoded. A mapping to an address given with `--to` was protected from direct
/// access then; such targets are always reachable directly now, and say so.
pub fn v1_mapping(set: &str, element: &ElementDump) -> Option<Mapping> {
    let mut mapping = Mapping::from_element(set, &element.key, &[], &element.data, None)?;
    for field in element.comment.as_deref().unwrap_or_default().split(' ') {
        match field.split_once('=') {
            Some(("via", value)) => mapping.via = value.to_string(),
            Some(("netns", value)) => mapping.netns = Some(value.to_string()),
            Some(("ino", value)) => mapping.netns_inode = value.parse().ok(),
            Some(("direct", "allow")) => mapping.allow_direct = true,
            Some(("cni", value)) => {
                let (id, ifname) = value.rsplit_once('/').unwrap_or((value, ""));
                mapping.container = Some(id.to_string());
                mapping.container_ifname = Some(ifname.to_string()).filter(|i| !i.is_empty());
            }
            _ => {}
        }
    }
    if mapping.netns.is_none() && mapping.container.is_none() {
        mapping.allow_direct = true;
    }
    Some(mapping.as_recorded())
}

/// The elements of a table rebuilt in the current layout.
pub struct Rebuild {
    elements: Vec<Element>,
}

impl Rebuild {
    /// The table holding exactly `mappings`, their helpers, and the families closed in
    /// the old table (read from its `closed` set, if it had one).
    pub fn new(kernel: &mut impl Kernel, mappings: &[Mapping]) -> Result<Rebuild, Error> {
        let mut elements: Vec<Element> = mappings.iter().map(Element::mapping).collect();
        elements.extend(ruleset::allow_elements_for(mappings));
        elements.extend(
            super::table::helpers_for(mappings)
                .into_iter()
                .map(|(element, _)| element),
        );
        for closed in kernel.elements(SET_CLOSED).map_err(self::kernel_error)? {
            elements.push(Element::closed(
                closed.key.first() == Some(&(libc::NFPROTO_IPV6 as u8)),
            ));
        }
        Ok(Rebuild { elements })
    }

    /// One batch: the old table deleted and the new one made, with its comment, chains,
    /// sets, rules and elements. The kernel applies it whole or not at all.
    pub fn changes<'a>(&'a self, declarations: &'a Declarations) -> Vec<Change<'a>> {
        let mut changes = vec![Change::DelTable, Change::AddTable { exclusive: false }];
        changes.extend(declarations.chains().iter().map(Change::AddChain));
        changes.extend(declarations.sets().iter().map(Change::AddSet));
        changes.extend(declarations.rules().iter().map(Change::AddRule));
        changes.extend(self.elements.iter().map(Change::AddElement));
        changes
    }
}

/// The note a plan carries when its change migrates the table.
pub fn migration_note(from: u32) -> String {
    format!(
        "rebuild table inet nsport from layout {from} in layout {LAYOUT}, in the same batch \
         (every mapping kept; packet and byte counters start again)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(comment: &str) -> ElementDump {
        ElementDump {
            key: vec![6, 0, 0, 0, 0x0b, 0xb8, 0, 0],
            key_end: Vec::new(),
            data: vec![172, 18, 0, 2, 0x0b, 0xb8, 0, 0],
            comment: Some(comment.to_string()),
            counter: None,
        }
    }

    #[test]
    fn layout_1_comments_read_as_they_were_written() {
        let m = v1_mapping("any4", &element("via=br0 netns=ns1 ino=42")).unwrap();
        assert_eq!(m.via, "br0");
        assert_eq!(m.netns.as_deref(), Some("ns1"));
        assert_eq!(m.netns_inode, Some(42));
        assert!(!m.allow_direct);
        assert_eq!(m.comment(), "via=br0 netns=ns1 ino=42");
        // A --to target is always allowed directly now.
        let to = v1_mapping("any4", &element("via=v3")).unwrap();
        assert!(to.allow_direct);
        assert_eq!(to.comment(), "via=v3 direct=allow");
        // CNI: the container's ID and interface; a value that layout 2 encodes.
        let cni = v1_mapping(
            "any4",
            &element("via=cni0 netns=/run/netns/c%1 ino=7 cni=abc/eth0"),
        )
        .unwrap();
        assert_eq!(cni.container.as_deref(), Some("abc"));
        assert_eq!(cni.container_ifname.as_deref(), Some("eth0"));
        assert_eq!(cni.netns.as_deref(), Some("/run/netns/c%1"));
        assert_eq!(
            cni.comment(),
            "via=cni0 netns=/run/netns/c%251 ino=7 cni=abc/eth0"
        );
    }

    #[test]
    fn the_table_comment_names_the_layout() {
        assert_eq!(
            ruleset::layout_of_userdata(&ruleset::layout_userdata()),
            Some(LAYOUT)
        );
        let other = b"\x00\x10nsport-layout=7\x00";
        assert_eq!(ruleset::layout_of_userdata(other), Some(7));
        assert_eq!(ruleset::layout_of_userdata(b"\x00\x04abc\x00"), None);
        assert_eq!(ruleset::layout_of_userdata(b""), None);
    }
}
