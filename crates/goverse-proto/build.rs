//! Compiles `proto/*.proto` with protox (a protobuf compiler in Rust, so building needs no
//! `protoc` on the machine) and generates prost messages and tonic services from the result.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/gate.proto",
        "proto/node.proto",
        "proto/gate_info.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
