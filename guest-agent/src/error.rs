//! The agent's errors. Each becomes a one-line ttrpc error status for the
//! host (`NOT_FOUND` for unknown ids, `INVALID_ARGUMENT` for bad input,
//! `INTERNAL` otherwise); the agent keeps serving after any of them.

use std::path::PathBuf;

use corral_protocol::ttrpc::{self, Code};

/// Why an agent request failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No container with this id.
    #[error("no container {0:?} in this sandbox")]
    NoSuchContainer(String),
    /// No process with this exec id in the container.
    #[error("no process {exec_id:?} in container {container_id:?}")]
    NoSuchProcess {
        /// The container.
        container_id: String,
        /// The exec id asked for.
        exec_id: String,
    },
    /// The id is taken.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// "container" or "process".
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// An id that cannot be a file name.
    #[error("invalid id {0:?}: use letters, digits, '-', '_' and '.', at most 128 characters")]
    InvalidId(String),
    /// The request itself is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The OCI spec is not valid JSON or not an OCI spec.
    #[error("malformed OCI spec: {0}")]
    MalformedSpec(#[source] serde_json::Error),
    /// The container is not in the state the request needs.
    #[error("container {id:?} is {state}; {wanted}")]
    WrongState {
        /// The container.
        id: String,
        /// Its state.
        state: &'static str,
        /// What the request needs.
        wanted: &'static str,
    },
    /// The rootfs disk is not there.
    #[error("no block device with virtio serial {serial:?} (looked in /sys/block/*/serial)")]
    NoDisk {
        /// The serial asked for.
        serial: String,
    },
    /// A resource limit the guest cannot enforce.
    #[error("{limit} cannot be enforced in the guest: {reason}")]
    Unenforceable {
        /// The limit, with its value.
        limit: String,
        /// Why not.
        reason: String,
    },
    /// A system call on a path failed.
    #[error("{what} {path}: {source}")]
    Path {
        /// What was done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was done.
        what: &'static str,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The container's init or exec process reported a failure.
    #[error("container {id:?}: {message}")]
    ChildFailed {
        /// The container.
        id: String,
        /// What the child wrote before exiting.
        message: String,
    },
}

impl AgentError {
    /// A [`AgentError::Sys`] from the last errno.
    pub fn sys(what: &'static str, source: impl Into<std::io::Error>) -> Self {
        AgentError::Sys {
            what,
            source: source.into(),
        }
    }

    /// A [`AgentError::Path`].
    pub fn path(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        AgentError::Path {
            what,
            path: path.into(),
            source: source.into(),
        }
    }

    fn code(&self) -> Code {
        match self {
            AgentError::NoSuchContainer(_) | AgentError::NoSuchProcess { .. } => Code::NOT_FOUND,
            AgentError::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            AgentError::InvalidId(_)
            | AgentError::InvalidArgument(_)
            | AgentError::MalformedSpec(_)
            | AgentError::NoDisk { .. }
            | AgentError::Unenforceable { .. } => Code::INVALID_ARGUMENT,
            AgentError::WrongState { .. } => Code::FAILED_PRECONDITION,
            AgentError::Path { .. } | AgentError::Sys { .. } | AgentError::ChildFailed { .. } => {
                Code::INTERNAL
            }
        }
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let more = s.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = s.source();
        }
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), text.replace('\n', " ")))
    }
}

/// Checks an id used as a file and cgroup name.
pub fn check_id(id: &str) -> Result<(), AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidId(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_escape_a_directory_are_refused() {
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        for good in ["abc", "pod-1_a.b", &"x".repeat(128)] {
            assert!(check_id(good).is_ok(), "{good:?}");
        }
    }
}
