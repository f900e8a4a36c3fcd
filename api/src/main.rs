//! The `coffer` binary: server and CLI.

fn main() {
    std::process::exit(coffer_api::cli::main());
}
