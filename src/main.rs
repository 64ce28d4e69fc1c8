//! The `streamvault` binary: parses the command line and hands over to [`streamvault::cli`].

fn main() -> std::process::ExitCode {
    streamvault::cli::main()
}
