//! What nsport deals in, as plain data with no I/O: the mappings it publishes, and the
//! file that records them.

mod file;
mod mapping;
mod source;

pub use file::{EntryTarget, FILE_VERSION, MappingEntry, MappingsFile};
pub use mapping::Mapping;
pub use source::{PrefixError, SourcePrefix, canonical, list_label, parse_list};
