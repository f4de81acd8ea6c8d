//! `flush`: everything nsport made, gone, and every setting it changed put back.

use super::kernel::{Kernel, Netlink};
use super::remove::remove_gone_records;
use super::table::{self, Snapshot};
use super::{flows, kernel_error, transaction, writer_lock};
use crate::error::Error;
use crate::host::settings::Settings;
use crate::netlink::NetlinkError;
use crate::netlink::nftables::Change;
use crate::plan::Plan;
use crate::ruleset::Mapping;

/// Deletes `table inet nsport` and puts back every setting nsport changed; succeeds when
/// there is no table. The record is read before anything is deleted, and the settings go
/// back before the guard does: an unreadable record falls back to route_localnet 0 on
/// every interface the table names.
///
/// ```no_run
/// # fn main() -> Result<(), nsport::Error> {
/// nsport::flush(false)?;
/// assert!(nsport::list()?.is_empty());
/// # Ok(())
/// # }
/// ```
pub fn flush(dry_run: bool) -> Result<Plan, Error> {
    let lock = writer_lock()?;
    let mut kernel = Netlink;
    let mut snapshot = table::read(&mut kernel, true)?;
    snapshot.layout.check_changeable()?;
    let mut ifaces = table::table_interfaces(&snapshot);
    ifaces.extend(snapshot.mappings.iter().map(|(m, _)| m.via.clone()));
    let mut settings = Settings::load(&lock, || ifaces)?;
    settings.originals.counts = None;
    let plan = Plan {
        delete_table: snapshot.exists,
        notes: settings.would_put_back(),
        ..Plan::default()
    };
    if dry_run {
        return Ok(plan);
    }
    settings.put_back_everything()?;
    let all: Vec<Mapping> = plan_mappings(&snapshot);
    let mut tries = 0;
    while snapshot.exists {
        match kernel.commit(&[Change::DelTable], Some(snapshot.genid)) {
            Ok(()) => break,
            Err(error) if error.errno() == Some(libc::ENOENT) => break,
            Err(NetlinkError::Stale) if tries + 1 < transaction::TRIES => {
                tries += 1;
                snapshot = table::read(&mut kernel, false)?;
            }
            Err(NetlinkError::Stale) => return Err(Error::Busy { tries: tries + 1 }),
            Err(error) => return Err(kernel_error(error)),
        }
    }
    flows::forget(&all, &[]);
    remove_gone_records();
    if settings.originals.is_empty()
        && let Err(error) = lock.remove_files()
    {
        log::warn!("cannot remove the settings record: {error}");
    }
    Ok(plan)
}

fn plan_mappings(snapshot: &Snapshot) -> Vec<Mapping> {
    snapshot.mappings.iter().map(|(m, _)| m.clone()).collect()
}
