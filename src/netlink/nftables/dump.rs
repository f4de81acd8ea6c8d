//! Reading nftables back: whether objects exist, base chains of every table, the elements of
//! a set, the chains and rules of a table, and a canonical text of rules for comparing what
//! the kernel holds with what nsport would write.

use std::ffi::CStr;
use std::io;

use nftnl::nftnl_sys::{self as sys, libc};

use super::encode::{
    self, CheckedElement, FAMILY_INET, NF_ACCEPT, Rule, Set, chain_named, comment_from_userdata,
    rule_object, set_named, table_object,
};
use crate::netlink::NetlinkError;
use crate::netlink::socket::{MessageBuffer, exchange};
use crate::ruleset::{Element, RuleDef, TABLE};

/// An element as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementDump {
    pub key: Vec<u8>,
    /// The last key of an interval; empty for an element of a set of single keys.
    pub key_end: Vec<u8>,
    pub data: Vec<u8>,
    pub comment: Option<String>,
    /// Packets and bytes, for an element of a set that counts.
    pub counter: Option<(u64, u64)>,
}

/// A base chain of any table, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDump {
    pub family: u32,
    pub table: String,
    pub name: String,
    pub hook: u32,
    pub policy: u32,
}

/// A rule of an inet table, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDump {
    pub chain: String,
    /// What `nft delete rule … handle N` names it by.
    pub handle: u64,
    /// Its expressions in canonical text: equal to `rule_exprs_text` of the rule nsport
    /// would write exactly when the kernel holds that rule.
    pub exprs: String,
}

/// The most a request can take: a header, a table, chain or set name each at most
/// `NAME_MAX` long (checked by `encode`), an element with a key and a key end of at most
/// `VALUE_MAX` each, and the nests and flags around them, counted generously.
const REQUEST_MAX: usize = encode::MESSAGE_HEADER
    + 3 * encode::attr_size(encode::NAME_MAX + 1)
    + 4 * encode::attr_size(encode::VALUE_MAX)
    + 16 * encode::attr_size(8);
/// The buffer a request is built in: a page, not a maximal message's 68 KiB, which a
/// fresh process would zero (and fault in, page by page) for every request it sends.
const REQUEST_BUFFER: usize = 4096;
const _: () = assert!(REQUEST_MAX <= REQUEST_BUFFER);

/// Builds a request with libnftnl: a header, then what `payload` writes.
///
/// `payload` writes names checked by `encode` and nothing longer than a key, inside
/// `REQUEST_MAX`.
fn build_request(
    kind: i32,
    family: u16,
    dump: bool,
    payload: impl FnOnce(*mut libc::nlmsghdr),
) -> Vec<u8> {
    let flags = if dump {
        libc::NLM_F_DUMP | libc::NLM_F_ACK
    } else {
        libc::NLM_F_ACK
    };
    let mut buffer = MessageBuffer::new(REQUEST_BUFFER);
    // SAFETY: the buffer has room for any request (`REQUEST_MAX`).
    let nlh = unsafe {
        sys::nftnl_nlmsg_build_hdr(buffer.as_mut_ptr(), kind as u16, family, flags as u16, 1)
    };
    payload(nlh);
    // SAFETY: libnftnl wrote the header and the payload it counts.
    let message = unsafe { buffer.message() };
    message.map(<[u8]>::to_vec).unwrap_or_default()
}

/// Whether `table inet nsport` exists.
pub fn table_exists() -> Result<bool, NetlinkError> {
    let table = table_object(TABLE)?;
    let request = build_request(libc::NFT_MSG_GETTABLE, FAMILY_INET, false, |nlh| {
        // SAFETY: `table` is live; the payload fits the buffer.
        unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, table.ptr()) }
    });
    exchange(&request, |_| Ok(()))
}

/// The user data of `table inet nsport` (where nsport records its layout): `None` when
/// there is no table, an empty vector when the table carries none.
pub fn table_userdata() -> Result<Option<Vec<u8>>, NetlinkError> {
    let table = table_object(TABLE)?;
    let request = build_request(libc::NFT_MSG_GETTABLE, FAMILY_INET, false, |nlh| {
        // SAFETY: `table` is live; the payload fits the buffer.
        unsafe { sys::nftnl_table_nlmsg_build_payload(nlh, table.ptr()) }
    });
    let mut userdata = Vec::new();
    let exists = exchange(&request, |message| {
        let parsed = encode::Table::alloc();
        // SAFETY: `message` is one whole netlink message from the kernel, 4-byte aligned in
        // the receive buffer; the table object is ours, and the data libnftnl returns lives
        // as long as it and is `len` bytes long.
        unsafe {
            if sys::nftnl_table_nlmsg_parse(message.as_ptr().cast(), parsed.ptr()) < 0 {
                return Ok(());
            }
            let mut len: u32 = 0;
            let data =
                sys::nftnl_table_get_data(parsed.ptr(), sys::NFTNL_TABLE_USERDATA as u16, &mut len);
            if !data.is_null() {
                userdata = std::slice::from_raw_parts(data.cast::<u8>(), len as usize).to_vec();
            }
        }
        Ok(())
    })?;
    Ok(exists.then_some(userdata))
}

/// Whether set (or map) `name` of `table inet nsport` exists.
pub fn set_exists(name: &str) -> Result<bool, NetlinkError> {
    let set = set_named(TABLE, name, None)?;
    let request = build_request(libc::NFT_MSG_GETSET, FAMILY_INET, false, |nlh| {
        // SAFETY: `set` is live; the payload fits the buffer.
        unsafe { sys::nftnl_set_nlmsg_build_payload(nlh, set.ptr()) }
    });
    exchange(&request, |_| Ok(()))
}

/// Whether chain `name` of `table inet nsport` exists.
pub fn chain_exists(name: &str) -> Result<bool, NetlinkError> {
    let chain = chain_named(TABLE, name)?;
    let request = build_request(libc::NFT_MSG_GETCHAIN, FAMILY_INET, false, |nlh| {
        // SAFETY: `chain` is live; the payload fits the buffer.
        unsafe { sys::nftnl_chain_nlmsg_build_payload(nlh, chain.ptr()) }
    });
    exchange(&request, |_| Ok(()))
}

/// Every chain of every table of `family` (NFPROTO_UNSPEC: all), in one dump, each handed to
/// `on_chain` while libnftnl's object is live.
fn dump_chains_with(
    family: u16,
    mut on_chain: impl FnMut(*mut sys::nftnl_chain),
) -> Result<(), NetlinkError> {
    let request = build_request(libc::NFT_MSG_GETCHAIN, family, true, |_| {});
    exchange(&request, |message| {
        let chain = encode::Chain::alloc();
        // SAFETY: `message` is one whole netlink message from the kernel, 4-byte aligned in
        // the receive buffer; the chain is ours.
        let parsed = unsafe { sys::nftnl_chain_nlmsg_parse(message.as_ptr().cast(), chain.ptr()) };
        if parsed >= 0 {
            on_chain(chain.ptr());
        }
        Ok(())
    })?;
    Ok(())
}

/// A string attribute of a parsed chain, or "" when it is absent.
///
/// # Safety
/// `chain` must be live.
unsafe fn chain_text(chain: *mut sys::nftnl_chain, attr: u32) -> String {
    // SAFETY: the caller guarantees `chain`; libnftnl returns null or a string it owns.
    unsafe {
        let text = sys::nftnl_chain_get_str(chain, attr as u16);
        if text.is_null() {
            String::new()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    }
}

/// Every base chain of every table, in one dump.
pub fn dump_base_chains() -> Result<Vec<ChainDump>, NetlinkError> {
    let mut chains = Vec::new();
    dump_chains_with(libc::NFPROTO_UNSPEC as u16, |ptr| {
        // SAFETY: `ptr` is live for this call.
        unsafe {
            if !sys::nftnl_chain_is_set(ptr, sys::NFTNL_CHAIN_HOOKNUM as u16) {
                return;
            }
            chains.push(ChainDump {
                family: sys::nftnl_chain_get_u32(ptr, sys::NFTNL_CHAIN_FAMILY as u16),
                table: chain_text(ptr, sys::NFTNL_CHAIN_TABLE),
                name: chain_text(ptr, sys::NFTNL_CHAIN_NAME),
                hook: sys::nftnl_chain_get_u32(ptr, sys::NFTNL_CHAIN_HOOKNUM as u16),
                // A base chain without a policy accepts.
                policy: if sys::nftnl_chain_is_set(ptr, sys::NFTNL_CHAIN_POLICY as u16) {
                    sys::nftnl_chain_get_u32(ptr, sys::NFTNL_CHAIN_POLICY as u16)
                } else {
                    NF_ACCEPT
                },
            });
        }
    })?;
    Ok(chains)
}

/// The names of every chain, base or not, of the inet table `table`, in the kernel's order.
/// The kernel does not filter chain dumps by table, so this reads the inet chains of every
/// table and keeps those of `table`; a missing table has none.
pub fn dump_chains(table: &str) -> Result<Vec<String>, NetlinkError> {
    let mut names = Vec::new();
    dump_chains_with(FAMILY_INET, |ptr| {
        // SAFETY: `ptr` is live for this call.
        unsafe {
            if chain_text(ptr, sys::NFTNL_CHAIN_TABLE) == table {
                names.push(chain_text(ptr, sys::NFTNL_CHAIN_NAME));
            }
        }
    })?;
    Ok(names)
}

/// Reads every element of one set or map of `table inet nsport`, in one dump.
/// A missing table or set reads as empty.
pub fn dump_elements(set: &str) -> Result<Vec<ElementDump>, NetlinkError> {
    let handle = set_named(TABLE, set, None)?;
    let request = build_request(libc::NFT_MSG_GETSETELEM, FAMILY_INET, true, |nlh| {
        // SAFETY: `handle` is live; two checked names fit the buffer.
        unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, handle.ptr()) }
    });
    let mut elements = Vec::new();
    exchange(&request, |message| parse_elements(message, &mut elements))?;
    Ok(elements)
}

/// Reads the one element of `set` with this key, if there is one.
pub fn get_element(set: &str, key: &[u8]) -> Result<Option<ElementDump>, NetlinkError> {
    let handle = set_named(TABLE, set, None)?;
    let probe = Element {
        set: "",
        key: key.to_vec(),
        key_end: None,
        data: None,
        comment: None,
    };
    encode::add_element(&handle, &CheckedElement::new(&probe, None)?);
    let request = build_request(libc::NFT_MSG_GETSETELEM, FAMILY_INET, false, |nlh| {
        // SAFETY: `handle` is live; two checked names and one checked key fit the buffer.
        unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, handle.ptr()) }
    });
    let mut elements = Vec::new();
    exchange(&request, |message| parse_elements(message, &mut elements))?;
    Ok(elements.into_iter().next())
}

/// Decodes the elements of one set element message (from the kernel, or one nsport
/// encoded) with libnftnl.
pub(super) fn parse_elements(
    message: &[u8],
    out: &mut Vec<ElementDump>,
) -> Result<(), NetlinkError> {
    let set = Set::alloc();
    // SAFETY: `message` is one whole, 4-byte aligned netlink message.
    let parsed = unsafe { sys::nftnl_set_elems_nlmsg_parse(message.as_ptr().cast(), set.ptr()) };
    if parsed < 0 {
        return Err(NetlinkError::Receive(io::Error::new(
            io::ErrorKind::InvalidData,
            "undecodable set element message",
        )));
    }
    // SAFETY: the iterator and the elements it yields live as long as `set`.
    unsafe {
        let iter = sys::nftnl_set_elems_iter_create(set.ptr());
        // `iter_next` returns the current element and then advances.
        let mut elem = sys::nftnl_set_elems_iter_next(iter);
        while !elem.is_null() {
            let key = elem_attr(elem, sys::NFTNL_SET_ELEM_KEY as u16);
            let key_end = elem_attr(elem, sys::NFTNL_SET_ELEM_KEY_END as u16);
            let data = elem_attr(elem, sys::NFTNL_SET_ELEM_DATA as u16);
            let userdata = elem_attr(elem, sys::NFTNL_SET_ELEM_USERDATA as u16);
            out.push(ElementDump {
                key,
                key_end,
                data,
                comment: comment_from_userdata(&userdata),
                counter: elem_counter(elem),
            });
            elem = sys::nftnl_set_elems_iter_next(iter);
        }
        sys::nftnl_set_elems_iter_destroy(iter);
    }
    Ok(())
}

/// The packets and bytes of an element's counter, its only expression.
///
/// # Safety
/// `elem` must be a live element.
unsafe fn elem_counter(elem: *mut sys::nftnl_set_elem) -> Option<(u64, u64)> {
    let mut len = 0u32;
    // SAFETY: the caller guarantees `elem`; with the attribute set, libnftnl returns the
    // first of the element's expressions, owned by the element.
    unsafe {
        let expr = sys::nftnl_set_elem_get(elem, sys::NFTNL_SET_ELEM_EXPR as u16, &mut len);
        if expr.is_null() {
            return None;
        }
        let expr = expr.cast::<sys::nftnl_expr>();
        Some((
            sys::nftnl_expr_get_u64(expr, sys::NFTNL_EXPR_CTR_PACKETS as u16),
            sys::nftnl_expr_get_u64(expr, sys::NFTNL_EXPR_CTR_BYTES as u16),
        ))
    }
}

/// # Safety
/// `elem` must be a live element.
unsafe fn elem_attr(elem: *mut sys::nftnl_set_elem, attr: u16) -> Vec<u8> {
    let mut len = 0u32;
    // SAFETY: the caller guarantees `elem`; libnftnl returns null or `len` readable bytes.
    unsafe {
        let ptr = sys::nftnl_set_elem_get(elem, attr, &mut len);
        if ptr.is_null() {
            Vec::new()
        } else {
            std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize).to_vec()
        }
    }
}

/// Every rule of the inet table `table`, chain by chain in the kernel's order, in one dump.
/// A missing table has none.
pub fn dump_rules(table: &str) -> Result<Vec<RuleDump>, NetlinkError> {
    dump_family_rules(FAMILY_INET, table)
}

/// The same for a table of any family (`NFPROTO_IPV4`, `NFPROTO_IPV6`, …): what `doctor`
/// reads of other tables' forward chains.
pub fn dump_family_rules(family: u16, table: &str) -> Result<Vec<RuleDump>, NetlinkError> {
    let mut rules = Vec::new();
    each_rule(family, table, |rule| {
        // SAFETY: getters on the rule we own; the chain string is libnftnl's and copied.
        let (chain, handle) = unsafe {
            let chain = sys::nftnl_rule_get_str(rule.ptr(), sys::NFTNL_RULE_CHAIN as u16);
            let chain = if chain.is_null() {
                String::new()
            } else {
                CStr::from_ptr(chain).to_string_lossy().into_owned()
            };
            (
                chain,
                sys::nftnl_rule_get_u64(rule.ptr(), sys::NFTNL_RULE_HANDLE as u16),
            )
        };
        rules.push(RuleDump {
            chain,
            handle,
            exprs: exprs_text(rule),
        });
    })?;
    Ok(rules)
}

/// Every rule of table `table` of `family`, parsed, handed to `each` in the kernel's order,
/// from one dump; a missing table has none.
pub(super) fn each_rule(
    family: u16,
    table: &str,
    mut each: impl FnMut(&Rule),
) -> Result<(), NetlinkError> {
    let request = table_rules_request(family, table)?;
    exchange(&request, |message| {
        let rule = Rule::alloc();
        // SAFETY: `message` is one whole, 4-byte aligned netlink message from the kernel.
        let parsed = unsafe { sys::nftnl_rule_nlmsg_parse(message.as_ptr().cast(), rule.ptr()) };
        if parsed < 0 {
            return Err(NetlinkError::Receive(io::Error::new(
                io::ErrorKind::InvalidData,
                "undecodable rule message",
            )));
        }
        each(&rule);
        Ok(())
    })?;
    Ok(())
}

/// The request that dumps every rule of table `table` of `family`.
pub(super) fn table_rules_request(family: u16, table: &str) -> Result<Vec<u8>, NetlinkError> {
    // A rule naming only its table: the kernel then dumps that table's rules alone.
    let filter = Rule::alloc();
    let name = encode::name("table", table)?;
    // SAFETY: setters on the rule we own; libnftnl copies the string.
    unsafe {
        sys::nftnl_rule_set_str(filter.ptr(), sys::NFTNL_RULE_TABLE as u16, name.as_ptr());
        sys::nftnl_rule_set_u32(
            filter.ptr(),
            sys::NFTNL_RULE_FAMILY as u16,
            u32::from(family),
        );
    }
    Ok(build_request(libc::NFT_MSG_GETRULE, family, true, |nlh| {
        // SAFETY: `filter` is live; one checked name fits the buffer.
        unsafe { sys::nftnl_rule_nlmsg_build_payload(nlh, filter.ptr()) }
    }))
}

/// The canonical text of the expressions of a rule nsport would write, as `RuleDump::exprs`
/// gives them for a rule the kernel holds: the two are equal exactly when the kernel holds
/// this rule. A rule nsport could not encode (a name or value too long) has a text that
/// starts with "unencodable" and equals no dumped rule.
pub fn rule_exprs_text(rule: &RuleDef) -> String {
    match rule_object(TABLE, rule) {
        Ok(object) => exprs_text(&object),
        Err(error) => format!("unencodable: {error}"),
    }
}

/// libnftnl's text of each expression, one per line as `[ name details ]`, which is what
/// `nft --debug=netlink` prints under a rule without its header (family, table, chain,
/// handle, position): the header says where a rule is, not what it does.
///
/// Before printing, each expression is brought to the form the kernel dumps it in, so that
/// a rule built here and the same rule read back print the same: the kernel fills in what
/// a rule may leave out (a lookup's flags, nat's range ends and flags) and counts packets.
fn exprs_text(rule: &Rule) -> String {
    let mut lines = Vec::new();
    // SAFETY: the iterator and the expressions it yields live as long as `rule`, which this
    // function borrows; each is only read and given defaults with libnftnl's setters.
    unsafe {
        let iter = sys::nftnl_expr_iter_create(rule.ptr());
        assert!(!iter.is_null(), "allocation");
        let mut expr = sys::nftnl_expr_iter_next(iter);
        while !expr.is_null() {
            let name = CStr::from_ptr(sys::nftnl_expr_get_str(expr, sys::NFTNL_EXPR_NAME as u16))
                .to_string_lossy()
                .into_owned();
            canonicalize(expr, &name);
            lines.push(format!("[ {name} {}]", expr_text(expr)));
            expr = sys::nftnl_expr_iter_next(iter);
        }
        sys::nftnl_expr_iter_destroy(iter);
    }
    lines.join("\n")
}

/// Gives an expression the attributes the kernel reports whether or not they were sent.
///
/// # Safety
/// `expr` must be a live expression named `name`.
unsafe fn canonicalize(expr: *mut sys::nftnl_expr, name: &str) {
    /// NF_NAT_RANGE_MAP_IPS and NF_NAT_RANGE_PROTO_SPECIFIED, which nft_nat sets itself
    /// when the address and port registers are given.
    const NF_NAT_RANGE_MAP_IPS: u32 = 1;
    const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
    // SAFETY: the caller guarantees `expr`; getters and setters of its own kind.
    unsafe {
        let is_set = |attr: u32| sys::nftnl_expr_is_set(expr, attr as u16);
        let get = |attr: u32| sys::nftnl_expr_get_u32(expr, attr as u16);
        let set = |attr: u32, value: u32| sys::nftnl_expr_set_u32(expr, attr as u16, value);
        match name {
            // nft_lookup dumps its flags even when they are 0.
            "lookup" if !is_set(sys::NFTNL_EXPR_LOOKUP_FLAGS) => {
                set(sys::NFTNL_EXPR_LOOKUP_FLAGS, 0);
            }
            // nft_nat takes a missing range end as equal to the start, and dumps both,
            // with the flags that say a range was given.
            "nat" => {
                let mut flags = if is_set(sys::NFTNL_EXPR_NAT_FLAGS) {
                    get(sys::NFTNL_EXPR_NAT_FLAGS)
                } else {
                    0
                };
                for (min, max, flag) in [
                    (
                        sys::NFTNL_EXPR_NAT_REG_ADDR_MIN,
                        sys::NFTNL_EXPR_NAT_REG_ADDR_MAX,
                        NF_NAT_RANGE_MAP_IPS,
                    ),
                    (
                        sys::NFTNL_EXPR_NAT_REG_PROTO_MIN,
                        sys::NFTNL_EXPR_NAT_REG_PROTO_MAX,
                        NF_NAT_RANGE_PROTO_SPECIFIED,
                    ),
                ] {
                    if is_set(min) {
                        flags |= flag;
                        if !is_set(max) {
                            set(max, get(min));
                        }
                    }
                }
                if flags != 0 {
                    set(sys::NFTNL_EXPR_NAT_FLAGS, flags);
                }
            }
            // Counters count: what a rule does does not change with its traffic.
            "counter" => {
                sys::nftnl_expr_set_u64(expr, sys::NFTNL_EXPR_CTR_PACKETS as u16, 0);
                sys::nftnl_expr_set_u64(expr, sys::NFTNL_EXPR_CTR_BYTES as u16, 0);
            }
            _ => {}
        }
    }
}

/// libnftnl's default text of one expression.
///
/// # Safety
/// `expr` must be a live expression.
unsafe fn expr_text(expr: *mut sys::nftnl_expr) -> String {
    let mut buffer = vec![0u8; 1024];
    loop {
        // SAFETY: libnftnl writes at most `buffer.len()` bytes, NUL included, and returns
        // how long the whole text is.
        let len = unsafe {
            sys::nftnl_expr_snprintf(
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                expr,
                sys::NFTNL_OUTPUT_DEFAULT,
                0,
            )
        };
        let Ok(len) = usize::try_from(len) else {
            return "?".to_string();
        };
        if len < buffer.len() {
            return String::from_utf8_lossy(&buffer[..len]).into_owned();
        }
        buffer.resize(len + 1, 0);
    }
}
