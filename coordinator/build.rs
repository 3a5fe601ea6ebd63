//! Compiles `proto/lorafleet.proto` into Rust with `protox` (a pure-Rust
//! protobuf compiler, so no `protoc` is needed) and `tonic-prost-build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/lorafleet.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
