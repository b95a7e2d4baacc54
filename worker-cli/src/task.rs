//! The task lifecycle commands: `task show|wait|cancel`, `tasks --state`, `events`, and the
//! wait behind `enqueue --wait`. Each goes through rivulet's `Client` (status, wait, cancel,
//! tasks, events) and prints data on stdout, messages on stderr.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use rivulet::{CancelOutcome, Client, Event, EventCursor, Queue, TaskId, TaskState, TaskStatus};
use serde_json::json;

use crate::cli::{Command, EventsArgs, GlobalArgs, StateArg, TaskArgs, TaskCommand, TasksArgs};
use crate::output::{self, Table, clip, fmt_ago};
use crate::settings::UsageError;
use crate::store;

/// How long one blocking read of `events --follow` lasts (it then checks for a signal).
const FOLLOW_BLOCK: Duration = Duration::from_secs(1);

/// Runs `task ...`, `tasks` or `events`.
pub async fn run(global: &GlobalArgs, command: Command) -> Result<()> {
    let queue_flag = match &command {
        Command::Task(TaskCommand::Show(a) | TaskCommand::Cancel(a)) => &a.queue,
        Command::Task(TaskCommand::Wait(a)) => &a.task.queue,
        Command::Tasks(a) => &a.queue,
        Command::Events(a) => &a.queue,
        _ => unreachable!("only lifecycle commands are dispatched here"),
    };
    rivulet::QueueName::new(queue_flag).map_err(|e| UsageError(format!("--queue: {e}")))?;
    let url = global.redis_url.clone();
    let (redis, _) = store::connect_checked(&url, &global.tls()).await?;
    let engine = |e: rivulet::Error| store::engine_error(&url, e);
    let inspector = rivulet::Inspector::new(&redis).await.map_err(engine)?;
    let queue = inspector.queue(queue_flag).await.map_err(engine)?;
    let client = Client::new(&redis).await.map_err(engine)?;
    match command {
        Command::Task(TaskCommand::Show(a)) => show(&client, &queue, &a).await.map_err(engine_or(&url)),
        Command::Task(TaskCommand::Wait(a)) => {
            let id = TaskId::from_string(a.task.id.clone());
            wait_and_print(&client, &queue, &[id], a.timeout, a.task.output.json)
                .await
                .map_err(engine_or(&url))
        }
        Command::Task(TaskCommand::Cancel(a)) => cancel(&client, &queue, &a).await.map_err(engine_or(&url)),
        Command::Tasks(a) => tasks(&client, &queue, &a).await.map_err(engine_or(&url)),
        Command::Events(a) => events(&client, &queue, &a).await.map_err(engine_or(&url)),
        _ => unreachable!("only lifecycle commands are dispatched here"),
    }
}

/// Names the Redis URL when an engine error is Redis going away.
fn engine_or(url: &str) -> impl Fn(anyhow::Error) -> anyhow::Error + '_ {
    move |e| match e.downcast::<rivulet::Error>() {
        Ok(e) => store::engine_error(url, e),
        Err(e) => e,
    }
}

/// A status as JSON (the engine's field names; the result as text).
fn status_json(st: &TaskStatus) -> serde_json::Value {
    serde_json::to_value(st).expect("a TaskStatus of strings and numbers always serialises")
}

async fn show(client: &Client, queue: &Queue, a: &TaskArgs) -> Result<()> {
    let id = TaskId::from_string(a.id.clone());
    let st = client.status(queue, &id).await?;
    if a.output.json {
        return output::json(&status_json(&st));
    }
    if st.state == TaskState::Unknown {
        bail!(rivulet::Error::UnknownTask {
            id: a.id.clone(),
            queue: queue.name().to_string(),
        });
    }
    output::text(&describe(&st))
}

/// A status as `field: value` lines, for people.
fn describe(st: &TaskStatus) -> String {
    let now = rivulet::envelope::now_ms();
    let mut lines = vec![
        format!("id:        {}", st.id),
        format!("queue:     {}", st.queue),
        format!("state:     {}", st.state),
    ];
    let mut add = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            lines.push(format!("{:<10} {v}", format!("{name}:")));
        }
    };
    add("priority", st.priority.clone());
    add("kind", st.kind.clone());
    add("attempt", Some(st.attempt.to_string()));
    add("runs", (st.runs > 0).then(|| st.runs.to_string()));
    add("enqueued", st.enqueued_at.map(|t| fmt_ago(t, now)));
    add("due", st.due_at.map(|t| format!("{t} (ms since the epoch)")));
    add("worker", st.worker.clone());
    add("started", st.started_at.map(|t| fmt_ago(t, now)));
    add(
        "progress",
        st.progress.as_ref().map(|p| format!("{}% {}", p.percent, p.message)),
    );
    add("finished", st.finished_at.map(|t| fmt_ago(t, now)));
    add("run time", st.run_ms.map(|ms| format!("{ms} ms")));
    add("reason", st.reason.clone());
    add("error", st.error.clone());
    add("dead letter", st.dlq_id.clone());
    add(
        "had started",
        st.started.map(|s| if s { "yes" } else { "no" }.to_owned()),
    );
    add(
        "cancelling",
        st.cancel_requested
            .then(|| "yes (its worker is stopping it)".to_owned()),
    );
    add(
        "result",
        st.result.as_ref().map(|r| clip(&String::from_utf8_lossy(r), 2000)),
    );
    lines.join("\n") + "\n"
}

/// Waits for each task in turn and prints its result (or its status as JSON lines with
/// `json`). Fails, naming the state, when one ends dead or cancelled or is still running at
/// the deadline (one deadline for all of them).
pub async fn wait_and_print(
    client: &Client,
    queue: &Queue,
    ids: &[TaskId],
    timeout: Duration,
    json: bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut failed = Vec::new();
    for id in ids {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let st = match client.wait(queue, id, left.max(Duration::from_millis(1))).await {
            Ok(st) => st,
            Err(rivulet::Error::WaitTimeout { state, .. }) => {
                failed.push(format!(
                    "task {id} is still {state} after {}",
                    output::fmt_duration(timeout)
                ));
                if json {
                    output::json_line(&json!({ "id": id.as_str(), "state": state.as_str(), "timed_out": true }))?;
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if json {
            output::json_line(&status_json(&st))?;
        } else if let Some(r) = &st.result {
            let mut text = String::from_utf8_lossy(r).into_owned();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            output::text(&text)?;
        }
        match st.state {
            TaskState::Succeeded => {}
            state => failed.push(format!(
                "task {id} ended {state}{}",
                match (&st.reason, &st.error) {
                    (Some(r), Some(e)) => format!(" ({r}): {e}"),
                    (None, Some(e)) => format!(": {e}"),
                    _ => String::new(),
                }
            )),
        }
    }
    if !failed.is_empty() {
        return Err(anyhow!("{}", failed.join("\n")));
    }
    Ok(())
}

async fn cancel(client: &Client, queue: &Queue, a: &TaskArgs) -> Result<()> {
    let id = TaskId::from_string(a.id.clone());
    let outcome = client.cancel(queue, &id).await?;
    let (state, message) = match outcome {
        CancelOutcome::Cancelled => (
            "cancelled",
            format!("cancelled task {id}: it had not started and never will"),
        ),
        CancelOutcome::Cancelling => (
            "cancelling",
            format!("cancelling task {id}: its worker stops it within about a second"),
        ),
        CancelOutcome::AlreadyFinished(s) => (s.as_str(), format!("task {id} had already finished: {s}")),
    };
    if a.output.json {
        return output::json(
            &json!({ "id": a.id, "queue": queue.name().as_str(), "outcome": outcome, "state": state }),
        );
    }
    note!("{message}");
    output::text(&format!("{state}\n"))
}

fn state_of(s: StateArg) -> TaskState {
    match s {
        StateArg::Scheduled => TaskState::Scheduled,
        StateArg::Queued => TaskState::Queued,
        StateArg::Active => TaskState::Active,
        StateArg::Retrying => TaskState::Retrying,
        StateArg::Succeeded => TaskState::Succeeded,
        StateArg::Dead => TaskState::Dead,
        StateArg::Cancelled => TaskState::Cancelled,
    }
}

async fn tasks(client: &Client, queue: &Queue, a: &TasksArgs) -> Result<()> {
    let state = state_of(a.state);
    if a.after.is_some() && !matches!(state, TaskState::Succeeded | TaskState::Cancelled) {
        return Err(UsageError::new("--after pages succeeded and cancelled listings only").into());
    }
    let page = client.tasks_page(queue, state, a.after.as_deref(), a.limit).await?;
    if let Some(next) = &page.next {
        note!("next page: --after {next}");
    }
    let list = page.tasks;
    if a.output.json {
        let rows: Vec<serde_json::Value> = list.iter().map(status_json).collect();
        return output::json(&rows);
    }
    let now = rivulet::envelope::now_ms();
    let mut t = Table::new(&[
        "ID", "STATE", "PRIORITY", "KIND", "ATTEMPT", "WORKER", "ENQUEUED", "ERROR",
    ]);
    for st in &list {
        t.row(vec![
            st.id.to_string(),
            st.state.to_string(),
            st.priority.clone().unwrap_or_default(),
            st.kind.clone().unwrap_or_default(),
            st.attempt.to_string(),
            st.worker.clone().unwrap_or_default(),
            st.enqueued_at.map(|t| fmt_ago(t, now)).unwrap_or_default(),
            clip(st.error.as_deref().unwrap_or(""), 60),
        ]);
    }
    if t.is_empty() {
        note!("no {} tasks in queue {}", state_of(a.state), queue.name());
        return Ok(());
    }
    output::text(&t.render())
}

fn event_line(e: &Event) -> String {
    let extra: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={}", clip(v, 200))).collect();
    format!(
        "{} {} {} {}/{} {}",
        e.at,
        e.event,
        e.task_id,
        e.priority,
        e.shard,
        extra.join(" ")
    )
    .trim_end()
    .to_owned()
}

fn print_events(events: &[Event], json: bool) -> Result<()> {
    for e in events {
        if json {
            output::json_line(e)?;
        } else {
            output::text(&(event_line(e) + "\n"))?;
        }
    }
    Ok(())
}

async fn events(client: &Client, queue: &Queue, a: &EventsArgs) -> Result<()> {
    let mut cursor = EventCursor::start();
    if a.limit > 0 {
        // The last `limit` events per shard: start that far back from the newest.
        let mut all = Vec::new();
        loop {
            let got = client.events(queue, &mut cursor, 1000).await?;
            if got.is_empty() {
                break;
            }
            all.extend(got);
        }
        let skip = all.len().saturating_sub(a.limit);
        print_events(&all[skip..], a.json)?;
    } else {
        cursor = client.events_now(queue).await?;
    }
    if !a.follow {
        return Ok(());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let got = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            got = client.follow_events(queue, &mut cursor, FOLLOW_BLOCK) => got?,
        };
        print_events(&got, a.json)?;
    }
}
