//! Generates the agent API's messages and ttrpc bindings from `proto/agent.proto`.
//!
//! The generated files carry inner attributes (`#![allow(..)]`, `//!`), which `include!` cannot
//! take, so they are stripped here and the crate root puts equivalent outer attributes on the
//! modules instead.
use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    // Without the `agent-api` feature (vessel-vmm) there is nothing to generate.
    if std::env::var_os("CARGO_FEATURE_AGENT_API").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    Codegen::new()
        .out_dir(&out)
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .customize(Customize::default())
        .rust_protobuf_customize(ProtobufCustomize::default())
        .run()
        .expect("generating ttrpc code from proto/agent.proto");
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path).expect("reading generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("writing generated file");
    }
}
