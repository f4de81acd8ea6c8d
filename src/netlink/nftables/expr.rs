//! Encoding the expressions of a rule as libnftnl expressions, one `Expr` at a time, for a
//! rule whose names and values `encode::check_rule` has bounded.

use std::ffi::CStr;

use nftnl::nftnl_sys::{self as sys, libc};

use super::encode::name;
use crate::netlink::NetlinkError;
use crate::ruleset::{CmpOp, CtKey, Expr, MetaKey, PayloadBase, Verdict};

const NFT_CT_STATE: u32 = 0;
const NFT_CT_DIRECTION: u32 = 1;
const NFT_CT_STATUS: u32 = 2;
const NFT_LOOKUP_F_INV: u32 = 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFT_NAT_DNAT: u32 = 1;

/// Encodes one expression of a rule `check_rule` accepted; the nft syntax each produces is
/// beside it. The rule it is added to takes ownership of the result.
pub(super) fn expr_object(expr: &Expr) -> Result<*mut sys::nftnl_expr, NetlinkError> {
    let new = |name: &CStr| {
        // SAFETY: a fresh expression of a kind libnftnl knows.
        let e = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
        assert!(!e.is_null(), "allocation");
        e
    };
    let u32_attr = |e, attr: u32, value: u32| {
        // SAFETY: setter on a live expression.
        unsafe { sys::nftnl_expr_set_u32(e, attr as u16, value) }
    };
    let bytes_attr = |e, attr: u32, value: &[u8]| {
        // SAFETY: libnftnl copies `value`, which `check_rule` bounded by VALUE_MAX, the size
        // of the array it is copied into.
        unsafe { sys::nftnl_expr_set(e, attr as u16, value.as_ptr().cast(), value.len() as u32) };
    };
    let str_attr = |e, attr: u32, value: &CStr| {
        // SAFETY: libnftnl copies the string.
        unsafe { sys::nftnl_expr_set_str(e, attr as u16, value.as_ptr()) };
    };
    let e = match expr {
        // meta l4proto / iifname / …
        Expr::Meta { key, dreg } => {
            let e = new(c"meta");
            let key = match key {
                MetaKey::Nfproto => libc::NFT_META_NFPROTO,
                MetaKey::L4proto => libc::NFT_META_L4PROTO,
                MetaKey::Iifname => libc::NFT_META_IIFNAME,
                MetaKey::Oifname => libc::NFT_META_OIFNAME,
            };
            u32_attr(e, sys::NFTNL_EXPR_META_KEY, key as u32);
            u32_attr(e, sys::NFTNL_EXPR_META_DREG, *dreg);
            e
        }
        // ip daddr / th dport: bytes at an offset of a header
        Expr::Payload {
            base,
            offset,
            len,
            dreg,
        } => {
            let e = new(c"payload");
            let base = match base {
                PayloadBase::Network => libc::NFT_PAYLOAD_NETWORK_HEADER,
                PayloadBase::Transport => libc::NFT_PAYLOAD_TRANSPORT_HEADER,
            };
            u32_attr(e, sys::NFTNL_EXPR_PAYLOAD_BASE, base as u32);
            u32_attr(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
            u32_attr(e, sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
            u32_attr(e, sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
            e
        }
        // == / != a constant
        Expr::Cmp { op, sreg, data } => {
            let e = new(c"cmp");
            let op = match op {
                CmpOp::Eq => libc::NFT_CMP_EQ,
                CmpOp::Neq => libc::NFT_CMP_NEQ,
            };
            u32_attr(e, sys::NFTNL_EXPR_CMP_SREG, *sreg);
            u32_attr(e, sys::NFTNL_EXPR_CMP_OP, op as u32);
            bytes_attr(e, sys::NFTNL_EXPR_CMP_DATA, data);
            e
        }
        // fib daddr type
        Expr::FibDaddrType { dreg } => {
            let e = new(c"fib");
            u32_attr(e, sys::NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
            u32_attr(e, sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
            u32_attr(e, sys::NFTNL_EXPR_FIB_DREG, *dreg);
            e
        }
        // ct state / ct status
        Expr::Ct { key, dreg } => {
            let e = new(c"ct");
            let key = match key {
                CtKey::State => NFT_CT_STATE,
                CtKey::Direction => NFT_CT_DIRECTION,
                CtKey::Status => NFT_CT_STATUS,
            };
            u32_attr(e, sys::NFTNL_EXPR_CT_KEY, key);
            u32_attr(e, sys::NFTNL_EXPR_CT_DREG, *dreg);
            e
        }
        // reg & mask ^ xor, as `ct status dnat` needs
        Expr::Bitwise { reg, mask, xor } => {
            let e = new(c"bitwise");
            u32_attr(e, sys::NFTNL_EXPR_BITWISE_SREG, *reg);
            u32_attr(e, sys::NFTNL_EXPR_BITWISE_DREG, *reg);
            u32_attr(e, sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32);
            bytes_attr(e, sys::NFTNL_EXPR_BITWISE_MASK, mask);
            bytes_attr(e, sys::NFTNL_EXPR_BITWISE_XOR, xor);
            e
        }
        // @set, or `map @map` when it loads the data into dreg
        Expr::Lookup {
            set,
            set_id,
            sreg,
            dreg,
            invert,
        } => {
            let set = name("set", set)?;
            let e = new(c"lookup");
            str_attr(e, sys::NFTNL_EXPR_LOOKUP_SET, &set);
            u32_attr(e, sys::NFTNL_EXPR_LOOKUP_SET_ID, *set_id);
            u32_attr(e, sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
            if let Some(dreg) = dreg {
                u32_attr(e, sys::NFTNL_EXPR_LOOKUP_DREG, *dreg);
            }
            if *invert {
                u32_attr(e, sys::NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
            e
        }
        // dnat ip to <addr> . <port>, or dnat ip6
        Expr::Dnat {
            ipv6,
            reg_addr,
            reg_port,
        } => {
            let e = new(c"nat");
            let family = if *ipv6 {
                libc::NFPROTO_IPV6
            } else {
                libc::NFPROTO_IPV4
            };
            u32_attr(e, sys::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT);
            u32_attr(e, sys::NFTNL_EXPR_NAT_FAMILY, family as u32);
            u32_attr(e, sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, *reg_addr);
            if let Some(reg_port) = reg_port {
                u32_attr(e, sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *reg_port);
            }
            e
        }
        // masquerade
        Expr::Masquerade => new(c"masq"),
        // byteorder reg N = hton(reg N, size, len)
        Expr::Hton { reg, size, len } => {
            const NFT_BYTEORDER_HTON: u32 = 1;
            let e = new(c"byteorder");
            u32_attr(e, sys::NFTNL_EXPR_BYTEORDER_SREG, *reg);
            u32_attr(e, sys::NFTNL_EXPR_BYTEORDER_DREG, *reg);
            u32_attr(e, sys::NFTNL_EXPR_BYTEORDER_OP, NFT_BYTEORDER_HTON);
            u32_attr(e, sys::NFTNL_EXPR_BYTEORDER_SIZE, *size);
            u32_attr(e, sys::NFTNL_EXPR_BYTEORDER_LEN, *len);
            e
        }
        // drop / jump <chain>
        Expr::Verdict(verdict) => {
            let e = new(c"immediate");
            u32_attr(e, sys::NFTNL_EXPR_IMM_DREG, crate::ruleset::REG_VERDICT);
            let code = match verdict {
                Verdict::Accept => libc::NF_ACCEPT,
                Verdict::Return => libc::NFT_RETURN,
                Verdict::Drop => libc::NF_DROP,
                Verdict::Jump(_) => libc::NFT_JUMP,
            };
            u32_attr(e, sys::NFTNL_EXPR_IMM_VERDICT, code as u32);
            if let Verdict::Jump(chain) = verdict {
                str_attr(e, sys::NFTNL_EXPR_IMM_CHAIN, &name("chain", chain)?);
            }
            e
        }
    };
    Ok(e)
}
