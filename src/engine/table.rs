//! Reading the table at one generation: whether it exists, whether its chains hold exactly
//! the rules nsport writes (the guard and the forward protections among them), its mappings
//! and its helper elements. What the engine plans from is read here, and the generation
//! read first is the one its batch is committed against.

use std::cell::OnceCell;
use std::collections::{BTreeSet, HashMap, HashSet};

use super::counts::{Counts, Users};
use super::kernel::Kernel;
use super::layout::{self, Layout, SET_IFACES_V1};
use crate::error::{Error, kernel};
use crate::model::SourcePrefix;
use crate::netlink::nftables::{ChainDump, Change, ElementDump};
use crate::ruleset::{
    self, ChainDef, Element, KeyOrder, Mapping, RuleDef, SET_ADDR4, SET_ADDR6, SET_ADDRRANGE4,
    SET_ADDRRANGE6, SET_ALLOW4, SET_ALLOW6, SET_ANY4, SET_ANY6, SET_HAIRPIN4, SET_HAIRPIN6,
    SET_INSIDE, SET_LIMITED, SET_ON4, SET_ON6, SET_ONADDR4, SET_ONADDR6, SET_RANGE4, SET_RANGE6,
    SET_REACH4, SET_REACH6, SET_TARGETS4, SET_TARGETS6, SetDef, TABLE,
};
use crate::spec::Proto;

/// The maps that hold mappings.
pub const MAPPING_SETS: [&str; 12] = [
    SET_ANY4,
    SET_ADDR4,
    SET_ON4,
    SET_ONADDR4,
    SET_RANGE4,
    SET_ADDRRANGE4,
    SET_ANY6,
    SET_ADDR6,
    SET_ON6,
    SET_ONADDR6,
    SET_RANGE6,
    SET_ADDRRANGE6,
];
/// The sets derived from the mappings: one element per target (or target and interface),
/// so reading them costs what the number of targets does, not the number of mappings.
pub const HELPER_SETS: [&str; 7] = [
    SET_HAIRPIN4,
    SET_REACH4,
    SET_TARGETS4,
    SET_HAIRPIN6,
    SET_REACH6,
    SET_TARGETS6,
    SET_INSIDE,
];

/// Packets and bytes.
pub type Counter = (u64, u64);

/// A helper element by identity: its set and key.
pub type HelperKey = (&'static str, Vec<u8>);

/// The table as read at generation `genid`.
pub struct Snapshot {
    pub genid: u32,
    /// Whether `table inet nsport` exists (every nsport table has base chains).
    pub exists: bool,
    /// The layout it is written in (the current one when there is no table). Chains are
    /// judged, and helpers read, only in the current layout.
    pub layout: Layout,
    /// Chains that are missing or hold other rules, hook or policy than nsport writes.
    pub damaged: Vec<&'static str>,
    /// Every base chain of every table, for the other-firewalls warning; `None` when the
    /// counts' facts stood for them (`read_trusting`).
    pub chains: Option<Vec<ChainDump>>,
    /// The mappings with their counters, when asked for.
    pub mappings: Vec<(Mapping, Counter)>,
    /// The helper elements there are, when the mappings were read.
    pub helpers: HashSet<HelperKey>,
    /// The elements of the source allow-lists there are (`limited`, `allow4`, `allow6`),
    /// when the mappings were read; each mapping carries its port's list.
    pub allow_elements: Vec<Element>,
}

/// The layout that brought the source allow-lists.
const ALLOW_LAYOUT: u32 = 3;

/// Each limited span of host ports' list of sources, by protocol and first and last port.
pub type AllowLists = HashMap<(Proto, u16, u16), Vec<SourcePrefix>>;

/// The allow-list elements of a table, and each limited span's list, from a dump of the
/// allow sets: `limited` names the spans, `allow4`/`allow6` their prefixes.
/// A table of an older layout is read in its own key order, to be migrated.
pub fn read_allow_lists(
    kernel: &mut impl Kernel,
    layout: u32,
) -> Result<(Vec<Element>, AllowLists), Error> {
    let order = KeyOrder::of_layout(layout);
    let mut elements = Vec::new();
    let mut lists = AllowLists::new();
    let limited = limited_ports_in(kernel, order)?;
    for &(proto, first, last) in &limited {
        lists.entry((proto, first, last)).or_default();
        elements.push(Element::limited(proto, first, last));
    }
    for set in [SET_ALLOW4, SET_ALLOW6] {
        for element in kernel.elements(set).map_err(self::kernel_error)? {
            if let Some((proto, first, last, source)) =
                Element::allowed(&element.key, &element.key_end, order)
            {
                elements.push(Element::allow(proto, first, last, source));
                lists.entry((proto, first, last)).or_default().push(source);
            }
        }
    }
    // Prefixes of ports missing from `limited` restrict nothing in the kernel: such ports
    // are listed as open, and the next change deletes the strays.
    lists.retain(|span, _| limited.contains(span));
    for list in lists.values_mut() {
        *list = crate::model::canonical(list);
    }
    Ok((elements, lists))
}

/// The spans of host ports that have an allow-list, read from `limited` alone: what a
/// change that does not read every mapping must know to leave lists to a full read.
pub fn limited_ports(kernel: &mut impl Kernel) -> Result<HashSet<(Proto, u16, u16)>, Error> {
    limited_ports_in(kernel, KeyOrder::of_layout(ruleset::LAYOUT))
}

fn limited_ports_in(
    kernel: &mut impl Kernel,
    order: KeyOrder,
) -> Result<HashSet<(Proto, u16, u16)>, Error> {
    Ok(kernel
        .elements(SET_LIMITED)
        .map_err(self::kernel_error)?
        .iter()
        .filter_map(|element| Element::limited_ports(&element.key, &element.key_end, order))
        .collect())
}

/// The interfaces the table names (in its `reach` elements), for the safe fallback when
/// the settings record is unreadable.
pub fn table_interfaces(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .helpers
        .iter()
        .filter(|(set, _)| matches!(*set, SET_REACH4 | SET_REACH6 | SET_INSIDE | SET_IFACES_V1))
        .filter_map(|(_, key)| key.get(..ruleset::IFNAME_LEN))
        .map(|name| {
            let name = name.split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(name).into_owned()
        })
        .collect()
}

/// Reads the generation, then the table's chains and rules and, with `with_mappings`,
/// every element (mappings and helpers): all of it at that generation unless a commit
/// against it is refused.
pub fn read(kernel: &mut impl Kernel, with_mappings: bool) -> Result<Snapshot, Error> {
    read_trusting(kernel, with_mappings, None)
}

/// `read`, trusting what nsport's own last change left while the ruleset is still at the
/// generation of `counts`. That change checked every chain by content and repaired any that
/// differed in its batch, and any commit by anyone since would have moved the generation
/// on: the chains' rules are not read again (the dearest read of a publish, 0.5 ms of 1.3
/// here). When the counts also carry the table's facts, neither are the table and every
/// table's base chains: the snapshot says the table exists in the layout they name, and
/// `chains` is `None`.
pub fn read_trusting(
    kernel: &mut impl Kernel,
    with_mappings: bool,
    counts: Option<&Counts>,
) -> Result<Snapshot, Error> {
    let genid = kernel.generation().map_err(self::kernel_error)?;
    let trusted = counts.filter(|counts| counts.genid == genid);
    if !with_mappings
        && let Some(facts) = trusted.and_then(|counts| counts.facts.as_ref())
        && facts.layout == ruleset::LAYOUT
    {
        return Ok(Snapshot {
            genid,
            exists: true,
            layout: Layout::current(),
            damaged: Vec::new(),
            chains: None,
            mappings: Vec::new(),
            helpers: HashSet::new(),
            allow_elements: Vec::new(),
        });
    }
    let chains = kernel.base_chains().map_err(self::kernel_error)?;
    let exists = chains
        .iter()
        .any(|chain| chain.family == libc::NFPROTO_INET as u32 && chain.table == TABLE);
    let layout = match exists {
        true => layout::read(kernel)?,
        false => Layout::current(),
    };
    // Another layout's chains are not damaged for holding other rules than this one's.
    let damaged = if exists && layout.is_current() && trusted.is_none() {
        damaged_chains(kernel, &chains)?
    } else {
        Vec::new()
    };
    let mut mappings = Vec::new();
    let mut helpers = HashSet::new();
    // Only a full read needs the helpers: adding one that is there changes nothing, and a
    // removal by key goes by the counts. Layout 1's interfaces count as helpers too, for
    // the fallback of an unreadable settings record.
    if with_mappings && exists {
        let v1: &[&'static str] = if layout.version == 1 {
            &[SET_IFACES_V1]
        } else {
            &[]
        };
        for &set in HELPER_SETS.iter().chain(v1) {
            for element in kernel.elements(set).map_err(self::kernel_error)? {
                helpers.insert((set, element.key));
            }
        }
    }
    if with_mappings && exists {
        for set in MAPPING_SETS {
            for element in kernel.elements(set).map_err(self::kernel_error)? {
                let mapping = match layout.version {
                    1 => layout::v1_mapping(set, &element),
                    version => mapping_in(KeyOrder::of_layout(version), set, &element),
                };
                if let Some(mapping) = mapping {
                    mappings.push((mapping, element.counter.unwrap_or_default()));
                }
            }
        }
        mappings.sort_by(|(a, _), (b, _)| {
            (a.is_ipv6(), a.proto, a.host_addr, a.host_port, &a.on).cmp(&(
                b.is_ipv6(),
                b.proto,
                b.host_addr,
                b.host_port,
                &b.on,
            ))
        });
    }
    let mut allow_elements = Vec::new();
    if with_mappings && exists && layout.version >= ALLOW_LAYOUT {
        let (elements, lists) = read_allow_lists(kernel, layout.version)?;
        allow_elements = elements;
        for (mapping, _) in &mut mappings {
            if let Some(list) = lists.get(&mapping.port_span()) {
                mapping.allow_from = list.clone();
            }
        }
    }
    Ok(Snapshot {
        genid,
        exists,
        layout,
        damaged,
        chains: Some(chains),
        mappings,
        helpers,
        allow_elements,
    })
}

fn kernel_error(error: crate::netlink::NetlinkError) -> Error {
    kernel(error)
}

pub fn mapping_of(set: &str, element: &ElementDump) -> Option<Mapping> {
    mapping_in(KeyOrder::of_layout(ruleset::LAYOUT), set, element)
}

/// The same in a table whose range maps' keys are in `order` (an older layout's).
fn mapping_in(order: KeyOrder, set: &str, element: &ElementDump) -> Option<Mapping> {
    Mapping::from_element_in(
        order,
        set,
        &element.key,
        &element.key_end,
        &element.data,
        element.comment.as_deref(),
    )
}

/// The chains of the table whose content is not what nsport writes: a base chain missing,
/// on another hook or with a policy other than accept, or any chain whose rules differ
/// from nsport's in number, order or any expression.
fn damaged_chains(
    kernel: &mut impl Kernel,
    chains: &[ChainDump],
) -> Result<Vec<&'static str>, Error> {
    const NF_ACCEPT: u32 = 1;
    let rules = kernel.rules().map_err(self::kernel_error)?;
    let expected_rules = ruleset::rules();
    let mut damaged = Vec::new();
    for chain in ruleset::chains() {
        let base_ok = match chain.base {
            None => true,
            Some((hook, _, _)) => chains.iter().any(|dump| {
                dump.family == libc::NFPROTO_INET as u32
                    && dump.table == TABLE
                    && dump.name == chain.name
                    && dump.hook == hook.number()
                    && dump.policy == NF_ACCEPT
            }),
        };
        let found = rules
            .iter()
            .filter(|rule| rule.chain == chain.name)
            .map(|rule| rule.exprs.as_str());
        let wanted: Vec<String> = expected_rules
            .iter()
            .filter(|rule| rule.chain == chain.name)
            .map(|rule| kernel.rule_text(rule))
            .collect();
        if !base_ok || !found.eq(wanted.iter().map(String::as_str)) {
            damaged.push(chain.name);
        }
    }
    Ok(damaged)
}

/// The table's declarations, built once per command and only when a change needs them
/// (a new table, a repair, a migration): changes borrow from it. A publish into a table
/// that is as nsport left it needs none, and building every rule with its text costs
/// more than the rest of its planning.
#[derive(Default)]
pub struct Declarations {
    built: OnceCell<Built>,
}

struct Built {
    chains: Vec<ChainDef>,
    sets: Vec<SetDef>,
    rules: Vec<RuleDef>,
}

impl Declarations {
    pub fn new() -> Declarations {
        Declarations::default()
    }

    fn built(&self) -> &Built {
        self.built.get_or_init(|| Built {
            chains: ruleset::chains(),
            sets: ruleset::sets(),
            rules: ruleset::rules(),
        })
    }

    pub fn chains(&self) -> &[ChainDef] {
        &self.built().chains
    }

    pub fn sets(&self) -> &[SetDef] {
        &self.built().sets
    }

    pub fn rules(&self) -> &[RuleDef] {
        &self.built().rules
    }

    /// The changes that create the table, or restore the chains in `damaged`: every
    /// declaration is added (adding what exists changes nothing), and each damaged chain is
    /// emptied and given its rules again, in the same batch as the change they protect.
    pub fn repairs<'a>(&'a self, snapshot: &Snapshot) -> Vec<Change<'a>> {
        if snapshot.exists && snapshot.damaged.is_empty() {
            return Vec::new();
        }
        let rewrite: Vec<&'static str> = match snapshot.exists {
            true => snapshot.damaged.clone(),
            false => self.chains().iter().map(|chain| chain.name).collect(),
        };
        let mut changes = vec![Change::AddTable { exclusive: false }];
        changes.extend(self.chains().iter().map(Change::AddChain));
        changes.extend(self.sets().iter().map(Change::AddSet));
        for chain in self.chains().iter().filter(|c| rewrite.contains(&c.name)) {
            if snapshot.exists {
                changes.push(Change::FlushChain(chain));
            }
        }
        changes.extend(
            self.rules()
                .iter()
                .filter(|rule| rewrite.contains(&rule.chain))
                .map(Change::AddRule),
        );
        changes
    }
}

/// The helper elements `mappings` need, each with how many of them need it: the target's
/// hairpin pair, the target behind its interface, and the target protected from direct
/// access (unless every mapping to it allows direct access). In first-seen order.
pub fn helpers_for<'a>(mappings: impl IntoIterator<Item = &'a Mapping>) -> Vec<(Element, Users)> {
    let mut index: HashMap<HelperKey, usize> = HashMap::new();
    let mut helpers: Vec<(Element, Users)> = Vec::new();
    // The mappings of a range share their target, interface and options: a run of
    // mappings that need the same helpers counts them again without building them.
    let mut last: Option<(&Mapping, Vec<(usize, u32)>)> = None;
    for mapping in mappings {
        if !last
            .as_ref()
            .is_some_and(|(previous, _)| same_helpers(previous, mapping))
        {
            let uses: Vec<(usize, u32)> = needed_helpers(mapping)
                .into_iter()
                .map(|(element, loopback)| {
                    let at = *index
                        .entry((element.set, element.key.clone()))
                        .or_insert_with(|| {
                            helpers.push((element, Users::default()));
                            helpers.len() - 1
                        });
                    (at, loopback)
                })
                .collect();
            last = Some((mapping, uses));
        }
        let (_, uses) = last.as_ref().expect("set above");
        for &(at, loopback) in uses {
            helpers[at].1.mappings += 1;
            helpers[at].1.loopback += loopback;
        }
    }
    helpers
}

/// The helpers one mapping needs, each with whether the mapping serves the host's loopback
/// through it (1 or 0).
fn needed_helpers(mapping: &Mapping) -> Vec<(Element, u32)> {
    let loopback = u32::from(mapping.serves_loopback());
    let mut needed = vec![
        (Element::hairpin(mapping.to_addr), 0),
        (Element::reach(&mapping.via, mapping.to_addr), loopback),
    ];
    if !mapping.allow_direct {
        needed.push((Element::target(mapping.to_addr), 0));
    }
    // The interface toward a namespace (not toward a host nsport only forwards to) is
    // one that new forwarded connections may come from.
    if mapping.netns.is_some() || mapping.container.is_some() {
        needed.push((Element::inside(&mapping.via), 0));
    }
    needed
}

/// Whether two mappings need the same helpers: every field `needed_helpers` reads.
fn same_helpers(a: &Mapping, b: &Mapping) -> bool {
    a.to_addr == b.to_addr
        && a.via == b.via
        && a.allow_direct == b.allow_direct
        && a.serves_loopback() == b.serves_loopback()
        && (a.netns.is_some() || a.container.is_some())
            == (b.netns.is_some() || b.container.is_some())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    /// `helpers_for` one mapping at a time, merged: no run of mappings to reuse.
    fn one_by_one(mappings: &[Mapping]) -> Vec<(Element, Users)> {
        let mut merged: Vec<(Element, Users)> = Vec::new();
        for mapping in mappings {
            for (element, users) in helpers_for([mapping]) {
                match merged.iter_mut().find(|(e, _)| *e == element) {
                    Some((_, total)) => {
                        total.mappings += users.mappings;
                        total.loopback += users.loopback;
                    }
                    None => merged.push((element, users)),
                }
            }
        }
        merged
    }

    /// Each mapping differs from the one before it in one field that decides its
    /// helpers, or in none (a port of the same range), so a run reused across a change
    /// that matters counts a helper the mapping does not need.
    #[test]
    fn a_run_of_mappings_needs_what_each_needs() {
        let base = Mapping {
            netns: Some("ns1".into()),
            ..Mapping::example()
        };
        let v6: IpAddr = "fd00::2".parse().unwrap();
        let variants = [
            base.clone(),
            Mapping {
                host_port: 8081,
                ..base.clone()
            },
            Mapping {
                to_addr: IpAddr::from([172, 18, 0, 3]),
                ..base.clone()
            },
            Mapping {
                via: "br1".into(),
                ..base.clone()
            },
            Mapping {
                allow_direct: true,
                ..base.clone()
            },
            Mapping {
                netns: None,
                ..base.clone()
            },
            Mapping {
                netns: None,
                container: Some("c1".into()),
                ..base.clone()
            },
            Mapping {
                host_addr: Some(IpAddr::from([192, 0, 2, 1])),
                ..base.clone()
            },
            Mapping {
                on: Some("eth9".into()),
                ..base.clone()
            },
            Mapping {
                to_addr: v6,
                ..base.clone()
            },
        ];
        for first in &variants {
            for second in &variants {
                let pair = [first.clone(), second.clone(), first.clone()];
                assert_eq!(
                    helpers_for(&pair),
                    one_by_one(&pair),
                    "{first:?} {second:?}"
                );
            }
        }
    }
}
