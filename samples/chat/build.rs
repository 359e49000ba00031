//! Compiles `proto/chat.proto` with protox (no `protoc` needed), generates the prost messages
//! with `prost::Name` implementations (GoVerse carries messages as `Any` by their full names) and
//! keeps the encoded descriptor set, which the node publishes so gates can speak plain JSON.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/chat.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("chat_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        .compile_fds(descriptors)?;
    Ok(())
}
