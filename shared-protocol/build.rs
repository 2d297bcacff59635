#![allow(clippy::expect_used)] // a build script reports by panicking

//! Generates the agent API's Rust code from `proto/agent.proto` with
//! ttrpc-codegen's pure-Rust protobuf parser (no `protoc`).

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(["proto/agent.proto"])
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("cannot generate the agent API from proto/agent.proto");
    // `include!` refuses inner attributes; src/lib.rs sets the lints the
    // generated files' `#![…]` lines would.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = std::path::Path::new(&out).join(name);
        let text = std::fs::read_to_string(&path).expect("generated file is readable");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("OUT_DIR is writable");
    }
}
