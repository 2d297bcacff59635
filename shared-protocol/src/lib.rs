//! The guest agent's API (`proto/agent.proto`), shared by the agent in the
//! guest (`guest-agent/`) and its client on the host (`runtime::agent`).
//! The code is generated at build time by ttrpc-codegen.

#![allow(
    missing_docs,
    unused_mut,
    dead_code,
    non_camel_case_types,
    non_snake_case
)]
#![allow(non_upper_case_globals, unused_imports, unused_results, unknown_lints)]
#![allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]

/// Messages.
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The ttrpc service (server trait, `create_agent`) and client (`AgentClient`).
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use ttrpc;

/// The protocol version `Check` reports; bumped on any incompatible change
/// of `proto/agent.proto`.
/// 2: `CreateContainerRequest.volumes` (an older agent would drop them).
pub const PROTOCOL_VERSION: u32 = 2;

/// The vsock port the agent listens on unless told otherwise.
pub const AGENT_VSOCK_PORT: u32 = 1024;
