//! What nsport deals in, as plain data with no I/O: the mappings it publishes.

mod mapping;

pub use mapping::Mapping;
