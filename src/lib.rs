//! nsport publishes ports of Linux network namespaces on the host, the way `docker run -p`
//! does, by programming one nftables table (`table inet nsport`) directly over netlink.
//!
//! A published port is an element of a map, so the rules never grow: a packet costs one
//! hash lookup however many ports are published. Each change is read, planned and committed
//! under one ruleset generation: it applies whole, against exactly what it was planned
//! from, or not at all.
//!
//! ```no_run
//! use nsport::{PublishOptions, Target};
//!
//! # fn main() -> Result<(), nsport::Error> {
//! // Publish port 3000 of namespace `ns1` on every address of the host.
//! let target = Target::Netns("ns1".into());
//! nsport::publish(&target, &PublishOptions::default(), &["3000:3000".parse()?])?;
//! for mapping in nsport::list()? {
//!     println!("{}:{} -> {}:{}", mapping.proto, mapping.host_port, mapping.to_addr, mapping.to_port);
//! }
//! # Ok(())
//! # }
//! ```

pub mod cni;
pub mod doctor;
mod engine;
mod error;
mod host;
pub mod metrics;
mod model;
pub mod netlink;
mod plan;
pub mod ruleset;
pub mod spec;

pub use engine::{
    Layout, Listing, PublishOptions, Target, apply, export_nft, flush, list, list_status, migrate,
    parse_mappings, prune, publish, publish_dry_run, table_layout, unpublish, unpublish_netns,
    unpublish_on,
};
pub use error::Error;
pub use host::netns::{self, NamespaceError};
pub use host::sysctl;
pub use model::{EntryTarget, FILE_VERSION, MappingEntry, MappingsFile, PrefixError, SourcePrefix};
pub use plan::Plan;
pub use ruleset::Mapping;
pub use spec::{HostSpec, Proto, PublishRequest, PublishSpec, SpecError, with_port};
