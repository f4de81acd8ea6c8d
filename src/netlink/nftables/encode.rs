//! Encoding `crate::ruleset` values as libnftnl objects, after checking every length the
//! kernel or libnftnl would otherwise truncate, wrap or copy past a fixed-size field.
//!
//! libnftnl copies keys, data and comparison values into 64-byte arrays and writes attribute
//! lengths as 16-bit fields without checking either, so the checks here run first, in Rust,
//! on every value that reaches a libnftnl setter: nothing unchecked is ever written.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::rc::Rc;

use nftnl::nftnl_sys::{self as sys, libc};

use crate::netlink::NetlinkError;
use crate::ruleset::{ChainDef, ChainType, Element, Expr, RuleDef, SetDef, Verdict};

pub(super) const FAMILY_INET: u16 = libc::NFPROTO_INET as u16;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_CONCAT: u32 = 0x80;
pub(super) const NF_ACCEPT: u32 = 1;

/// The longest table, chain or set name: `NFT_NAME_MAXLEN` (256) counts the NUL.
pub const NAME_MAX: usize = 255;
/// The longest key, data or comparison value: `NFT_DATA_VALUE_MAXLEN`, which is also the
/// size of the arrays libnftnl copies them into.
pub const VALUE_MAX: usize = 64;
/// The most user data a set may carry: `NFT_USERDATA_MAXLEN`, its TLV headers included.
pub const USERDATA_MAX: usize = 256;
/// The most user data an element may carry. The kernel keeps it in an element extension
/// whose length, a byte, counts a byte of header too: 255 bytes of user data are refused
/// with EINVAL and 256 wrap around and are stored mangled (the comment reads back as
/// nothing), both found on Linux 6.18 whatever the set's key and data lengths.
pub const ELEMENT_USERDATA_MAX: usize = 254;
/// The longest element comment: its user data is a 2-byte TLV header, the text and a NUL.
pub const COMMENT_MAX: usize = ELEMENT_USERDATA_MAX - 3;
/// The most bytes one message of a batch may take. Netlink attribute lengths are 16 bits
/// and wrap silently past 65,535, and libnftnl writes each message into a buffer of 64 KiB
/// plus a page: half of that leaves room for any error in the estimates below.
pub const MESSAGE_BUDGET: usize = 32 * 1024;
/// What libnftnl's message buffers hold (`nft_nlmsg_maxsize`: 64 KiB and a page).
pub(super) const MESSAGE_BUFFER: usize = 65535 + 4096;

/// The room an attribute of `len` value bytes takes, padding included.
pub(super) const fn attr_size(len: usize) -> usize {
    4 + len.next_multiple_of(4)
}

/// A netlink header and an nfgenmsg.
pub(super) const MESSAGE_HEADER: usize = 16 + 4;

fn too_long(what: impl FnOnce() -> String, len: usize, max: usize) -> Result<(), NetlinkError> {
    if len > max {
        return Err(NetlinkError::TooLong {
            what: what(),
            len,
            max,
        });
    }
    Ok(())
}

/// A name as libnftnl takes it, refused when the kernel's field could not hold it.
pub(super) fn name(kind: &str, text: &str) -> Result<CString, NetlinkError> {
    let what = || format!("{kind} name {:?}", truncated(text));
    too_long(what, text.len(), NAME_MAX)?;
    CString::new(text).map_err(|_| NetlinkError::Nul { what: what() })
}

/// At most the first 64 bytes of `text`, for error messages about very long values.
fn truncated(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn value(what: impl FnOnce() -> String, bytes: &[u8]) -> Result<usize, NetlinkError> {
    too_long(what, bytes.len(), VALUE_MAX)?;
    Ok(bytes.len())
}

/// nftables' comment user data: type 0, length, NUL-terminated text.
pub(super) const UDATA_COMMENT: u8 = 0;

/// The user data of an element's comment, refused when it would not fit
/// `ELEMENT_USERDATA_MAX`.
pub(super) fn userdata_comment(comment: &str) -> Result<Vec<u8>, NetlinkError> {
    let what = || format!("comment {:?}", truncated(comment));
    too_long(what, comment.len(), COMMENT_MAX)?;
    if comment.contains('\0') {
        return Err(NetlinkError::Nul { what: what() });
    }
    // Checked above: the length fits the TLV's byte and the whole fits
    // ELEMENT_USERDATA_MAX.
    let len = u8::try_from(comment.len() + 1).expect("checked against COMMENT_MAX");
    let mut out = Vec::with_capacity(comment.len() + 3);
    out.extend_from_slice(&[UDATA_COMMENT, len]);
    out.extend_from_slice(comment.as_bytes());
    out.push(0);
    Ok(out)
}

pub(super) fn comment_from_userdata(mut userdata: &[u8]) -> Option<String> {
    while userdata.len() >= 2 {
        let (kind, len) = (userdata[0], userdata[1] as usize);
        let value = userdata.get(2..2 + len)?;
        if kind == UDATA_COMMENT {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        userdata = &userdata[2 + len..];
    }
    None
}

/// An element, checked and ready for libnftnl.
pub(super) struct CheckedElement<'a> {
    pub(super) element: &'a Element,
    /// Shared by the elements of a run with one comment (see `new`).
    pub(super) userdata: Option<Rc<[u8]>>,
    /// The most bytes it can take inside an element list, as libnftnl encodes it: a nest
    /// per element, a nest and a value for the key and for the data, the user data.
    pub(super) size: usize,
}

impl<'a> CheckedElement<'a> {
    /// Checks `element`. Its comment's user data is `previous`'s when they have the same
    /// comment: the elements of a range share one, and building it 10,000 times cost as
    /// many allocations.
    pub(super) fn new(
        element: &'a Element,
        previous: Option<&CheckedElement>,
    ) -> Result<Self, NetlinkError> {
        let what = |part: &'static str| {
            let set = element.set;
            move || format!("the {part} of an element of set {set}")
        };
        let key = value(what("key"), &element.key)?;
        let key_end = match &element.key_end {
            Some(end) => value(what("interval end"), end)?,
            None => 0,
        };
        let data = match &element.data {
            Some(data) => value(what("data"), data)?,
            None => 0,
        };
        let shared = previous
            .filter(|previous| previous.element.comment == element.comment)
            .and_then(|previous| previous.userdata.clone());
        let userdata = match shared {
            Some(shared) => Some(shared),
            None => (element.comment.as_deref())
                .map(|comment| {
                    userdata_comment(comment)
                        .map(Rc::from)
                        .map_err(|error| match error {
                            NetlinkError::TooLong { what, len, max } => NetlinkError::TooLong {
                                what: format!("{what} of an element of set {}", element.set),
                                len,
                                max,
                            },
                            other => other,
                        })
                })
                .transpose()?,
        };
        let size = 4
            + 4
            + attr_size(key)
            + element
                .key_end
                .as_ref()
                .map_or(0, |_| 4 + attr_size(key_end))
            + element.data.as_ref().map_or(0, |_| 4 + attr_size(data))
            + userdata.as_ref().map_or(0, |u| attr_size(u.len()));
        Ok(CheckedElement {
            element,
            userdata,
            size,
        })
    }
}

/// The most bytes the start of an element message takes: header, table and set names, set
/// id, and the nest holding the elements.
pub(super) fn elements_header_size(table: &str, set: &str) -> usize {
    MESSAGE_HEADER + attr_size(table.len() + 1) + attr_size(set.len() + 1) + attr_size(4) + 4
}

/// Checks every name and value of a rule; returns the most bytes its message can take.
pub(super) fn check_rule(table: &str, rule: &RuleDef) -> Result<usize, NetlinkError> {
    name("table", table)?;
    name("chain", rule.chain)?;
    let what = |part: &'static str| move || format!("the {part} of rule `{}`", rule.nft);
    // Each expression: its nest, its name, and at most eight attributes of a value each.
    let expr_size = |values: usize| 4 + attr_size(16) + 4 + 8 * attr_size(4) + values;
    let mut size = MESSAGE_HEADER + attr_size(table.len() + 1) + attr_size(rule.chain.len() + 1);
    size += 4; // the nest of the expressions
    for expr in &rule.exprs {
        size += match expr {
            Expr::Cmp { data, .. } => expr_size(attr_size(value(what("compared value"), data)?)),
            Expr::Bitwise { mask, xor, .. } => {
                let mask = value(what("bitwise mask"), mask)?;
                let xor = value(what("bitwise xor"), xor)?;
                expr_size(2 * 4 + attr_size(mask) + attr_size(xor))
            }
            Expr::Lookup { set, .. } => expr_size(attr_size(name("set", set)?.as_bytes().len())),
            Expr::Verdict(Verdict::Jump(chain)) => {
                expr_size(8 + attr_size(name("chain", chain)?.as_bytes().len() + 1))
            }
            _ => expr_size(0),
        };
    }
    too_long(what("encoding"), size, MESSAGE_BUDGET)?;
    Ok(size)
}

/// Checks a set's names, lengths and user data.
pub(super) fn check_set(table: &str, set: &SetDef) -> Result<(), NetlinkError> {
    name("table", table)?;
    name("set", set.name)?;
    let what = |part: &'static str| move || format!("the {part} of set {}", set.name);
    too_long(what("key length"), set.key_len as usize, VALUE_MAX)?;
    if let Some((_, data_len)) = set.data {
        too_long(what("data length"), data_len as usize, VALUE_MAX)?;
    }
    // libnftnl keeps at most 16 field lengths (NFT_REG32_COUNT).
    too_long(what("fields"), set.fields.len(), 16)?;
    too_long(what("user data"), set.userdata.len(), USERDATA_MAX)
}

macro_rules! owned {
    ($(#[$doc:meta])* $name:ident, $ty:ty, $alloc:path, $free:path) => {
        $(#[$doc])*
        pub(super) struct $name(NonNull<$ty>);

        impl $name {
            pub(super) fn alloc() -> Self {
                // SAFETY: a plain allocation; null only when memory is exhausted.
                $name(NonNull::new(unsafe { $alloc() }).expect("allocation"))
            }

            pub(super) fn ptr(&self) -> *mut $ty {
                self.0.as_ptr()
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: allocated by `alloc`, owned by this value, freed once.
                unsafe { $free(self.0.as_ptr()) }
            }
        }
    };
}

owned!(
    /// An owned libnftnl table object.
    Table,
    sys::nftnl_table,
    sys::nftnl_table_alloc,
    sys::nftnl_table_free
);
owned!(
    /// An owned libnftnl chain object.
    Chain,
    sys::nftnl_chain,
    sys::nftnl_chain_alloc,
    sys::nftnl_chain_free
);
owned!(
    /// An owned libnftnl set object, with the elements added to it.
    Set,
    sys::nftnl_set,
    sys::nftnl_set_alloc,
    sys::nftnl_set_free
);
owned!(
    /// An owned libnftnl rule object, with its expressions.
    Rule,
    sys::nftnl_rule,
    sys::nftnl_rule_alloc,
    sys::nftnl_rule_free
);

pub(super) fn table_object(table: &str) -> Result<Table, NetlinkError> {
    let name = name("table", table)?;
    let object = Table::alloc();
    // SAFETY: setters on the object we own; libnftnl copies the string.
    unsafe {
        sys::nftnl_table_set_str(object.ptr(), sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
        sys::nftnl_table_set_u32(
            object.ptr(),
            sys::NFTNL_TABLE_FAMILY as u16,
            u32::from(FAMILY_INET),
        );
    }
    Ok(object)
}

/// A chain object naming `chain` of `table`, as lookups and deletions need.
pub(super) fn chain_named(table: &str, chain: &str) -> Result<Chain, NetlinkError> {
    let (table, chain) = (name("table", table)?, name("chain", chain)?);
    let object = Chain::alloc();
    // SAFETY: setters on the object we own; libnftnl copies the strings.
    unsafe {
        sys::nftnl_chain_set_str(object.ptr(), sys::NFTNL_CHAIN_TABLE as u16, table.as_ptr());
        sys::nftnl_chain_set_str(object.ptr(), sys::NFTNL_CHAIN_NAME as u16, chain.as_ptr());
        sys::nftnl_chain_set_u32(
            object.ptr(),
            sys::NFTNL_CHAIN_FAMILY as u16,
            u32::from(FAMILY_INET),
        );
    }
    Ok(object)
}

pub(super) fn chain_object(table: &str, chain: &ChainDef) -> Result<Chain, NetlinkError> {
    let object = chain_named(table, chain.name)?;
    if let Some((hook, priority, kind)) = chain.base {
        let hooknum = hook.number();
        let kind: &CStr = match kind {
            ChainType::Filter => c"filter",
            ChainType::Nat => c"nat",
        };
        let ptr = object.ptr();
        // SAFETY: setters on the object we own; libnftnl copies the string.
        unsafe {
            sys::nftnl_chain_set_u32(ptr, sys::NFTNL_CHAIN_HOOKNUM as u16, hooknum);
            sys::nftnl_chain_set_s32(ptr, sys::NFTNL_CHAIN_PRIO as u16, priority);
            sys::nftnl_chain_set_str(ptr, sys::NFTNL_CHAIN_TYPE as u16, kind.as_ptr());
            sys::nftnl_chain_set_u32(ptr, sys::NFTNL_CHAIN_POLICY as u16, NF_ACCEPT);
        }
    }
    Ok(object)
}

/// A rule object naming `chain` of `table` and nothing else: deleting it flushes the chain.
pub(super) fn rule_named(table: &str, chain: &str) -> Result<Rule, NetlinkError> {
    let (table, chain) = (name("table", table)?, name("chain", chain)?);
    let object = Rule::alloc();
    // SAFETY: setters on the object we own; libnftnl copies the strings.
    unsafe {
        sys::nftnl_rule_set_str(object.ptr(), sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
        sys::nftnl_rule_set_str(object.ptr(), sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
        sys::nftnl_rule_set_u32(
            object.ptr(),
            sys::NFTNL_RULE_FAMILY as u16,
            u32::from(FAMILY_INET),
        );
    }
    Ok(object)
}

/// A set object naming `set` of `table`, as element messages need.
pub(super) fn set_named(table: &str, set: &str, id: Option<u32>) -> Result<Set, NetlinkError> {
    let (table, set) = (name("table", table)?, name("set", set)?);
    let object = Set::alloc();
    let ptr = object.ptr();
    // SAFETY: setters on the object we own; libnftnl copies the strings.
    unsafe {
        sys::nftnl_set_set_str(ptr, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
        sys::nftnl_set_set_str(ptr, sys::NFTNL_SET_NAME as u16, set.as_ptr());
        sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_FAMILY as u16, u32::from(FAMILY_INET));
        if let Some(id) = id {
            sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_ID as u16, id);
        }
    }
    Ok(object)
}

pub(super) fn set_object(table: &str, set: &SetDef) -> Result<Set, NetlinkError> {
    check_set(table, set)?;
    let object = set_named(table, set.name, Some(set.id))?;
    let ptr = object.ptr();
    // SAFETY: setters on the object we own; libnftnl copies the user data, whose length
    // `check_set` bounded by USERDATA_MAX.
    unsafe {
        let mut flags = if set.is_map() { NFT_SET_MAP } else { 0 };
        if set.interval {
            flags |= NFT_SET_INTERVAL | NFT_SET_CONCAT;
            // The length of each field of the concatenation: libnftnl copies them into its
            // zeroed array of 16, whose first zero ends them; `check_set` bounded their
            // number by 16 and no field is of length 0.
            sys::nftnl_set_set_data(
                ptr,
                sys::NFTNL_SET_DESC_CONCAT as u16,
                set.fields.as_ptr().cast(),
                set.fields.len() as u32,
            );
        }
        sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_FLAGS as u16, flags);
        sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_KEY_TYPE as u16, set.key_type);
        sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_KEY_LEN as u16, set.key_len);
        if let Some((data_type, data_len)) = set.data {
            sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_DATA_TYPE as u16, data_type);
            sys::nftnl_set_set_u32(ptr, sys::NFTNL_SET_DATA_LEN as u16, data_len);
        }
        if set.counter {
            // The set's own expression, which the kernel gives every element added; the
            // set takes ownership of it.
            sys::nftnl_set_add_expr(ptr, sys::nftnl_expr_alloc(c"counter".as_ptr()));
        }
        sys::nftnl_set_set_data(
            ptr,
            sys::NFTNL_SET_USERDATA as u16,
            set.userdata.as_ptr().cast(),
            set.userdata.len() as u32,
        );
    }
    Ok(object)
}

/// Adds a checked element to `set`, which takes ownership of the libnftnl element.
pub(super) fn add_element(set: &Set, checked: &CheckedElement) {
    let put = |elem, attr: u32, bytes: &[u8]| {
        // SAFETY: libnftnl copies `bytes`; `CheckedElement::new` bounded keys and data by
        // VALUE_MAX, the size of libnftnl's arrays, and user data by ELEMENT_USERDATA_MAX.
        unsafe {
            sys::nftnl_set_elem_set(elem, attr as u16, bytes.as_ptr().cast(), bytes.len() as u32)
        };
    };
    // SAFETY: a fresh element, handed to the set that frees it.
    let elem = unsafe { sys::nftnl_set_elem_alloc() };
    assert!(!elem.is_null(), "allocation");
    put(elem, sys::NFTNL_SET_ELEM_KEY, &checked.element.key);
    if let Some(key_end) = &checked.element.key_end {
        put(elem, sys::NFTNL_SET_ELEM_KEY_END, key_end);
    }
    if let Some(data) = &checked.element.data {
        put(elem, sys::NFTNL_SET_ELEM_DATA, data);
    }
    if let Some(userdata) = &checked.userdata {
        put(elem, sys::NFTNL_SET_ELEM_USERDATA, userdata);
    }
    // SAFETY: both live; the set takes ownership of `elem`.
    unsafe { sys::nftnl_set_elem_add(set.ptr(), elem) };
}

pub(super) fn rule_object(table: &str, rule: &RuleDef) -> Result<Rule, NetlinkError> {
    check_rule(table, rule)?;
    let object = rule_named(table, rule.chain)?;
    for expr in &rule.exprs {
        let expr = super::expr::expr_object(expr)?;
        // SAFETY: both live; the rule takes ownership of the expression.
        unsafe { sys::nftnl_rule_add_expr(object.ptr(), expr) };
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_through_userdata() {
        let userdata = userdata_comment("via=br0 netns=ns1").unwrap();
        assert_eq!(userdata[..2], [0, 18]);
        assert_eq!(
            comment_from_userdata(&userdata).as_deref(),
            Some("via=br0 netns=ns1")
        );
        // A record of another kind before the comment is skipped.
        let with_flags = [vec![1, 4, 0, 0, 0, 0], userdata].concat();
        assert_eq!(
            comment_from_userdata(&with_flags).as_deref(),
            Some("via=br0 netns=ns1")
        );
        assert_eq!(comment_from_userdata(&[0, 9, b'x']), None);
    }

    #[test]
    fn comments_are_bounded_not_truncated() {
        let longest = "c".repeat(COMMENT_MAX);
        assert_eq!(
            userdata_comment(&longest).unwrap().len(),
            ELEMENT_USERDATA_MAX
        );
        let error = userdata_comment(&"c".repeat(COMMENT_MAX + 1)).unwrap_err();
        assert!(matches!(
            error,
            NetlinkError::TooLong { len, max: COMMENT_MAX, .. } if len == COMMENT_MAX + 1
        ));
        assert!(matches!(
            userdata_comment("a\0b"),
            Err(NetlinkError::Nul { .. })
        ));
    }

    #[test]
    fn names_are_bounded() {
        assert!(name("set", &"s".repeat(NAME_MAX)).is_ok());
        assert!(matches!(
            name("set", &"s".repeat(NAME_MAX + 1)),
            Err(NetlinkError::TooLong { max: NAME_MAX, .. })
        ));
        assert!(matches!(
            name("chain", "a\0"),
            Err(NetlinkError::Nul { .. })
        ));
    }

    #[test]
    fn keys_and_data_are_bounded() {
        let element = |key: usize, data: usize| Element {
            set: "any4",
            key: vec![1; key],
            key_end: None,
            data: Some(vec![2; data]),
            comment: None,
        };
        assert!(CheckedElement::new(&element(VALUE_MAX, VALUE_MAX), None).is_ok());
        for (key, data) in [(VALUE_MAX + 1, 4), (4, VALUE_MAX + 1)] {
            assert!(matches!(
                CheckedElement::new(&element(key, data), None),
                Err(NetlinkError::TooLong { .. })
            ));
        }
    }

    #[test]
    fn a_comment_is_encoded_once_for_a_run_that_shares_it() {
        let element = |comment: &str| Element {
            set: "any4",
            key: vec![1; 8],
            key_end: None,
            data: Some(vec![2; 8]),
            comment: Some(comment.into()),
        };
        let (first, same, other) = (element("via=a"), element("via=a"), element("via=b"));
        let first = CheckedElement::new(&first, None).unwrap();
        let same = CheckedElement::new(&same, Some(&first)).unwrap();
        let other = CheckedElement::new(&other, Some(&same)).unwrap();
        let (Some(a), Some(b), Some(c)) = (&first.userdata, &same.userdata, &other.userdata) else {
            panic!("each element has a comment");
        };
        assert!(Rc::ptr_eq(a, b));
        assert_eq!(**c, *userdata_comment("via=b").unwrap());
        // An element without a comment takes none from the one before it.
        let bare = Element {
            comment: None,
            ..element("")
        };
        assert!(
            CheckedElement::new(&bare, Some(&other))
                .unwrap()
                .userdata
                .is_none()
        );
    }
}
