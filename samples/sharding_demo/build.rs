//! Compiles `proto/sharding_demo.proto` with protox (no `protoc` needed) into prost messages with
//! `prost::Name`, and keeps the descriptor set the node publishes (gates then speak plain JSON).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/sharding_demo.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("sharding_demo_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        .compile_fds(descriptors)?;
    Ok(())
}
