//! Compiles `proto/room.proto` with protox (a pure-Rust protobuf compiler),
//! so building the examples needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/room.proto");
    let descriptors = protox::compile(["proto/room.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
