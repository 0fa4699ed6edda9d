//! Compiles the chat.v1 protobuf with `protox` (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/indaba/chat/v1/chat.proto",
        "proto/indaba/chat/v1/internal.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // Served by gRPC server reflection (grpcurl, Postman, evans need no .proto files).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("chat_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // The gRPC stubs need tonic; only the crates that serve or call gRPC turn them on.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .compile_fds(fds)?;
    Ok(())
}
