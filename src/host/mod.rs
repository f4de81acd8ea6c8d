//! The host around the table: the settings nsport changes (and the record of what they
//! were), sysctls, the host's own sockets, other firewalls, and network namespaces.

pub mod firewalls;
pub mod netns;
pub mod settings;
pub mod sockets;
pub mod state;
pub mod sysctl;
