//! Netlink attributes (type-length-value, 4-byte aligned) for the protocols nsport speaks
//! without a library of their own: ctnetlink, sock_diag, and the frame of nftables batches.

use super::NetlinkError;

/// The type bits of an attribute; the top two are the nested and byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
#[cfg(test)]
pub const NLA_F_NESTED: u16 = 0x8000;

/// One attribute: its type, its value, and the whole encoded attribute.
#[derive(Debug, Clone, Copy)]
pub struct Attribute<'a> {
    pub kind: u16,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

impl Attribute<'_> {
    pub fn u8(&self) -> Option<u8> {
        self.value.first().copied()
    }

    pub fn be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.value.get(..4)?.try_into().ok()?))
    }

    pub fn be16(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.value.get(..2)?.try_into().ok()?))
    }

    pub fn ipv4(&self) -> Option<std::net::IpAddr> {
        let octets: [u8; 4] = self.value.get(..4)?.try_into().ok()?;
        Some(std::net::Ipv4Addr::from(octets).into())
    }

    pub fn ipv6(&self) -> Option<std::net::IpAddr> {
        let octets: [u8; 16] = self.value.get(..16)?.try_into().ok()?;
        Some(std::net::Ipv6Addr::from(octets).into())
    }
}

/// Iterates over the attributes in `bytes`, stopping at the first malformed one.
pub fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = Attribute<'_>> {
    std::iter::from_fn(move || {
        let header = bytes.get(..4)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let attribute = Attribute {
            kind,
            value: &bytes[4..len],
            raw: &bytes[..len],
        };
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
        Some(attribute)
    })
}

/// The first attribute of `kind`.
pub fn find(bytes: &[u8], kind: u16) -> Option<Attribute<'_>> {
    attributes(bytes).find(|attribute| attribute.kind == kind)
}

/// Appends an attribute, padded to 4 bytes; refused when its length does not fit the
/// attribute's 16-bit length field.
pub fn put(out: &mut Vec<u8>, kind: u16, value: &[u8]) -> Result<(), NetlinkError> {
    let len = u16::try_from(4 + value.len()).map_err(|_| NetlinkError::TooLong {
        what: format!("netlink attribute {kind}"),
        len: 4 + value.len(),
        max: usize::from(u16::MAX),
    })?;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len().next_multiple_of(4), 0);
    Ok(())
}

/// A netlink message: header, then `payload`; refused when its length does not fit the
/// header's 32-bit length field.
pub fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Result<Vec<u8>, NetlinkError> {
    let len = u32::try_from(16 + payload.len()).map_err(|_| NetlinkError::TooLong {
        what: "a netlink message".to_string(),
        len: 16 + payload.len(),
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip() {
        let mut nested = Vec::new();
        put(&mut nested, 1, &[6]).unwrap();
        put(&mut nested, 3, &3000u16.to_be_bytes()).unwrap();
        let mut bytes = Vec::new();
        put(&mut bytes, 2 | NLA_F_NESTED, &nested).unwrap();
        put(&mut bytes, 18, &[0, 0]).unwrap();
        let outer: Vec<_> = attributes(&bytes).collect();
        assert_eq!(outer.len(), 2);
        assert_eq!(outer[0].kind, 2);
        assert_eq!(find(outer[0].value, 1).and_then(|a| a.u8()), Some(6));
        assert_eq!(find(outer[0].value, 3).and_then(|a| a.be16()), Some(3000));
        assert_eq!(outer[1].raw.len(), 6);
        // A truncated attribute ends the walk instead of reading past the buffer.
        assert_eq!(attributes(&bytes[..5]).count(), 0);
    }

    #[test]
    fn messages_are_padded() {
        let message = message(0x0102, 1, 7, &[1, 2, 3]).unwrap();
        assert_eq!(message.len(), 20);
        assert_eq!(u32::from_ne_bytes(message[..4].try_into().unwrap()), 19);
    }

    #[test]
    fn oversized_attributes_are_refused() {
        let mut out = Vec::new();
        assert!(put(&mut out, 1, &vec![0; 65531]).is_ok());
        assert!(matches!(
            put(&mut out, 1, &vec![0; 65532]),
            Err(NetlinkError::TooLong { len: 65536, .. })
        ));
    }
}
