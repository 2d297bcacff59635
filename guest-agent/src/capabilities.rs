//! A process's capabilities from its OCI `process.capabilities`, applied in
//! the child around the switch to the process's user: the bounding set
//! first, then (keeping capabilities across `setuid`) the effective,
//! permitted, inheritable and ambient sets. Without `capabilities` in the
//! spec nothing changes (as runc does). Uses the `caps` crate.

use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

fn to_caps(set: &Option<Capabilities>) -> Result<CapsHashSet, String> {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = format!("CAP_{c}");
        let cap = Capability::from_str(&name).map_err(|e| format!("capability {name}: {e}"))?;
        out.insert(cap);
    }
    Ok(out)
}

/// Before the user switch: drops what is not in the bounding set and keeps
/// the permitted set across `setuid`.
pub fn before_user_switch(spec: Option<&LinuxCapabilities>) -> Result<(), String> {
    let Some(spec) = spec else { return Ok(()) };
    let bounding = to_caps(spec.bounding())?;
    let supported = caps::runtime::procfs_all_supported(None)
        .map_err(|e| format!("list supported capabilities: {e}"))?;
    for cap in supported.difference(&bounding) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_KEEPCAPS: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// After the user switch: the spec's sets, exactly.
pub fn after_user_switch(spec: Option<&LinuxCapabilities>) -> Result<(), String> {
    let Some(spec) = spec else { return Ok(()) };
    let effective = to_caps(spec.effective())?;
    let permitted = to_caps(spec.permitted())?;
    let inheritable = to_caps(spec.inheritable())?;
    let ambient = to_caps(spec.ambient())?;
    // Permitted last: until then the old permitted set still allows the
    // new effective and inheritable sets (each capset keeps effective a
    // subset of permitted).
    for (set, caps_wanted, name) in [
        (CapSet::Effective, &effective, "effective"),
        (CapSet::Inheritable, &inheritable, "inheritable"),
        (CapSet::Permitted, &permitted, "permitted"),
    ] {
        caps::set(None, set, caps_wanted)
            .map_err(|e| format!("set the {name} capabilities: {e}"))?;
    }
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| format!("clear the ambient capabilities: {e}"))?;
    for cap in &ambient {
        caps::raise(None, CapSet::Ambient, *cap)
            .map_err(|e| format!("raise ambient {cap}: {e}"))?;
    }
    Ok(())
}
