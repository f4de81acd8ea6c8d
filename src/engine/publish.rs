//! `add`: publishing ports of a namespace or an address.

use std::collections::HashMap;
use std::net::IpAddr;

use super::resolve::{self, PublishOptions, Target, resolve};
use super::{overlap, transact, transaction};
use crate::error::Error;
use crate::netlink::rtnetlink;
use crate::plan::Plan;
use crate::ruleset::Mapping;
use crate::spec::PublishSpec;

/// Publishes every port of `specs` to `target`, in one atomic batch, and returns the
/// mappings made. Re-publishing a mapping with the same host side and target succeeds and
/// refreshes what it records (namespace, options); a host port that leads elsewhere
/// already is a conflict.
///
/// ```no_run
/// use nsport::{PublishOptions, Target};
/// # fn main() -> Result<(), nsport::Error> {
/// let specs = ["8080:80".parse()?, "127.0.0.1:5353:53/udp".parse()?];
/// let made = nsport::publish(&Target::Netns("ns1".into()), &PublishOptions::default(), &specs)?;
/// assert_eq!(made[0].host_port, 8080);
/// # Ok(())
/// # }
/// ```
pub fn publish(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<Vec<Mapping>, Error> {
    crate::netlink::pinned_for(|| publish_pinned(target, options, specs))
}

fn publish_pinned(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<Vec<Mapping>, Error> {
    let (resolved, mappings) = prepare_publish(target, options, specs)?;
    let ports: HashMap<IpAddr, Option<rtnetlink::Link>> = resolved
        .into_iter()
        .map(|r| (r.addr, r.bridge_port))
        .collect();
    let committed = transact(false, &ports, |kernel, counts, dry_run| {
        transaction::create(kernel, counts, &mappings, options.force, dry_run)
    })?;
    for warning in &committed.warnings {
        log::warn!("{warning}");
    }
    Ok(mappings)
}

fn prepare_publish(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<(Vec<resolve::Resolved>, Vec<Mapping>), Error> {
    if let Some(on) = &options.on {
        resolve::check_on(on, specs)?;
    }
    let resolved = resolve(target, options.via.as_deref())?;
    if options.on.is_none() {
        resolve::check_local(specs)?;
    }
    let mut mappings = resolve::mappings_for(
        &resolved,
        specs,
        options.allow_direct,
        options.on.as_deref(),
    )?;
    let allow_from = crate::model::canonical(&options.allow_from);
    for mapping in &mut mappings {
        mapping.allow_from = allow_from.clone();
    }
    if !options.force {
        overlap::check(&[], &mappings)?;
        resolve::check_host_ports(&mappings)?;
    }
    Ok((resolved, mappings))
}

/// What `publish` would change, touching nothing: read at the current generation, so a
/// conflict is reported as the real command would report it, and re-publishing what is
/// there already previews as nothing to change.
pub fn publish_dry_run(
    target: &Target,
    options: &PublishOptions,
    specs: &[PublishSpec],
) -> Result<Plan, Error> {
    let (_, mappings) = prepare_publish(target, options, specs)?;
    let committed = transact(true, &HashMap::new(), |kernel, counts, dry_run| {
        transaction::create(kernel, counts, &mappings, options.force, dry_run)
    })?;
    Ok(committed.plan)
}
