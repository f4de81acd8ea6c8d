//! The frame of netlink answers: the messages of a datagram, each length checked before
//! what it covers is read, for the protocols nsport reads by hand (rtnetlink, sock_diag).

use std::io;

use super::NetlinkError;

/// `struct nlmsghdr`.
const HEADER_LEN: usize = 16;

/// One netlink message of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Message<'a> {
    pub kind: u16,
    pub seq: u32,
    /// What follows the header, up to the message's own length.
    pub payload: &'a [u8],
}

pub(super) fn malformed(what: String) -> NetlinkError {
    NetlinkError::Receive(io::Error::new(io::ErrorKind::InvalidData, what))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Takes the first message off `data`; none when `data` is empty. A message whose length
/// is shorter than its header or longer than what is left is an error.
pub(super) fn next_message<'a>(data: &mut &'a [u8]) -> Result<Option<Message<'a>>, NetlinkError> {
    if data.is_empty() {
        return Ok(None);
    }
    let (Some(len), Some(kind), Some(seq)) = (
        u32_at(data, 0),
        data.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]])),
        u32_at(data, 8),
    ) else {
        return Err(malformed(format!(
            "a netlink message header cut short at {} bytes",
            data.len()
        )));
    };
    let len = len as usize;
    if len < HEADER_LEN || len > data.len() {
        return Err(malformed(format!(
            "a netlink message of {len} bytes in {} bytes",
            data.len()
        )));
    }
    let message = Message {
        kind,
        seq,
        payload: &data[HEADER_LEN..len],
    };
    // The padding after the last message may be missing; there is nothing after it then.
    *data = &data[len.next_multiple_of(4).min(data.len())..];
    Ok(Some(message))
}

/// The errno of an NLMSG_ERROR or NLMSG_DONE message (zero for an acknowledgement or a
/// dump that ended well), as a positive number.
pub(super) fn errno(message: &Message) -> Result<i32, NetlinkError> {
    let code = message
        .payload
        .get(..4)
        .ok_or_else(|| malformed("a netlink error message without its code".to_string()))?;
    // The kernel sends a negated errno; i32::MIN has no positive counterpart.
    i32::from_ne_bytes(code.try_into().expect("four bytes"))
        .checked_neg()
        .ok_or_else(|| malformed("a netlink error code out of range".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_message(code: i32) -> Vec<u8> {
        code.to_ne_bytes().to_vec()
    }

    #[test]
    fn an_error_code_reads_as_a_positive_errno() {
        let payload = error_message(-libc::EEXIST);
        let message = Message {
            kind: libc::NLMSG_ERROR as u16,
            seq: 1,
            payload: &payload,
        };
        assert_eq!(errno(&message).unwrap(), libc::EEXIST);
    }

    /// Found by the damaged-answer fuzz: negating i32::MIN overflowed (a panic in a debug
    /// build, a nonsense errno in a release one).
    #[test]
    fn an_error_code_without_a_positive_counterpart_is_malformed() {
        let payload = error_message(i32::MIN);
        let message = Message {
            kind: libc::NLMSG_ERROR as u16,
            seq: 1,
            payload: &payload,
        };
        assert!(matches!(errno(&message), Err(NetlinkError::Receive(_))));
    }
}
