//! The OCI spec of a container started from the command line (no bundle):
//! oci-spec's runc-like default (namespaces, mounts, capabilities, masked
//! and read-only paths, NOFILE 1024) with the given command, environment
//! and terminal, and a writable root.

use oci_spec::runtime::{ProcessBuilder, Spec};

/// Why a spec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ContainerSpecError {
    /// No command.
    #[error("no command to run in the container: give it after `--`")]
    NoCommand,
    /// An environment entry without `=`.
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    /// oci-spec refused a value.
    #[error("cannot build the OCI spec: {0}")]
    Build(#[source] oci_spec::OciSpecError),
}

/// A spec running `args` with `env` (added to PATH and TERM).
pub fn container_spec(
    args: &[String],
    env: &[String],
    terminal: bool,
    hostname: &str,
) -> Result<Spec, ContainerSpecError> {
    if args.is_empty() {
        return Err(ContainerSpecError::NoCommand);
    }
    if let Some(bad) = env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
        return Err(ContainerSpecError::BadEnv(bad.clone()));
    }
    let mut spec = Spec::default();
    let defaults = spec.process().clone().unwrap_or_default();
    let mut all_env = defaults.env().clone().unwrap_or_default();
    for e in env {
        let key = e.split('=').next().unwrap_or_default();
        all_env.retain(|d| d.split('=').next() != Some(key));
        all_env.push(e.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(terminal)
        .user(defaults.user().clone())
        .args(args.to_vec())
        .env(all_env)
        .cwd("/")
        .capabilities(defaults.capabilities().clone().unwrap_or_default())
        .rlimits(defaults.rlimits().clone().unwrap_or_default())
        .no_new_privileges(true)
        .build()
        .map_err(ContainerSpecError::Build)?;
    spec.set_process(Some(process));
    spec.set_hostname(Some(hostname.to_string()));
    if let Some(root) = spec.root_mut() {
        root.set_readonly(Some(false));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_env_and_root_are_set_and_bad_input_is_named() {
        let spec = container_spec(
            &s(&["sh", "-c", "true"]),
            &s(&["A=1", "PATH=/x"]),
            false,
            "h",
        )
        .unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_deref(), Some(&s(&["sh", "-c", "true"])[..]));
        let env = p.env().clone().unwrap();
        assert!(env.contains(&"A=1".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert!(env.contains(&"PATH=/x".to_string()));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        assert_eq!(spec.hostname().as_deref(), Some("h"));
        assert!(p.capabilities().is_some());
        assert!(matches!(
            container_spec(&[], &[], false, "h"),
            Err(ContainerSpecError::NoCommand)
        ));
        let err = container_spec(&s(&["x"]), &s(&["NOEQUALS"]), false, "h").unwrap_err();
        assert!(err.to_string().contains("\"NOEQUALS\""), "{err}");
    }
}
