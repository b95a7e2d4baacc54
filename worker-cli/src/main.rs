//! The `worker-cli` binary: the library's command line with only the built-in task kinds.
//! A program with compiled handlers calls `worker_cli::main_with` with its own router instead.

/// mimalloc, not glibc's malloc: a draining worker allocates and frees per entry (reply buffers,
/// task cells), and glibc's allocator was about a sixth of its CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    worker_cli::main_with(rivulet::Router::new())
}
