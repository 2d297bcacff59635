//! The systemd driver: a transient scope with `Delegate=yes`, whose subtree
//! Corral then manages itself through cgroupfs.
//!
//! cgroups-rs's `SystemdClient` talks to systemd over the D-Bus *system bus*
//! with zbus (a blocking connection per call). Connecting can spawn zbus
//! helper threads and, on a broken bus, take a while; so reachability is
//! first checked cheaply, as `sd_booted(3)` does — `/run/systemd/system` is
//! a directory — plus the bus socket existing (`DBUS_SYSTEM_BUS_ADDRESS`'s
//! `unix:path=` or `/run/dbus/system_bus_socket`). When either is missing,
//! or any D-Bus call fails, the caller falls back to cgroupfs with a
//! warning; this module never fails the sandbox for systemd's absence.
//!
//! The scope is started with this process in `PIDs`, then the process is
//! attached again with `AttachProcessesToUnit` (synchronous), as cgroups-rs
//! and Kata do. Teardown moves every thread back out of the scope first —
//! stopping a scope kills what is still inside — and then stops the unit.

use std::path::{Path, PathBuf};

use cgroups_rs::systemd::props::PropertiesBuilder;
use cgroups_rs::systemd::SystemdClient;
use cgroups_rs::CgroupPid;

/// Default system bus socket (the D-Bus specification's well-known path).
const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// Why systemd cannot be used, or `Ok` when it looks reachable.
pub(crate) fn reachable() -> Result<(), String> {
    if !Path::new("/run/systemd/system").is_dir() {
        return Err("systemd is not running (/run/systemd/system is missing)".to_string());
    }
    let socket = bus_socket(std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok().as_deref());
    match socket {
        Some(path) if !path.exists() => Err(format!(
            "the D-Bus system bus socket {} does not exist",
            path.display()
        )),
        // A non-path address (abstract socket, tcp): let zbus try it.
        _ => Ok(()),
    }
}

/// The socket path of a D-Bus address (`unix:path=/x,guid=…;…`), the
/// default when unset, `None` when the address is not a unix path.
fn bus_socket(address: Option<&str>) -> Option<PathBuf> {
    let Some(address) = address else {
        return Some(PathBuf::from(SYSTEM_BUS_SOCKET));
    };
    let first = address.split(';').next()?;
    let params = first.strip_prefix("unix:")?;
    params
        .split(',')
        .find_map(|kv| kv.strip_prefix("path="))
        .map(PathBuf::from)
}

/// A started transient scope.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// The unit name, `prefix-name.scope`.
    pub(crate) unit: String,
}

/// Starts `unit` in `slice` with `Delegate=yes` and this process in it.
pub(crate) fn start_scope(slice: &str, unit: &str, pid: i32) -> Result<Scope, String> {
    let pid = u32::try_from(pid).map_err(|_| format!("invalid pid {pid}"))?;
    let props = PropertiesBuilder::default_cgroup(slice, unit)
        .description(format!("Corral sandbox {unit}"))
        .pids(vec![pid])
        .build();
    let client = SystemdClient::new(unit, props)
        .map_err(|e| format!("cannot describe scope {unit}: {e}"))?;
    client
        .start()
        .map_err(|e| format!("StartTransientUnit {unit} in {slice} failed: {e}"))?;
    if let Err(e) = client.add_process(CgroupPid::from(u64::from(pid)), "/") {
        let reason = format!("AttachProcessesToUnit {unit} (pid {pid}) failed: {e}");
        // Best effort: a half-started scope must not linger.
        if let Err(stop) = client.stop() {
            tracing::warn!(unit, error = %stop, "cannot stop half-started scope");
        }
        return Err(reason);
    }
    Ok(Scope {
        unit: unit.to_string(),
    })
}

impl Scope {
    /// Stops the unit; a unit that is already gone is fine.
    pub(crate) fn stop(&self) -> Result<(), String> {
        let client = SystemdClient::new(&self.unit, Vec::new())
            .map_err(|e| format!("cannot describe scope {}: {e}", self.unit))?;
        client
            .stop()
            .map_err(|e| format!("StopUnit {} failed: {e}", self.unit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_addresses_resolve_to_socket_paths() {
        assert_eq!(bus_socket(None), Some(PathBuf::from(SYSTEM_BUS_SOCKET)));
        assert_eq!(
            bus_socket(Some("unix:path=/tmp/bus,guid=1;tcp:host=x")),
            Some(PathBuf::from("/tmp/bus"))
        );
        assert_eq!(bus_socket(Some("unix:abstract=/tmp/x")), None);
        assert_eq!(bus_socket(Some("tcp:host=localhost,port=1")), None);
    }
}
