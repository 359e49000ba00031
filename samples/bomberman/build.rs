//! Compiles `proto/bomberman.proto` into the sample's messages and descriptors.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    goverse_build::compile_protos("proto/bomberman.proto")
}
