//! worker-cli: supervised Rivulet worker processes, handlers without writing Rust, and admin
//! commands.
//!
//! The `worker-cli` binary is [`main_with`] and an empty router. A program with handlers of its
//! own offers the same CLI with them added to the built-ins:
//!
//! ```no_run
//! use rivulet::{Router, TaskContext};
//!
//! fn main() -> std::process::ExitCode {
//!     let router = Router::new().route("greet", |_ctx: TaskContext, name: String| async move {
//!         tracing::info!(%name, "hello");
//!         Ok(())
//!     });
//!     worker_cli::main_with(router)
//! }
//! ```
//!
//! # Layout
//! Modules depend downwards only: `values` <- `cli` <- `settings` <- the commands.
//! - `values`: the per-flag parsers and their inverses (a leaf).
//! - `cli`: the clap definitions (every flag, its help and default) and nothing else.
//! - `settings`: flags resolved into checked settings (`WorkerSettings`,
//!   `SupervisorSettings`) and the flags a supervisor passes on to its children.
//! - `work`: one worker process (the `work` subcommand, what the supervisor and the
//!   autoscaler start): its side of the parent/child contract, quiet on the first signal and
//!   terminate on the second, `--max-tasks` as the engine's `max_tasks`.
//! - `handlers`: the built-in kinds (`noop`, `sleep`, `fail`) and `--exec`.
//! - `serve`: `--serve`, long-lived handler processes on the line protocol of
//!   `docs/serve-protocol.md`.
//! - `admin`: `enqueue`, `queues`, `stats`, `pending`, `workers`, `dlq ...`, `pause`, `resume`.
//! - `task`: `task show|wait|cancel`, `tasks --state`, `events`, and `enqueue --wait`.
//! - `dashboard`: the `dashboard` command (flags to `rivulet_dashboard::Config`, the token
//!   rule checked before Redis is touched).
//! - `schedule`: `schedule add|list|show|remove|pause|resume|run-now|sync`, `scheduler`, and
//!   the scheduler each supervisor runs (unless `--no-scheduler`).
//! - `demo`: the `demo` command; `demo::samples`: the `demo` kind and its latency samples,
//!   served only by the demo's own workers (`work --demo-samples`).
//! - `local_redis`: the private `redis-server` the demo starts when nothing answers.
//! - `metrics`: `--metrics-addr`: a worker process's metrics and probes, or the supervisor's
//!   for the whole box (its children report to it over a Unix socket).
//! - `store`: the few Redis commands the CLI issues itself (reachability check, demo keys).
//! - `output`: stdout as JSON or tables.
//!
//! Supervising (`worker-cli --workers N`), signals, logging and the usage error come from
//! `rivulet-fleet`, which the autoscaler shares.
//!
//! Exit codes: 0 success; 1 a runtime failure (Redis unreachable, unknown queue, a drain that
//! missed its deadline...); 2 bad flags (with a usage line); 69 (`EX_UNAVAILABLE`) only from a
//! supervised worker process that lost Redis while it started (its supervisor's signal for an
//! outage, not a crash).

#![forbid(unsafe_code)]

// First: its `note!` macro is used by the modules below.
#[macro_use]
mod output;
mod admin;
mod cli;
mod dashboard;
mod demo;
mod handlers;
mod local_redis;
mod metrics;
mod schedule;
mod serve;
mod settings;
mod store;
mod task;
mod values;
mod work;

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches};
use rivulet::Router;
use rivulet_fleet::{Fleet, Stop, UsageError, logging};

pub use handlers::with_builtins;

use crate::cli::{Cli, Command};
use crate::settings::{SupervisorSettings, WorkerSettings};

/// Runs the worker-cli command line with `router`'s handlers added to the built-in kinds
/// (a kind in `router` replaces a built-in of the same name; `--exec` replaces both).
///
/// Parses `std::env::args_os()`, runs the command, prints an error to stderr if it fails, and
/// returns the exit code: 0 success, 1 runtime failure, 2 bad flags (bare `worker-cli`
/// included: it prints the help). A command whose stdout is closed by its reader
/// (`... | head -1`) ends with 0. Call it from a plain `fn main`, not from inside a Tokio
/// runtime: it builds the runtime each command needs.
pub fn main_with(router: Router) -> ExitCode {
    main_with_args(std::env::args_os(), router)
}

/// [`main_with`] with explicit arguments (the first is the program name).
pub fn main_with_args<I, T>(args: I, router: Router) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // A worker's guard of an --exec command: no CLI, no logging, just the command.
    if args.get(1).is_some_and(|a| a == handlers::GUARD_ARG) {
        return handlers::guard_main(&args);
    }
    let cli = match parse(args.clone()) {
        Ok(cli) => cli,
        // Help and version print to stdout and exit 0.
        Err(e) if e.exit_code() == 0 => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // Bare `worker-cli`: help rather than workers on a queue nobody named.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            note!("{}", Cli::command().render_help().to_string().trim_end());
            note!("\n{BARE_HINT}");
            return ExitCode::from(2);
        }
        Err(e) => return usage_error(&e.render().to_string(), &args),
    };
    let log_format = cli.global.log_format;
    // The one place a result becomes an exit code.
    match run(cli, router) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`... | head -1`): nothing is wrong, nobody is left
        // to tell anything.
        Err(e) if output::is_stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<UsageError>() {
            Some(usage) => usage_error(&format!("error: {usage}\n"), &args),
            // A URL of the wrong kind (a plain redis:// URL to a Redis Cluster node): bad usage.
            None if matches!(
                e.downcast_ref::<store::Unreachable>(),
                Some(store::Unreachable::BadUrl(_))
            ) =>
            {
                usage_error(&format!("error: {e}\n"), &args)
            }
            // A supervised worker that could not reach Redis: its supervisor restarts it
            // without counting a crash.
            None if e.downcast_ref::<work::Outage>().is_some() => {
                note!("error: {e:#}");
                ExitCode::from(rivulet_fleet::contract::EXIT_OUTAGE as u8)
            }
            None => {
                let message = logging::describe_error(e.as_ref());
                // A JSON log stays JSON to its last line.
                if log_format == logging::LogFormat::Json && logging::installed_format().is_some() {
                    tracing::error!(error = %message, "failed");
                } else {
                    note!("error: {message}");
                }
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints a flag error with the usage line of the command it concerns, and returns exit code 2.
fn usage_error(message: &str, args: &[OsString]) -> ExitCode {
    let message = message.trim_end();
    let hint = "For more information, try '--help'.";
    let body = message.strip_suffix(hint).unwrap_or(message).trim_end();
    if body.contains("Usage:") {
        note!("{body}\n\n{hint}");
    } else {
        note!("{body}\n\n{}\n\n{hint}", usage_for(args).trim_end());
    }
    ExitCode::from(2)
}

/// The usage line of the deepest subcommand named in `args`.
fn usage_for(args: &[OsString]) -> String {
    let mut root = Cli::command();
    // Building fills in the full names ("worker-cli dlq replay") that usage lines show.
    root.build();
    let mut cmd = &mut root;
    for arg in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if cmd.find_subcommand(arg).is_some() {
            cmd = cmd.find_subcommand_mut(arg).expect("just found");
        }
    }
    cmd.render_usage().to_string()
}

/// What bare `worker-cli` prints after the help.
const BARE_HINT: &str = "error: no command given. Run a command (e.g. `worker-cli stats`), or start supervised \
                         workers by naming what they serve: worker-cli --queue NAME [--workers N] [...]";

/// Parses the command line. Supervisor flags (`--workers`, `--queue`, ...) given together with
/// a subcommand are an error rather than silently ignored. Bare `worker-cli` (no command and
/// no supervisor flag: global flags like `--redis-url` alone do not count) is
/// `DisplayHelpOnMissingArgumentOrSubcommand`: the caller prints the help and exits 2, rather
/// than starting a supervisor on the `default` queue that the user never asked for.
fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let supervisor_only = cli::RunArgs::augment_args(clap::Command::new("run"));
    let given: Vec<String> = supervisor_only
        .get_arguments()
        .filter(|a| matches.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .map(|a| format!("--{}", a.get_long().unwrap_or(a.get_id().as_str())))
        .collect();
    if matches.subcommand().is_none() && given.is_empty() {
        return Err(clap::Error::new(
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
        ));
    }
    if let Some((name, _)) = matches.subcommand()
        && !given.is_empty()
    {
        return Err(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "{} cannot be used with `{name}`: supervisor flags apply only when worker-cli runs workers \
                 (without a command)",
                given.join(", ")
            ),
        ));
    }
    Ok(cli)
}

fn run(cli: Cli, router: Router) -> Result<()> {
    let Cli { global, run, command } = cli;
    // Before anything else: a URL that does not parse is a bad flag (exit 2), not a Redis that
    // cannot be reached (exit 1).
    values::check_redis_url(&global.redis_url, &global.tls())?;
    match command {
        None => {
            logging::init(global.log_format, "info");
            // Validate what the children will run with before starting any.
            let worker = WorkerSettings::resolve(&global, &run.worker)?;
            let mut settings = SupervisorSettings::resolve(&global, &run)?;
            // One thread: children must be spawned from a thread that lives as long as the
            // process (see `rivulet_fleet::supervisor`).
            current_thread()?.block_on(async {
                // First: a bad --metrics-addr is a usage error whatever Redis does.
                let exported = match run.worker.metrics_addr {
                    None => None,
                    Some(addr) => {
                        let listener = rivulet_fleet::probes::bind(addr, run.worker.metrics_token.clone()).await?;
                        let hub = std::sync::Arc::new(
                            metrics::Hub::bind().context("creating the socket worker processes report metrics to")?,
                        );
                        settings
                            .fleet
                            .env
                            .push((rivulet_fleet::METRICS_SOCKET_ENV.into(), hub.path().into()));
                        Some((listener, hub))
                    }
                };
                // Fail here, naming the URL, rather than in N crash-looping children; and
                // check the weights against the queues' layouts for the same reason.
                let (client, _) = store::connect_checked(&global.redis_url, &global.tls()).await?;
                store::check_server(&client, &global.redis_url, &run.worker).await?;
                let inspector = rivulet::Inspector::new(&client)
                    .await
                    .map_err(|e| store::engine_error(&global.redis_url, e))?;
                work::resolve_queues(&inspector, &worker).await?;
                if let Some(path) = &run.schedules {
                    schedule::sync_at_start(&client, &global.redis_url, path).await?;
                }
                let stop = Stop::new();
                let mut signals = tokio::task::JoinSet::new();
                stop.on_signals(&mut signals)?;
                // A fixed size: the handle only reads the fleet's status for the metrics.
                let (fleet, handle) = Fleet::new(settings.fleet, settings.workers);
                let served = tokio_util::sync::CancellationToken::new();
                let mut exporters = tokio::task::JoinSet::new();
                if let Some((listener, hub)) = exported {
                    exporters.spawn(hub.clone().run(served.clone()));
                    exporters.spawn(metrics::serve_fleet(listener, hub, handle.into(), served.clone()));
                }
                // The scheduler stops when the fleet starts draining, or when it ends.
                let scheduler_stop = stop.drain.child_token();
                let scheduler = async {
                    match run.no_scheduler {
                        true => Ok(()),
                        false => rivulet::Scheduler::new(client.clone())
                            .run(scheduler_stop.cancelled())
                            .await
                            .map_err(|e| store::engine_error(&global.redis_url, e)),
                    }
                };
                let workers = async {
                    let done = fleet.run(stop).await;
                    scheduler_stop.cancel();
                    done
                };
                let (workers, scheduler) = tokio::join!(workers, scheduler);
                // A scrape in flight finishes (its asks time out by then); nothing holds the exit.
                served.cancel();
                let drained = async { while exporters.join_next().await.is_some() {} };
                if tokio::time::timeout(std::time::Duration::from_secs(2), drained)
                    .await
                    .is_err()
                {
                    exporters.shutdown().await;
                }
                workers?;
                scheduler
            })
        }
        Some(Command::Work(args)) => {
            logging::init(global.log_format, "info");
            let settings = WorkerSettings::resolve(&global, &args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            // `work` adds the built-in and --exec kinds itself.
            if settings.demo_samples {
                let (url, tls) = (settings.redis_url.clone(), settings.tls.clone());
                let router = demo::samples::route(router);
                runtime.block_on(work::run(settings, router, move |id, stopped| {
                    demo::samples::save_until(url, tls, id, stopped)
                }))
            } else {
                runtime.block_on(work::run(settings, router, |_, _| async {}))
            }
        }
        Some(Command::Schedule(command)) => {
            logging::init(global.log_format, "warn");
            current_thread()?.block_on(schedule::run(&global, command))
        }
        Some(Command::Scheduler(args)) => {
            logging::init(global.log_format, "info");
            current_thread()?.block_on(schedule::run_scheduler(&global, &args))
        }
        Some(Command::Demo(args)) => {
            logging::init(global.log_format, "warn");
            // One thread: the demo supervises worker processes too.
            current_thread()?.block_on(demo::run(&global, &args))
        }
        Some(Command::Dashboard(args)) => {
            logging::init(global.log_format, "info");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(dashboard::run(&global, &args))
        }
        Some(lifecycle @ (Command::Task(_) | Command::Tasks(_) | Command::Events(_))) => {
            logging::init(global.log_format, "warn");
            current_thread()?.block_on(task::run(&global, lifecycle))
        }
        Some(Command::Functions(cli::FunctionsCommand::Source)) => output::text(rivulet::functions::source()),
        Some(admin) => {
            logging::init(global.log_format, "warn");
            current_thread()?.block_on(admin::run(&global, admin))
        }
    }
}

fn current_thread() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
