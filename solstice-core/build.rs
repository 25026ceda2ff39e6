//! Compiles `proto/runner.proto` with `protox` (pure Rust), so a fresh
//! machine builds with cargo alone: no system `protoc`. Only the `protocol`
//! feature needs it; without it nothing is generated (and the generator is
//! not even built).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "protocol")]
    {
        println!("cargo:rerun-if-changed=proto/runner.proto");
        let descriptors = protox::compile(["proto/runner.proto"], ["proto"])?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .compile_fds(descriptors)?;
    }
    Ok(())
}
