//! Links the guest as a freestanding static ELF at 1 MiB with our script.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,noexecstack",
        &format!("-Wl,-T,{dir}/link.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
