//! The `worker-cli` binary: the library's command line with only the built-in task kinds.
//! A program with compiled handlers calls `worker_cli::main_with` with its own router instead.

fn main() -> std::process::ExitCode {
    worker_cli::main_with(rivulet::Router::new())
}
