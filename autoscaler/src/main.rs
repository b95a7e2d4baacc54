//! `autoscaler`: scales Rivulet worker processes to keep each priority inside its SLA.
//! Flags are resolved in `autoscaler::cli`; the loop lives in `autoscaler::daemon`.

use std::process::ExitCode;

use anyhow::Context;
use autoscaler::{cli, daemon};
use clap::Parser;
use rivulet_fleet::{Stop, logging};

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    logging::init(args.log_format, "info");
    // The one place a result becomes an exit code: usage errors 2, the rest 1.
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::report(&e),
    }
}

fn run(args: cli::Cli) -> anyhow::Result<()> {
    let settings = cli::settings(args)?;
    // One thread: workers are started from it, and their parent-death signal fires when the
    // thread that started them exits, so it must be the main thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let stop = Stop::new();
        let mut signals = tokio::task::JoinSet::new();
        stop.on_signals(&mut signals)
            .context("cannot install signal handlers")?;
        daemon::run(settings, stop.drain.cancelled_owned(), stop.now.cancelled_owned()).await
    })
}
