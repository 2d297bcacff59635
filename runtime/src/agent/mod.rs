//! The host side of the guest agent (`guest-agent/`): a ttrpc client that
//! reaches the agent through Corral's hybrid vsock Unix socket
//! (`CONNECT 1024\n` → `OK <port>\n`, as Firecracker's), retries until the
//! agent is up within a bounded deadline, and puts a deadline on every call
//! except the ones that wait for the guest (process exit, output).

mod client;
mod connect;

pub use client::{AgentCallError, AgentClient, ProcessExit, Stats};
pub use connect::{connect_hybrid_vsock, AgentConnectError};
pub use corral_protocol::agent::{Storage, Volume};
pub use corral_protocol::ttrpc::Code;
pub use corral_protocol::{AGENT_VSOCK_PORT, PROTOCOL_VERSION};

/// A volume for [`AgentClient::create_container_with_volumes`]: the disk
/// whose virtio serial is `serial`, mounted in the container at
/// `mount_point`.
pub fn volume(serial: &str, readonly: bool, mount_point: &str) -> Volume {
    let mut storage = Storage::new();
    storage.virtio_serial = serial.to_string();
    storage.readonly = readonly;
    let mut v = Volume::new();
    v.storage = protobuf::MessageField::some(storage);
    v.mount_point = mount_point.to_string();
    v
}
