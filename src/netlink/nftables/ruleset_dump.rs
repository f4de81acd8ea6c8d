//! Reading the rules of other tables as structured expressions, for `doctor` to follow a
//! packet through another firewall's chains (firewalld's, ufw's, Docker's). Read only.
//!
//! Each expression keeps what deciding a verdict needs: what a load reads into which
//! register, what a comparison or mask holds, where a verdict goes, and the raw `info` of
//! iptables-nft's xtables matches and targets (which libnftnl's text does not show).
//! Everything else is kept by name only.

use std::ffi::CStr;

use nftnl::nftnl_sys::{self as sys, libc};

use super::dump::each_rule;
use super::encode::Rule;
use crate::netlink::NetlinkError;

/// One expression of a rule, as far as judging a verdict needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `payload load LEN @ BASE + OFFSET => reg DREG`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `meta load KEY => reg DREG`.
    Meta { key: u32, dreg: u32 },
    /// `ct load KEY => reg DREG`, in direction `dir` when one is given.
    Ct {
        key: u32,
        dir: Option<u8>,
        dreg: u32,
    },
    /// `bitwise reg DREG = (reg SREG & MASK) ^ XOR` (op 0); shifts have op 1 or 2.
    Bitwise {
        sreg: u32,
        dreg: u32,
        op: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `cmp OP reg SREG DATA`.
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    /// A verdict (into register 0), or data loaded into a register.
    Immediate {
        dreg: u32,
        verdict: Option<i32>,
        chain: Option<String>,
        data: Vec<u8>,
    },
    /// An xtables match of iptables-nft (`-m conntrack`, `-m state`, …).
    Match {
        name: String,
        rev: u32,
        info: Vec<u8>,
    },
    /// An xtables target of iptables-nft (`-j REJECT`, `-j LOG`, …).
    Target {
        name: String,
        rev: u32,
        info: Vec<u8>,
    },
    /// A set lookup; `verdict` when it is a verdict map (its result is a verdict).
    Lookup { verdict: bool },
    /// Any other expression, by name: a counter, a log, a native reject, …
    Other(String),
}

/// A rule of any table, with its expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetRule {
    pub family: u32,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<Expr>,
}

/// Every rule of table `table` of `family`, chain by chain in the kernel's order, in one
/// dump; a missing table has none.
pub fn dump_table_exprs(family: u16, table: &str) -> Result<Vec<RulesetRule>, NetlinkError> {
    let mut rules = Vec::new();
    each_rule(family, table, |rule| {
        // SAFETY: getters on the rule we own; strings are libnftnl's and copied.
        let (table, chain, handle, family) = unsafe {
            (
                text(sys::nftnl_rule_get_str(
                    rule.ptr(),
                    sys::NFTNL_RULE_TABLE as u16,
                )),
                text(sys::nftnl_rule_get_str(
                    rule.ptr(),
                    sys::NFTNL_RULE_CHAIN as u16,
                )),
                sys::nftnl_rule_get_u64(rule.ptr(), sys::NFTNL_RULE_HANDLE as u16),
                sys::nftnl_rule_get_u32(rule.ptr(), sys::NFTNL_RULE_FAMILY as u16),
            )
        };
        rules.push(RulesetRule {
            family,
            table,
            chain,
            handle,
            exprs: exprs_of(rule),
        });
    })?;
    Ok(rules)
}

/// A string libnftnl returns, or "" for none.
///
/// # Safety
/// `ptr` must be null or a NUL-terminated string that lives for this call.
unsafe fn text(ptr: *const libc::c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }
}

fn exprs_of(rule: &Rule) -> Vec<Expr> {
    let mut exprs = Vec::new();
    // SAFETY: the iterator and the expressions it yields live as long as `rule`, which
    // this function borrows; each is only read.
    unsafe {
        let iter = sys::nftnl_expr_iter_create(rule.ptr());
        assert!(!iter.is_null(), "allocation");
        let mut expr = sys::nftnl_expr_iter_next(iter);
        while !expr.is_null() {
            exprs.push(decode(expr));
            expr = sys::nftnl_expr_iter_next(iter);
        }
        sys::nftnl_expr_iter_destroy(iter);
    }
    exprs
}

/// # Safety
/// `expr` must be a live expression.
unsafe fn decode(expr: *mut sys::nftnl_expr) -> Expr {
    // SAFETY: the caller guarantees `expr`; each getter is of the expression's own kind
    // (libnftnl returns 0 or null for an attribute that is not set), and `data` copies
    // exactly the `len` bytes libnftnl says it holds.
    unsafe {
        let is_set = |attr: u32| sys::nftnl_expr_is_set(expr, attr as u16);
        let u32_of = |attr: u32| sys::nftnl_expr_get_u32(expr, attr as u16);
        let data = |attr: u32| {
            let mut len = 0u32;
            let ptr = sys::nftnl_expr_get(expr, attr as u16, &mut len);
            if ptr.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize).to_vec()
            }
        };
        let name = text(sys::nftnl_expr_get_str(expr, sys::NFTNL_EXPR_NAME as u16));
        match name.as_str() {
            "payload" if is_set(sys::NFTNL_EXPR_PAYLOAD_DREG) => Expr::Payload {
                base: u32_of(sys::NFTNL_EXPR_PAYLOAD_BASE),
                offset: u32_of(sys::NFTNL_EXPR_PAYLOAD_OFFSET),
                len: u32_of(sys::NFTNL_EXPR_PAYLOAD_LEN),
                dreg: u32_of(sys::NFTNL_EXPR_PAYLOAD_DREG),
            },
            "meta" if is_set(sys::NFTNL_EXPR_META_DREG) => Expr::Meta {
                key: u32_of(sys::NFTNL_EXPR_META_KEY),
                dreg: u32_of(sys::NFTNL_EXPR_META_DREG),
            },
            "ct" if is_set(sys::NFTNL_EXPR_CT_DREG) => Expr::Ct {
                key: u32_of(sys::NFTNL_EXPR_CT_KEY),
                dir: is_set(sys::NFTNL_EXPR_CT_DIR)
                    .then(|| sys::nftnl_expr_get_u8(expr, sys::NFTNL_EXPR_CT_DIR as u16)),
                dreg: u32_of(sys::NFTNL_EXPR_CT_DREG),
            },
            "bitwise" => Expr::Bitwise {
                sreg: u32_of(sys::NFTNL_EXPR_BITWISE_SREG),
                dreg: u32_of(sys::NFTNL_EXPR_BITWISE_DREG),
                op: if is_set(sys::NFTNL_EXPR_BITWISE_OP) {
                    u32_of(sys::NFTNL_EXPR_BITWISE_OP)
                } else {
                    0
                },
                mask: data(sys::NFTNL_EXPR_BITWISE_MASK),
                xor: data(sys::NFTNL_EXPR_BITWISE_XOR),
            },
            "cmp" => Expr::Cmp {
                sreg: u32_of(sys::NFTNL_EXPR_CMP_SREG),
                op: u32_of(sys::NFTNL_EXPR_CMP_OP),
                data: data(sys::NFTNL_EXPR_CMP_DATA),
            },
            "immediate" => {
                let dreg = u32_of(sys::NFTNL_EXPR_IMM_DREG);
                let verdict = is_set(sys::NFTNL_EXPR_IMM_VERDICT)
                    .then(|| u32_of(sys::NFTNL_EXPR_IMM_VERDICT) as i32);
                let chain = is_set(sys::NFTNL_EXPR_IMM_CHAIN).then(|| {
                    text(sys::nftnl_expr_get_str(
                        expr,
                        sys::NFTNL_EXPR_IMM_CHAIN as u16,
                    ))
                });
                Expr::Immediate {
                    dreg,
                    verdict,
                    chain,
                    data: if verdict.is_none() {
                        data(sys::NFTNL_EXPR_IMM_DATA)
                    } else {
                        Vec::new()
                    },
                }
            }
            "match" => Expr::Match {
                name: text(sys::nftnl_expr_get_str(
                    expr,
                    sys::NFTNL_EXPR_MT_NAME as u16,
                )),
                rev: u32_of(sys::NFTNL_EXPR_MT_REV),
                info: data(sys::NFTNL_EXPR_MT_INFO),
            },
            "target" => Expr::Target {
                name: text(sys::nftnl_expr_get_str(
                    expr,
                    sys::NFTNL_EXPR_TG_NAME as u16,
                )),
                rev: u32_of(sys::NFTNL_EXPR_TG_REV),
                info: data(sys::NFTNL_EXPR_TG_INFO),
            },
            "lookup" => Expr::Lookup {
                verdict: is_set(sys::NFTNL_EXPR_LOOKUP_DREG)
                    && u32_of(sys::NFTNL_EXPR_LOOKUP_DREG) == 0,
            },
            _ => Expr::Other(name),
        }
    }
}
