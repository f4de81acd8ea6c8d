//! What a mapping element records besides its key and data — the interface toward the
//! target, the namespace, the CNI container — written as the element's comment so that it
//! reads naturally in `nft list ruleset` and survives `nft list ruleset | nft -f`.
//!
//! Names come from outside (namespace names, container IDs) and may hold any byte, so
//! every value is percent-encoded: only `A-Z a-z 0-9 _ . - : / @ + ,` stand for
//! themselves, and no name can forge a field (a space, `=`, a quote) or break the comment
//! for `nft -f`. nft reads comments of at most 128 bytes; a value too long to fit is
//! replaced by its digest, `#` + a short readable prefix + `~` + 64 bits of its SHA-256,
//! which still identifies it. No exact value starts with `#` (namespace names that do are
//! refused, and CNI IDs and network names cannot), so a digest is never mistaken for a
//! name, and `same_name` matches a recorded value against a name either way.

use sha2::{Digest, Sha256};

/// The longest comment `nft -f` loads back.
pub const COMMENT_MAX: usize = 128;
/// A value longer than this, encoded, is recorded by its digest from the start.
const VALUE_MAX: usize = 64;
/// How many bytes of a long value's prefix its digest shows.
const DIGEST_PREFIX: usize = 8;

fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"_.-:/@+,".contains(&byte)
}

/// Percent-encodes every byte that is not plain.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if is_plain(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The inverse of `encode`; `None` for text `encode` cannot have written.
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            byte if is_plain(byte) || byte == b'#' || byte == b'~' => {
                out.push(byte);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The digest that stands for a value too long to record: `#PREFIX~HEX16`.
pub fn digest(value: &str) -> String {
    // Only plain characters, so that the digest reads back exactly as written.
    let prefix: String = value
        .bytes()
        .take(DIGEST_PREFIX)
        .map(|b| {
            if is_plain(b) && b != b'/' {
                b as char
            } else {
                '_'
            }
        })
        .collect();
    let hash = Sha256::digest(value.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("#{prefix}~{hex}")
}

/// Whether a value read back from a comment is a digest rather than the name itself.
pub fn is_digest(recorded: &str) -> bool {
    recorded.starts_with('#')
}

/// Whether a recorded value (a name, or a digest) stands for `name`.
pub fn same_name(recorded: &str, name: &str) -> bool {
    recorded == name || (is_digest(recorded) && recorded == digest(name))
}

/// The fields of a comment, as values (not yet encoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    pub via: String,
    pub netns: Option<String>,
    pub netns_inode: Option<u64>,
    pub allow_direct: bool,
    pub container: Option<String>,
    pub container_ifname: Option<String>,
    pub network: Option<String>,
}

/// One value as recorded: itself, or its digest when it is too long (or already one).
fn recorded(value: &str, shrink: bool) -> String {
    if is_digest(value) && decode(value).as_deref() == Some(value) {
        return value.to_string();
    }
    let encoded = encode(value);
    if shrink || encoded.len() > VALUE_MAX {
        digest(value)
    } else {
        encoded
    }
}

impl Metadata {
    /// The comment, at most `COMMENT_MAX` bytes: long names shrink to their digests, the
    /// longest first, and when even that is not enough (a CNI mapping with a namespace
    /// path and a network name), the namespace's name is left out while its inode stays.
    pub fn to_comment(&self) -> String {
        let mut shrink = [false; 4];
        let mut keep_netns = true;
        let mut keep_inode = true;
        loop {
            let comment = self.write(shrink, keep_netns, keep_inode);
            if comment.len() <= COMMENT_MAX {
                return comment;
            }
            // The longest field as written (`/` in a CNI field takes three bytes there)
            // that its digest would make shorter.
            let written = |i: usize, value: Option<&str>| {
                value.map_or(0, |v| {
                    let recorded = recorded(v, false);
                    if i == 1 || i == 2 {
                        recorded.replace('/', "%2F").len()
                    } else {
                        recorded.len()
                    }
                })
            };
            let lengths = [
                written(0, self.netns.as_deref().filter(|_| keep_netns)),
                written(1, self.container.as_deref()),
                written(2, self.container_ifname.as_deref()),
                written(3, self.network.as_deref()),
            ];
            match (0..4)
                .filter(|&i| !shrink[i] && lengths[i] > DIGEST_PREFIX + 18)
                .max_by_key(|&i| lengths[i])
            {
                Some(longest) => shrink[longest] = true,
                None if keep_netns && self.netns.is_some() => keep_netns = false,
                // A CNI mapping is tracked by its container: its namespace's inode is the
                // last thing to give up for room.
                None if keep_inode && self.container.is_some() => keep_inode = false,
                None => return comment,
            }
        }
    }

    fn write(&self, shrink: [bool; 4], keep_netns: bool, keep_inode: bool) -> String {
        let mut comment = format!("via={}", encode(&self.via));
        if let Some(netns) = self.netns.as_deref().filter(|_| keep_netns) {
            comment.push_str(" netns=");
            comment.push_str(&recorded(netns, shrink[0]));
        }
        if let Some(inode) = self.netns_inode.filter(|_| keep_inode) {
            comment.push_str(&format!(" ino={inode}"));
        }
        if self.allow_direct {
            comment.push_str(" direct=allow");
        }
        if let Some(container) = &self.container {
            let ifname = self.container_ifname.as_deref().unwrap_or_default();
            // `/` separates the two, so neither may hold one as itself.
            comment.push_str(&format!(
                " cni={}/{}",
                recorded(container, shrink[1]).replace('/', "%2F"),
                recorded(ifname, shrink[2]).replace('/', "%2F")
            ));
        }
        if let Some(network) = &self.network {
            comment.push_str(" net=");
            comment.push_str(&recorded(network, shrink[3]));
        }
        comment
    }

    /// Reads a comment back; fields it does not know are skipped, and a value that does
    /// not decode is taken as absent rather than guessed at.
    pub fn parse(comment: &str) -> Metadata {
        let mut metadata = Metadata::default();
        for field in comment.split(' ') {
            match field.split_once('=') {
                Some(("via", value)) => metadata.via = decode(value).unwrap_or_default(),
                Some(("netns", value)) => metadata.netns = decode(value),
                Some(("ino", value)) => metadata.netns_inode = value.parse().ok(),
                Some(("direct", "allow")) => metadata.allow_direct = true,
                Some(("net", value)) => metadata.network = decode(value),
                Some(("cni", value)) => {
                    let (id, ifname) = value.split_once('/').unwrap_or((value, ""));
                    metadata.container = decode(id);
                    metadata.container_ifname = decode(ifname).filter(|name| !name.is_empty());
                }
                _ => {}
            }
        }
        metadata
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ordinary_names_read_as_they_are() {
        let metadata = Metadata {
            via: "br0".into(),
            netns: Some("ns1".into()),
            netns_inode: Some(4026532000),
            allow_direct: false,
            container: None,
            container_ifname: None,
            network: None,
        };
        assert_eq!(metadata.to_comment(), "via=br0 netns=ns1 ino=4026532000");
        assert_eq!(Metadata::parse(&metadata.to_comment()), metadata);
    }

    #[test]
    fn a_name_cannot_forge_a_field() {
        let metadata = Metadata {
            via: "br0".into(),
            netns: Some("d direct=allow".into()),
            ..Metadata::default()
        };
        let comment = metadata.to_comment();
        assert_eq!(comment, "via=br0 netns=d%20direct%3Dallow");
        let back = Metadata::parse(&comment);
        assert!(!back.allow_direct);
        assert_eq!(back.netns.as_deref(), Some("d direct=allow"));
    }

    #[test]
    fn long_names_become_digests_that_still_match() {
        let long = "n".repeat(4096);
        let metadata = Metadata {
            via: "br0".into(),
            netns: Some(long.clone()),
            netns_inode: Some(1),
            ..Metadata::default()
        };
        let comment = metadata.to_comment();
        assert!(comment.len() <= COMMENT_MAX, "{comment}");
        let back = Metadata::parse(&comment).netns.unwrap();
        assert!(is_digest(&back));
        assert!(same_name(&back, &long));
        assert!(!same_name(&back, &"n".repeat(4095)));
        // A digest read back and written again stays the same digest.
        let again = Metadata {
            netns: Some(back.clone()),
            ..metadata
        };
        assert_eq!(Metadata::parse(&again.to_comment()).netns, Some(back));
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]{1,20}",
            any::<String>(),
            proptest::collection::vec(any::<char>(), 1..4096)
                .prop_map(|chars| chars.into_iter().collect()),
            "[ \"=/%#~\\\\\\x00-\\x1f]{1,64}",
        ]
        .prop_filter("exact names do not start with #", |n| !n.starts_with('#'))
    }

    proptest! {
        #[test]
        fn every_name_round_trips_or_matches_its_digest(
            netns in name(),
            container in proptest::option::of(name()),
            network in proptest::option::of(name()),
            ifname in "[a-z0-9]{1,15}",
            inode in any::<u64>(),
            direct in any::<bool>(),
        ) {
            let metadata = Metadata {
                via: "br-x_1".into(),
                netns: Some(netns.clone()),
                netns_inode: Some(inode),
                allow_direct: direct,
                container_ifname: container.as_ref().map(|_| ifname.clone()),
                container: container.clone(),
                network: network.clone(),
            };
            let comment = metadata.to_comment();
            prop_assert!(comment.len() <= COMMENT_MAX);
            prop_assert!(comment.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
            prop_assert!(!comment.contains('"'));
            let back = Metadata::parse(&comment);
            prop_assert_eq!(&back.via, "br-x_1");
            // Only a CNI mapping gives up its inode, and only for room.
            prop_assert!(back.netns_inode == Some(inode) || container.is_some());
            prop_assert_eq!(back.allow_direct, direct);
            if let Some(recorded) = &back.netns {
                prop_assert!(same_name(recorded, &netns));
            } else {
                // Left out only for room, and only beside a container.
                prop_assert!(container.is_some());
            }
            match (&back.container, &container) {
                (Some(recorded), Some(given)) => prop_assert!(same_name(recorded, given)),
                (None, None) => {}
                other => prop_assert!(false, "container {:?}", other),
            }
            match (&back.network, &network) {
                (Some(recorded), Some(given)) => prop_assert!(same_name(recorded, given)),
                (None, None) => {}
                other => prop_assert!(false, "network {:?}", other),
            }
        }
    }
}
