//! What nsport deals in, as plain data with no I/O: the mappings it publishes, and the
//! file that records them.

mod file;
mod mapping;

pub use file::{EntryTarget, FILE_VERSION, MappingEntry, MappingsFile};
pub use mapping::Mapping;
