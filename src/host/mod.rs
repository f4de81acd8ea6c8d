//! The host around the table: the settings nsport changes (and the record of what they
//! were), sysctls, the host's own sockets, other firewalls (and the walk of a published
//! connection through their chains), and network namespaces.

pub mod firewalls;
mod forward_path;
pub mod netns;
pub mod settings;
pub mod sockets;
pub mod state;
pub mod sysctl;
mod xtables;
