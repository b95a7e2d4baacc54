//! A worker binary with compiled handlers of its own and the whole `worker-cli` command line:
//! supervised worker processes, the built-in kinds (`noop`, `sleep`, `fail`, `demo`), `--exec`,
//! and every admin command.
//!
//! ```sh
//! cargo run --example custom_worker -- --workers 2 --queue reports
//! cargo run --example custom_worker -- enqueue --queue reports --kind render_report --payload '{"id": 7, "pages": 3}'
//! cargo run --example custom_worker -- stats --queue reports
//! ```
//!
//! The supervisor starts its worker processes from this same binary (`custom_worker work ...`),
//! so they serve `render_report` too.

use std::process::ExitCode;
use std::time::Duration;

use rivulet::{HandlerError, Router, TaskContext};

/// The payload of a `render_report` task.
#[derive(Debug, serde::Deserialize)]
struct Report {
    id: u64,
    pages: u32,
}

async fn render_report(ctx: TaskContext, report: Report) -> Result<(), HandlerError> {
    if report.pages == 0 {
        // Retrying cannot fix this: straight to the dead-letter stream as `fatal`.
        return Err(HandlerError::fatal("a report needs at least one page"));
    }
    // Logs go to stderr; stdout is for a command's data.
    eprintln!(
        "rendering report {} ({} pages), task {} attempt {}",
        report.id,
        report.pages,
        ctx.id,
        ctx.attempt + 1
    );
    tokio::time::sleep(Duration::from_millis(50 * u64::from(report.pages))).await;
    Ok(())
}

// A plain `fn main`: `main_with` builds the runtime each command needs.
fn main() -> ExitCode {
    let router = Router::new().route("render_report", render_report);
    worker_cli::main_with(router)
}
