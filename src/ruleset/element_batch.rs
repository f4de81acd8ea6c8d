//! Many mappings at once, as one change (`apply`, the CNI plugin, `prune`) makes them:
//! their recorded form and their elements. The mappings of one change mostly share their
//! metadata (one target, one interface), so its comment is written, and read back, once
//! for each run of mappings that share it, not once for each of 50,000 mappings.

use std::borrow::Cow;

use super::Element;
use super::metadata::Metadata;
use crate::model::Mapping;

impl Mapping {
    /// Each of `mappings` as `as_recorded` makes it. The mappings of one change mostly
    /// share their metadata (one target, one interface), so each run of equal metadata is
    /// written and read back once, and a mapping whose names record as they are keeps them
    /// without a copy.
    pub fn all_recorded(mappings: Vec<Mapping>) -> Vec<Mapping> {
        let mut runs = RecordedRuns::default();
        mappings
            .into_iter()
            .map(|mapping| match runs.changed(&mapping) {
                Some(recorded) => mapping.with_metadata(recorded.clone()),
                None => mapping,
            })
            .collect()
    }

    /// `all_recorded` of mappings that are only read: themselves, not a copy, when every
    /// one records as it is, which all do but those with names a comment cannot carry.
    pub fn all_recorded_borrowed(mappings: &[Mapping]) -> Cow<'_, [Mapping]> {
        let mut runs = RecordedRuns::default();
        match mappings
            .iter()
            .all(|mapping| runs.changed(mapping).is_none())
        {
            true => Cow::Borrowed(mappings),
            false => Cow::Owned(Mapping::all_recorded(mappings.to_vec())),
        }
    }

    /// Whether `metadata` is this mapping's, field for field (without copying them). Taken
    /// apart whole, so that a field added to `Metadata` cannot be forgotten here.
    fn has_metadata(&self, metadata: &Metadata) -> bool {
        let Metadata {
            via,
            netns,
            netns_inode,
            allow_direct,
            container,
            container_ifname,
            network,
        } = metadata;
        self.via == *via
            && self.netns == *netns
            && self.netns_inode == *netns_inode
            && self.allow_direct == *allow_direct
            && self.container == *container
            && self.container_ifname == *container_ifname
            && self.network == *network
    }
}

/// The metadata of the last run of mappings that shared it, as written to a comment and as
/// read back from it.
#[derive(Default)]
struct RecordedRuns {
    last: Option<(Metadata, Metadata)>,
}

impl RecordedRuns {
    /// The metadata `mapping` records as, when that is not its own.
    fn changed(&mut self, mapping: &Mapping) -> Option<&Metadata> {
        let same = (self.last.as_ref()).is_some_and(|(written, _)| mapping.has_metadata(written));
        if !same {
            let written = mapping.metadata();
            let recorded = Metadata::parse(&written.to_comment());
            self.last = Some((written, recorded));
        }
        let (written, recorded) = self.last.as_ref().expect("set above");
        (written != recorded).then_some(recorded)
    }
}

impl Element {
    /// The elements of `mappings`, each comment formatted once for a run of mappings that
    /// share their metadata.
    pub fn mappings<'a>(mappings: impl IntoIterator<Item = &'a Mapping>) -> Vec<Element> {
        let mut last: Option<(Metadata, String)> = None;
        mappings
            .into_iter()
            .map(|mapping| {
                let comment = match &last {
                    Some((metadata, comment)) if mapping.has_metadata(metadata) => comment.clone(),
                    _ => {
                        let metadata = mapping.metadata();
                        let comment = metadata.to_comment();
                        last = Some((metadata, comment.clone()));
                        comment
                    }
                };
                Element::mapping_with_comment(mapping, comment)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of mappings with short, long (recorded as digests) and encoded names, a run
    /// broken by a mapping of other metadata and taken up again, and metadata that differs
    /// in one field only.
    fn mixed() -> Vec<Mapping> {
        let long = "n".repeat(200);
        let mut mappings = Vec::new();
        for (port, netns, via, inode) in [
            (1, Some("ns1"), "br0", Some(7)),
            (2, Some("ns1"), "br0", Some(7)),
            (3, Some(long.as_str()), "br0", Some(7)),
            (4, Some(long.as_str()), "br0", Some(7)),
            (5, Some("ns1"), "br0", Some(7)),
            (6, Some("ns1"), "br0", Some(8)),
            (7, Some("odd name%"), "v 1", None),
            (8, None, "br0", None),
            (9, Some(long.as_str()), "br0", Some(7)),
        ] {
            mappings.push(Mapping {
                host_port: port,
                netns: netns.map(String::from),
                netns_inode: inode,
                via: via.into(),
                container: (port == 8).then(|| "c".repeat(100)),
                ..Mapping::example()
            });
        }
        mappings
    }

    #[test]
    fn all_recorded_is_as_recorded_of_each() {
        let mappings = mixed();
        let one_by_one: Vec<Mapping> = mappings.iter().map(Mapping::as_recorded).collect();
        // The long names are recorded otherwise, so this compares something.
        assert_ne!(one_by_one, mappings);
        assert_eq!(Mapping::all_recorded(mappings), one_by_one);
    }

    #[test]
    fn all_recorded_borrowed_copies_only_when_one_records_otherwise() {
        let mixed = mixed();
        let recorded = Mapping::all_recorded_borrowed(&mixed);
        assert!(matches!(recorded, Cow::Owned(_)));
        assert_eq!(*recorded, Mapping::all_recorded(mixed.clone()));
        // Only the mappings whose names record as they are.
        let plain: Vec<Mapping> = mixed
            .iter()
            .filter(|m| m.as_recorded() == **m)
            .cloned()
            .collect();
        assert!(plain.len() > 1 && plain.len() < mixed.len());
        assert!(matches!(
            Mapping::all_recorded_borrowed(&plain),
            Cow::Borrowed(_)
        ));
        // One that does not, last after a run of those that do, is still seen.
        let mut last_odd = plain.clone();
        last_odd.push(mixed[2].clone());
        let recorded = Mapping::all_recorded_borrowed(&last_odd);
        assert_eq!(*recorded, Mapping::all_recorded(last_odd.clone()));
        assert_ne!(*recorded, last_odd);
    }

    #[test]
    fn elements_of_many_are_the_elements_of_each() {
        let mappings = mixed();
        let one_by_one: Vec<Element> = mappings.iter().map(Element::mapping).collect();
        assert_eq!(Element::mappings(&mappings), one_by_one);
    }
}
