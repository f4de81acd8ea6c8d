//! `apply`: making the table hold exactly what a saved listing holds.

use std::collections::HashMap;

use super::{change, resolve};
use crate::error::{Error, kernel};
use crate::netlink::rtnetlink;
use crate::plan::Plan;
use crate::ruleset::Mapping;

/// Makes the table hold exactly `desired`, in one batch: the file format is what
/// `nsport ls --json` prints, so a listing saved earlier is applied back unchanged.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let saved = std::fs::read_to_string("/etc/nsport/mappings.json")?;
/// let desired = nsport::parse_mappings(&saved)?;
/// let plan = nsport::apply(&desired, false)?;
/// println!("{} added, {} removed", plan.add.len(), plan.delete.len());
/// # Ok(())
/// # }
/// ```
pub fn apply(desired: &[Mapping], dry_run: bool) -> Result<Plan, Error> {
    check_mappings(desired)?;
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for mapping in desired {
        if seen.insert(&mapping.via, ()).is_none()
            && rtnetlink::link_by_name(&mapping.via)
                .map_err(kernel)?
                .is_none()
        {
            return Err(Error::NoSuchIface(mapping.via.clone()));
        }
    }
    change(dry_run, |_| Ok(desired.to_vec()))
}

/// Reads mappings in the format of `nsport ls --json`; fields it does not need (counters,
/// status) are ignored.
pub fn parse_mappings(text: &str) -> Result<Vec<Mapping>, Error> {
    serde_json::from_str(text).map_err(|error| Error::File(error.to_string()))
}

/// Refuses a file that could not have come from nsport.
fn check_mappings(mappings: &[Mapping]) -> Result<(), Error> {
    let mut seen: HashMap<(&'static str, Vec<u8>), &Mapping> = HashMap::new();
    for mapping in mappings {
        resolve::check_ifname(&mapping.via)?;
        resolve::check_target(mapping.to_addr)?;
        if let Some(ifname) = &mapping.container_ifname {
            resolve::check_ifname(ifname)?;
        }
        if mapping.via.is_empty() {
            return Err(Error::File(format!(
                "{} has no \"via\" interface",
                mapping.host_label()
            )));
        }
        if mapping
            .host_addr
            .is_some_and(|addr| addr.is_ipv6() != mapping.is_ipv6())
        {
            return Err(Error::File(format!(
                "{} mixes IPv4 and IPv6",
                mapping.host_label()
            )));
        }
        if mapping.host_port == 0 || mapping.to_port == 0 {
            return Err(Error::File(format!("{} has port 0", mapping.host_label())));
        }
        if let Some(first) = seen.insert((mapping.set(), mapping.key()), mapping)
            && first != mapping
        {
            return Err(Error::Duplicate {
                spec: mapping.host_label(),
                first: first.target_label(),
                second: mapping.target_label(),
            });
        }
    }
    Ok(())
}
