//! Compiles `proto/*.proto` with protox (a protobuf compiler in Rust, so building needs no
//! `protoc` on the machine) and generates prost messages and tonic services from the result.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/gate.proto",
        "proto/node.proto",
        "proto/gate_info.proto",
        "proto/goverse.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // `prost::Name` on every message: its full name and `type.googleapis.com/` type URL, which
    // is how messages travel inside `google.protobuf.Any`.
    let mut config = prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
