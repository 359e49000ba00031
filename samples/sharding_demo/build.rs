//! Compiles `proto/sharding_demo.proto` into the sample's messages and descriptors
//! ([`goverse_build::compile_protos`]).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    goverse_build::compile_protos("proto/sharding_demo.proto")
}
