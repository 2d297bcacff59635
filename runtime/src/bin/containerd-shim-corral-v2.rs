//! `containerd-shim-corral-v2`: containerd's runtime `io.containerd.corral.v2`.
//! The shim process is the pod's VMM; see `corral_runtime::shim`.

fn main() {
    corral_runtime::shim::main();
}
