//! For the `build.rs` of a crate that defines GoVerse object types with its own messages.
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     goverse_build::compile_protos("proto/chat.proto")
//! }
//! ```
//!
//! [`compile_protos`] compiles the file with protox (no `protoc` needed) into prost messages that
//! implement `prost::Name` (GoVerse carries messages as `google.protobuf.Any` by their full
//! names), and writes the encoded descriptor set to `$OUT_DIR/{stem}_descriptor.bin`. A node
//! publishes those descriptors (`NodeBuilder::file_descriptor_set`), so gates can take and
//! answer plain protobuf-JSON bodies for the crate's methods. Include the code (named after the
//! proto package) and the descriptors with:
//!
//! ```ignore
//! include!(concat!(env!("OUT_DIR"), "/chat.rs"));
//! pub const FILE_DESCRIPTOR_SET: &[u8] =
//!     include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));
//! ```

use std::error::Error;
use std::path::{Path, PathBuf};

/// Compiles `file` (imports resolved from its directory) into prost messages in `$OUT_DIR`, and
/// its descriptor set into `$OUT_DIR/{stem}_descriptor.bin`; asks Cargo to run the build script
/// again when the file changes.
pub fn compile_protos(file: &str) -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={file}");
    let path = Path::new(file);
    let include = path.parent().unwrap_or_else(|| Path::new("."));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{file} has no file name"))?;
    let descriptors = protox::compile([file], [include])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join(format!("{stem}_descriptor.bin")),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        .compile_fds(descriptors)?;
    Ok(())
}
