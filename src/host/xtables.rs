//! The xtables matches and targets iptables-nft leaves in the kernel as they are (ufw's and
//! Docker's `-m conntrack --ctstate …`, `-m state`, `-m tcp`, `-j REJECT`), judged for one
//! new, DNATed connection. Their `info` is the kernel's struct for the match, in host byte
//! order except where the struct says big-endian.

/// Whether a condition holds for the packet, or cannot be told from what is known of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    Yes,
    No,
    Unknown,
}

impl Truth {
    pub fn of(value: bool) -> Truth {
        if value { Truth::Yes } else { Truth::No }
    }

    fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::No, _) | (_, Truth::No) => Truth::No,
            (Truth::Yes, Truth::Yes) => Truth::Yes,
            _ => Truth::Unknown,
        }
    }
}

/// What is known of a packet of the connection at the forward hook: its protocol, its
/// direction, its ports and, when judging one mapping, the port the client asked for
/// (`ct original proto-dst`).
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub l4proto: u8,
    pub reply: bool,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub host_port: Option<u16>,
}

/// xt_conntrack's state bits (XT_CONNTRACK_STATE_BIT): established is bit 1 (a reply
/// counts as established), new bit 3; DNAT is bit 7 (IP_CT_NUMBER + 2) and SNAT bit 6,
/// set from the connection's status.
const STATE_ESTABLISHED: u16 = 1 << 1;
const STATE_NEW: u16 = 1 << 3;
const STATE_DNAT: u16 = 1 << 7;
/// IPS_DST_NAT, the status bit DNAT sets.
const IPS_DST_NAT: u16 = 0x20;

/// The match flags of struct xt_conntrack_mtinfo1/2/3.
const CT_STATE: u16 = 1 << 0;
const CT_PROTO: u16 = 1 << 1;
const CT_STATUS: u16 = 1 << 6;
const CT_ORIGDST_PORT: u16 = 1 << 9;
const CT_DIRECTION: u16 = 1 << 12;
const CT_STATE_ALIAS: u16 = 1 << 13;

fn u16_at(info: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(info.get(at..at + 2)?.try_into().ok()?))
}

fn be16_at(info: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(info.get(at..at + 2)?.try_into().ok()?))
}

/// Whether xtables match `name` (revision `rev`) holds for a new DNATed connection.
pub fn matches(name: &str, rev: u32, info: &[u8], conn: &Connection) -> Truth {
    match name {
        // A comment matches everything.
        "comment" => Truth::Yes,
        "conntrack" => conntrack(rev, info, conn).unwrap_or(Truth::Unknown),
        "state" => info
            .get(..4)
            .map(|mask| {
                let state = if conn.reply {
                    STATE_ESTABLISHED
                } else {
                    STATE_NEW
                };
                Truth::of(u32::from_ne_bytes(mask.try_into().unwrap()) & u32::from(state) != 0)
            })
            .unwrap_or(Truth::Unknown),
        "tcp" | "udp" => ports(name, info, conn).unwrap_or(Truth::Unknown),
        _ => Truth::Unknown,
    }
}

/// struct xt_conntrack_mtinfo{1,2,3}: eight 16-byte addresses and masks (128 bytes), the
/// expiry range (8), l4proto (u16 at 136), four big-endian ports (138..146), match_flags
/// (146) and invert_flags (148), then state_mask and status_mask: u8 each in revision 1,
/// u16 each from revision 2; revision 3 adds the high ends of the port ranges (154..162).
fn conntrack(rev: u32, info: &[u8], conn: &Connection) -> Option<Truth> {
    let flags = u16_at(info, 146)?;
    let invert = u16_at(info, 148)?;
    let (state_mask, status_mask) = match rev {
        1 => (u16::from(*info.get(150)?), u16::from(*info.get(151)?)),
        2 | 3 => (u16_at(info, 150)?, u16_at(info, 152)?),
        _ => return None,
    };
    let inverted = |flag: u16| invert & flag != 0;
    let known = CT_STATE | CT_PROTO | CT_STATUS | CT_ORIGDST_PORT | CT_DIRECTION | CT_STATE_ALIAS;
    let mut truth = if flags & !known != 0 {
        Truth::Unknown
    } else {
        Truth::Yes
    };
    if flags & CT_STATE != 0 {
        let state = if conn.reply {
            STATE_ESTABLISHED
        } else {
            STATE_NEW
        };
        let hit = state_mask & (state | STATE_DNAT) != 0;
        truth = truth.and(Truth::of(hit != inverted(CT_STATE)));
    }
    if flags & CT_PROTO != 0 {
        let hit = u16_at(info, 136)? == u16::from(conn.l4proto);
        truth = truth.and(Truth::of(hit != inverted(CT_PROTO)));
    }
    if flags & CT_STATUS != 0 {
        let hit = status_mask & IPS_DST_NAT != 0;
        // Other status bits (confirmed, assured, …) are not set on a first packet, but
        // expected or SNATed connections cannot be told apart here.
        truth = truth.and(if status_mask & !IPS_DST_NAT != 0 && !hit {
            Truth::Unknown
        } else {
            Truth::of(hit != inverted(CT_STATUS))
        });
    }
    if flags & CT_ORIGDST_PORT != 0 {
        let low = be16_at(info, 140)?;
        let high = if rev == 3 { be16_at(info, 156)? } else { low };
        truth = truth.and(match conn.host_port {
            Some(port) => {
                Truth::of((low..=high.max(low)).contains(&port) != inverted(CT_ORIGDST_PORT))
            }
            None => Truth::Unknown,
        });
    }
    if flags & CT_DIRECTION != 0 {
        // --ctdir REPLY is the inverted flag.
        truth = truth.and(Truth::of(conn.reply == inverted(CT_DIRECTION)));
    }
    Some(truth)
}

/// struct xt_tcp { u16 spts[2], dpts[2]; u8 option, flg_mask, flg_cmp, invflags } and
/// struct xt_udp { u16 spts[2], dpts[2]; u8 invflags }, ports in host order.
fn ports(name: &str, info: &[u8], conn: &Connection) -> Option<Truth> {
    let proto = if name == "tcp" { 6 } else { 17 };
    if conn.l4proto != proto {
        return Some(Truth::No);
    }
    let (sport_low, sport_high) = (u16_at(info, 0)?, u16_at(info, 2)?);
    let (dport_low, dport_high) = (u16_at(info, 4)?, u16_at(info, 6)?);
    let (invflags, extra) = if name == "tcp" {
        // --tcp-flags or --tcp-option: what a first packet carries is not judged here.
        (*info.get(11)?, *info.get(8)? != 0 || *info.get(9)? != 0)
    } else {
        (*info.get(8)?, false)
    };
    let range = |port: Option<u16>, low: u16, high: u16, invert: bool| {
        if (low, high) == (0, u16::MAX) && !invert {
            return Truth::Yes;
        }
        match port {
            Some(port) => Truth::of((low..=high).contains(&port) != invert),
            None => Truth::Unknown,
        }
    };
    let truth = if extra { Truth::Unknown } else { Truth::Yes };
    Some(
        truth
            .and(range(
                conn.sport,
                sport_low,
                sport_high,
                invflags & 0x01 != 0,
            ))
            .and(range(
                conn.dport,
                dport_low,
                dport_high,
                invflags & 0x02 != 0,
            )),
    )
}

/// What an xtables target does to the packet: `Some(true)` drops it (REJECT), `Some(false)`
/// lets the rule go on (logging, marking), `None` cannot be told.
pub fn target_drops(name: &str) -> Option<bool> {
    match name {
        "REJECT" | "DROP" => Some(true),
        "LOG" | "NFLOG" | "ULOG" | "MARK" | "CONNMARK" | "TCPMSS" | "CHECKSUM" | "CLASSIFY"
        | "DSCP" | "TOS" | "TTL" | "HL" | "TRACE" | "AUDIT" | "SECMARK" | "CONNSECMARK"
        | "IDLETIMER" | "LED" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-m conntrack --ctstate …` as iptables-nft 1.8 stores it (revision 3).
    fn ctstate(state_mask: u16, invert: bool) -> Vec<u8> {
        let mut info = vec![0u8; 164];
        info[146..148].copy_from_slice(&CT_STATE.to_ne_bytes());
        if invert {
            info[148..150].copy_from_slice(&CT_STATE.to_ne_bytes());
        }
        info[150..152].copy_from_slice(&state_mask.to_ne_bytes());
        info
    }

    const CONN: Connection = Connection {
        l4proto: 6,
        reply: false,
        sport: None,
        dport: Some(80),
        host_port: Some(3000),
    };

    #[test]
    fn conntrack_states_are_judged_for_a_new_dnated_connection() {
        // RELATED,ESTABLISHED: bits 2 and 1.
        assert_eq!(
            matches("conntrack", 3, &ctstate(0b110, false), &CONN),
            Truth::No
        );
        assert_eq!(
            matches("conntrack", 3, &ctstate(STATE_DNAT, false), &CONN),
            Truth::Yes
        );
        assert_eq!(
            matches("conntrack", 3, &ctstate(STATE_NEW, false), &CONN),
            Truth::Yes
        );
        assert_eq!(
            matches("conntrack", 3, &ctstate(STATE_NEW, true), &CONN),
            Truth::No
        );
        let reply = Connection {
            reply: true,
            ..CONN
        };
        assert_eq!(
            matches("conntrack", 3, &ctstate(0b110, false), &reply),
            Truth::Yes
        );
        assert_eq!(matches("conntrack", 3, &[0; 10], &CONN), Truth::Unknown);
    }

    #[test]
    fn original_destination_ports_are_the_host_port() {
        let mut info = vec![0u8; 164];
        info[146..148].copy_from_slice(&(CT_ORIGDST_PORT | CT_DIRECTION).to_ne_bytes());
        info[140..142].copy_from_slice(&3000u16.to_be_bytes());
        info[156..158].copy_from_slice(&3000u16.to_be_bytes());
        assert_eq!(matches("conntrack", 3, &info, &CONN), Truth::Yes);
        let reply = Connection {
            reply: true,
            ..CONN
        };
        assert_eq!(
            matches("conntrack", 3, &info, &reply),
            Truth::No,
            "--ctdir ORIGINAL"
        );
        let other = Connection {
            host_port: Some(3001),
            ..CONN
        };
        assert_eq!(matches("conntrack", 3, &info, &other), Truth::No);
    }

    #[test]
    fn tcp_ports() {
        let mut info = vec![0u8; 12];
        info[2..4].copy_from_slice(&u16::MAX.to_ne_bytes());
        info[4..6].copy_from_slice(&80u16.to_ne_bytes());
        info[6..8].copy_from_slice(&80u16.to_ne_bytes());
        assert_eq!(matches("tcp", 0, &info, &CONN), Truth::Yes);
        assert_eq!(
            matches("udp", 0, &info, &CONN),
            Truth::No,
            "a UDP match never holds for TCP"
        );
        info[11] = 0x02;
        assert_eq!(matches("tcp", 0, &info, &CONN), Truth::No);
    }
}
