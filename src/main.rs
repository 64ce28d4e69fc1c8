//! The `streamvault` binary: parses the command line and hands over to [`streamvault::cli`].
//!
//! The allocator is mimalloc, not the system's: under a 1,000-camera load glibc kept
//! freed fragment buffers in its per-thread arenas, so RSS stayed at 2.6× the ingest
//! budget after the uploads ended (`docs/design/allocator.md`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    streamvault::cli::main()
}
