//! The admin commands: `enqueue`, `queues`, `stats`, `pending`, `workers`, `dlq ...`, `pause`,
//! `resume`. Each reads or changes state through rivulet's `Client` and `Inspector` and prints
//! it as a table (people) or JSON (`--json`, machines); the JSON uses the engine's field names.

use std::collections::HashSet;
use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use rivulet::envelope::now_ms;
use rivulet::inspector::{PendingEntry, WorkerRecord};
use rivulet::{Client, Codec, DeadLetter, DeadLetterId, DlqSelect, Inspector, Queue, QueueName, QueueStats, Task};
use serde_json::{Value, json};

use crate::cli::{
    Command, DeleteQueueArgs, DlqCommand, DlqListArgs, DlqSelectArgs, DlqShowArgs, EnqueueArgs, FunctionsCommand,
    GlobalArgs, PayloadCodec, PendingArgs, QueueArgs, QueueCommand, StatsArgs,
};
use crate::output::{self, Table, clip, fmt_ago, fmt_duration};
use crate::settings::UsageError;
use crate::store;

mod queue;

/// Tasks per pipelined enqueue call.
const ENQUEUE_BATCH: usize = 1000;
/// Dead letters read per page when filtering by kind.
const DLQ_PAGE: usize = 500;
/// What `queues` and `stats` say (on stderr) when Redis knows no queue.
const NO_QUEUES: &str =
    "no queues yet (a queue appears with `queue create`, or when a task is enqueued or a worker serves it)";

/// What every admin command works with.
struct Admin {
    url: String,
    client: rivulet::RedisTarget,
    inspector: Inspector,
}

/// Runs one admin command.
pub async fn run(global: &GlobalArgs, command: Command) -> Result<()> {
    // Flags first: a bad flag is exit 2 even when Redis cannot be reached.
    let body = check_flags(&command)?;
    let url = global.redis_url.clone();
    let (client, _) = store::connect_checked(&url, &global.tls()).await?;
    let inspector = Inspector::new(&client)
        .await
        .map_err(|e| store::engine_error(&url, e))?;
    let admin = Admin { url, client, inspector };
    match command {
        Command::Enqueue(a) => admin.enqueue(a, body.expect("checked for enqueue")).await,
        Command::Queue(QueueCommand::Create(a)) => admin.queue_create(a).await,
        Command::Queue(QueueCommand::Show(a)) => admin.queue_show(a).await,
        Command::Queues(o) => admin.queues(o.json).await,
        Command::Stats(a) => admin.stats(a).await,
        Command::Pending(a) => admin.pending(a).await,
        Command::Workers(o) => admin.workers(o.json).await,
        Command::Limits(o) => admin.limits(o.json).await,
        Command::Groups(a) => admin.groups(a).await,
        Command::Dlq(DlqCommand::List(a)) => admin.dlq_list(a).await,
        Command::Dlq(DlqCommand::Show(a)) => admin.dlq_show(a).await,
        Command::Dlq(DlqCommand::Replay(a)) => admin.dlq_apply(a, true).await,
        Command::Dlq(DlqCommand::Purge(a)) => admin.dlq_apply(a, false).await,
        Command::Pause(a) => admin.pause(a, true).await,
        Command::Resume(a) => admin.pause(a, false).await,
        Command::DeleteQueue(a) => admin.delete_queue(a).await,
        Command::Functions(FunctionsCommand::Install(o)) => admin.install_functions(o.json).await,
        Command::Functions(FunctionsCommand::Source) => unreachable!("dispatched in lib.rs: needs no Redis"),
        Command::Work(_)
        | Command::Demo(_)
        | Command::Dashboard(_)
        | Command::Task(_)
        | Command::Tasks(_)
        | Command::Events(_)
        | Command::Schedule(_)
        | Command::Scheduler(_) => {
            unreachable!("dispatched in lib.rs; not admin commands")
        }
    }
}

/// A `--queue` value checked against the naming rules (a usage error otherwise).
fn queue_name(name: &str) -> Result<QueueName> {
    QueueName::new(name).map_err(|e| UsageError(format!("--queue: {e}")).into())
}

/// An enqueue's payload, read and checked against its codec before anything is sent.
struct Body {
    payload: Bytes,
    codec: Codec,
}

/// The checks that need no Redis: queue names, dead-letter ids, the enqueue payload (read
/// here, so a missing `--payload-file` is a usage error whatever state Redis is in).
fn check_flags(command: &Command) -> Result<Option<Body>> {
    match command {
        Command::Enqueue(a) => {
            queue_name(&a.queue)?;
            if let Some(k) = a.resume_from
                && k >= a.count
            {
                return Err(UsageError(format!(
                    "--resume-from {k}: there are only {} copies (0..{}); nothing left to enqueue",
                    a.count,
                    a.count - 1
                ))
                .into());
            }
            let payload = read_payload(a)?;
            let codec = match a.codec {
                PayloadCodec::Json => {
                    serde_json::from_slice::<serde::de::IgnoredAny>(&payload).map_err(|e| {
                        UsageError(format!(
                            "the payload is not valid JSON ({e}); quote it for the shell, or pass --codec bytes to send it as is"
                        ))
                    })?;
                    Codec::Json
                }
                PayloadCodec::Bytes => Codec::Bytes,
            };
            return Ok(Some(Body { payload, codec }));
        }
        Command::Stats(StatsArgs { queue: Some(q), .. })
        | Command::Pending(PendingArgs { queue: q, .. })
        | Command::Dlq(DlqCommand::List(DlqListArgs { queue: q, .. }))
        | Command::Pause(QueueArgs { queue: q, .. })
        | Command::Resume(QueueArgs { queue: q, .. })
        | Command::Groups(QueueArgs { queue: q, .. })
        | Command::DeleteQueue(DeleteQueueArgs { queue: q, .. }) => {
            queue_name(q)?;
        }
        Command::Dlq(DlqCommand::Show(a)) => {
            queue_name(&a.queue)?;
            dead_letter_id(&a.id)?;
        }
        Command::Queue(QueueCommand::Create(a)) => {
            queue::wanted(a)?;
        }
        Command::Queue(QueueCommand::Show(a)) => {
            queue_name(&a.name)?;
        }
        Command::Dlq(DlqCommand::Replay(a) | DlqCommand::Purge(a)) => {
            queue_name(&a.queue)?;
            if let Some(id) = &a.id {
                dead_letter_id(id)?;
            }
        }
        Command::Stats(_)
        | Command::Queues(_)
        | Command::Workers(_)
        | Command::Limits(_)
        | Command::Work(_)
        | Command::Schedule(_)
        | Command::Scheduler(_)
        | Command::Demo(_)
        | Command::Dashboard(_)
        | Command::Task(_)
        | Command::Tasks(_)
        | Command::Functions(_)
        | Command::Events(_) => {}
    }
    Ok(None)
}

impl Admin {
    fn engine(&self, e: rivulet::Error) -> anyhow::Error {
        store::engine_error(&self.url, e)
    }

    /// A queue Redis knows, or an error naming the known ones.
    async fn known_queue(&self, name: &str) -> Result<Queue> {
        queue_name(name)?;
        self.inspector.queue(name).await.map_err(|e| self.engine(e))
    }

    async fn enqueue(&self, a: EnqueueArgs, body: Body) -> Result<()> {
        let name = queue_name(&a.queue)?;
        let Body { payload, codec } = body;
        let queue = crate::work::resolve_queue(&self.inspector, &name)
            .await
            .map_err(|e| self.engine(e))?;
        if let Some(p) = &a.priority {
            queue.rank(p).map_err(|e| UsageError(format!("--priority: {e}")))?;
        }
        let producer = Client::new(&self.client)
            .await
            .map_err(|e| self.engine(e))?
            .with_durability(a.durability)
            .await
            .map_err(|e| self.engine(e))?;
        let task = |i: u64| {
            let mut t = Task::encoded(&a.kind, payload.clone(), codec);
            if let Some(prefix) = &a.id_prefix {
                t = t.id(format!("{prefix}-{i}"));
            }
            if let Some(p) = &a.priority {
                t = t.priority(p.clone());
            }
            if let Some(d) = a.delay {
                t = t.delay(d);
            }
            if let Some(m) = a.max_attempts {
                t = t.max_attempts(m);
            }
            if let Some(d) = a.timeout {
                t = t.timeout(d);
            }
            if let Some(k) = &a.unique_key {
                t = t.unique_key(k.clone());
            }
            if let Some(g) = &a.group {
                t = t.group(g.clone());
            }
            if let Some(d) = a.unique_for {
                t = t.unique_for(d);
            }
            if let Some(r) = a.retention {
                t = t.retention(r);
            }
            t
        };
        let first = a.resume_from.unwrap_or(0);
        let mut ids: Vec<String> = Vec::with_capacity((a.count - first).min(1_000_000) as usize);
        let mut duplicates: Vec<String> = Vec::new();
        let mut next = first;
        while next < a.count {
            let n = (a.count - next).min(ENQUEUE_BATCH as u64);
            let batch: Vec<Task> = (next..next + n).map(task).collect();
            let sent: Vec<String> = batch.iter().map(|t| t.task_id().as_str().to_owned()).collect();
            let outcomes = match producer.submit_many(&queue, batch).await {
                Ok(outcomes) => outcomes,
                Err(e) => return self.enqueue_cut_off(&a, &queue, &ids, next, &sent, e),
            };
            let got: Vec<String> = outcomes.iter().map(|e| e.id().as_str().to_owned()).collect();
            duplicates.extend(
                outcomes
                    .iter()
                    .filter(|e| e.is_duplicate())
                    .map(|e| e.id().as_str().to_owned()),
            );
            // Each batch's ids as soon as it is written: a run cut off later has printed
            // exactly what it enqueued (with --wait, ids go to stderr below).
            if !a.output.json && !a.wait {
                output::text(&(got.join("\n") + "\n"))?;
            }
            ids.extend(got);
            next += n;
        }
        if a.output.json && !a.wait {
            return output::json(&json!({
                "queue": queue.name().as_str(),
                "kind": a.kind,
                "priority": a.priority.as_deref().unwrap_or(queue.default_priority()),
                "delay_ms": a.delay.map(|d| d.as_millis() as u64),
                "count": ids.len(),
                "ids": ids,
                "duplicates": duplicates,
            }));
        }
        for d in &duplicates {
            note!(
                "duplicate: task {d} holds unique key {:?}; nothing new was enqueued",
                a.unique_key.as_deref().unwrap_or("")
            );
        }
        note!(
            "enqueued {} task(s) of kind {} to queue {} ({}{})",
            ids.len() - duplicates.len(),
            a.kind,
            queue.name(),
            a.priority.as_deref().unwrap_or(queue.default_priority()),
            a.delay
                .map(|d| format!(", runs in {}", fmt_duration(d)))
                .unwrap_or_default()
        );
        if a.wait {
            // Ids on stderr, results on stdout: `enqueue --wait` prints what `task wait` does.
            note!("{}", ids.join("\n"));
            let ids: Vec<rivulet::TaskId> = ids.into_iter().map(rivulet::TaskId::from_string).collect();
            return crate::task::wait_and_print(&producer, &queue, &ids, a.wait_timeout, a.output.json)
                .await
                .map_err(|e| match e.downcast::<rivulet::Error>() {
                    Ok(e) => self.engine(e),
                    Err(e) => e,
                });
        }
        Ok(())
    }

    /// A bulk enqueue that failed at copy number `next`: says what was written (`ids`, already
    /// printed in text mode; in the JSON document otherwise), what is in doubt (`sent`: the
    /// batch whose reply was lost, written whole or not at all) and how to resume.
    fn enqueue_cut_off(
        &self,
        a: &EnqueueArgs,
        queue: &Queue,
        ids: &[String],
        next: u64,
        sent: &[String],
        e: rivulet::Error,
    ) -> Result<()> {
        let resume = a.id_prefix.as_ref().map(|prefix| {
            format!("rerun with --id-prefix {prefix} --resume-from {next} to enqueue the rest under the same ids")
        });
        if a.output.json {
            output::json(&json!({
                "queue": queue.name().as_str(),
                "kind": a.kind,
                "complete": false,
                "requested": a.count,
                "count": ids.len(),
                "ids": ids,
                "in_doubt": sent,
                "resume_from": a.id_prefix.as_ref().map(|_| next),
            }))?;
        }
        let last = ids.last().map_or("none", String::as_str);
        let advice = resume.unwrap_or_else(|| {
            "pass --id-prefix to give the tasks ids a retry can resume with (a plain retry enqueues \
             every task again)"
                .to_owned()
        });
        Err(self.engine(e).context(format!(
            "enqueue cut off: {} of {} task(s) enqueued (their ids are printed; the last: {last}); the batch of \
             {} sent when it failed ({} .. {}) was written whole or not at all. To go on, {advice}; the batch in \
             doubt may then run twice, under the same ids (key idempotent handlers on RIVULET_TASK_ID)",
            ids.len(),
            a.count - a.resume_from.unwrap_or(0),
            sent.len(),
            sent.first().map_or("", String::as_str),
            sent.last().map_or("", String::as_str),
        )))
    }

    async fn all_queues(&self) -> Result<Vec<Queue>> {
        let mut queues = self.inspector.queues().await.map_err(|e| self.engine(e))?;
        queues.sort_by(|a, b| a.name().as_str().cmp(b.name().as_str()));
        Ok(queues)
    }

    async fn queues(&self, json: bool) -> Result<()> {
        let queues = self.all_queues().await?;
        let mut rows = Vec::new();
        for q in &queues {
            let s = self.inspector.stats(q).await.map_err(|e| self.engine(e))?;
            let sum = |f: fn(&rivulet::inspector::PriorityStats) -> u64| s.priorities.iter().map(f).sum::<u64>();
            rows.push(json!({
                "queue": s.queue,
                "priorities": q.layout().priorities,
                "shards": q.layout().shards,
                "paused": s.paused,
                "waiting": sum(|p| p.waiting),
                "pending": sum(|p| p.pending),
                "scheduled": sum(|p| p.scheduled),
                "retry": sum(|p| p.retry),
                "dead_letters": sum(|p| p.dead_letters),
                "counters": s.counters,
            }));
        }
        if json {
            return output::json(&rows);
        }
        let mut t = Table::new(&[
            "QUEUE",
            "PRIORITIES",
            "SHARDS",
            "PAUSED",
            "WAITING",
            "PENDING",
            "SCHEDULED",
            "RETRY",
            "DEAD",
            "DONE",
            "RECLAIMED",
            "LOST",
        ]);
        let mut warnings = String::new();
        for r in &rows {
            let n = |k: &str| r[k].to_string();
            let prios: Vec<&str> = r["priorities"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            t.row(vec![
                r["queue"].as_str().unwrap_or_default().to_owned(),
                prios.join(","),
                n("shards"),
                if r["paused"] == true { "yes" } else { "no" }.into(),
                n("waiting"),
                n("pending"),
                n("scheduled"),
                n("retry"),
                n("dead_letters"),
                r["counters"]["done"].to_string(),
                r["counters"]["reclaimed"].to_string(),
                r["counters"]["lost"].to_string(),
            ]);
            let lost = r["counters"]["lost"].as_u64().unwrap_or(0);
            if let Some(w) = lost_warning(r["queue"].as_str().unwrap_or_default(), lost) {
                warnings.push_str(&w);
            }
        }
        if t.is_empty() {
            note!("{NO_QUEUES}");
            return Ok(());
        }
        output::text(&(t.render() + &warnings))
    }

    async fn stats(&self, a: StatsArgs) -> Result<()> {
        // --watch ends on SIGINT or SIGTERM (exit 0), even in the middle of a refresh (a Redis
        // that stopped answering must not make it unstoppable), or when stdout is closed.
        // Registered before the first refresh so that no signal goes unseen.
        let mut stop: Pin<Box<dyn Future<Output = ()>>> = if a.watch {
            Box::pin(stop_signal().context("installing signal handlers")?)
        } else {
            Box::pin(std::future::pending())
        };
        loop {
            tokio::select! {
                r = self.stats_once(&a) => r?,
                () = &mut stop => return Ok(()),
            }
            if !a.watch {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(a.interval) => {}
                () = &mut stop => return Ok(()),
            }
        }
    }

    /// One refresh of `stats`. A closed stdout is an error (`StdoutClosed`) that ends --watch.
    async fn stats_once(&self, a: &StatsArgs) -> Result<()> {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        // Listed again on every refresh of --watch: queues come and go.
        let queues = match &a.queue {
            Some(name) => vec![self.known_queue(name).await?],
            None => self.all_queues().await?,
        };
        let mut docs = Vec::with_capacity(queues.len());
        for q in &queues {
            let s = self.inspector.stats(q).await.map_err(|e| self.engine(e))?;
            let decision = self.inspector.decision(q).await.map_err(|e| self.engine(e))?;
            let mut doc = serde_json::to_value(&s)?;
            // When the numbers were read: a --watch stream is a time series.
            doc["observed_at_ms"] = rivulet::envelope::now_ms().into();
            doc["autoscaler"] = match decision {
                // An autoscaler stores JSON; anything else (an older one's text) is kept as
                // `{"text": ...}`, so the field is an object or null, never a bare string.
                Some(d) => serde_json::from_str::<Value>(&d)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({ "text": d })),
                None => Value::Null,
            };
            docs.push((s, doc));
        }
        // One shape with or without --queue: an array of per-queue documents.
        let all = || docs.iter().map(|(_, d)| d).collect::<Vec<_>>();
        match (a.output.json, a.watch) {
            (true, false) => output::json(&all())?,
            (true, true) => output::json_line(&all())?,
            (false, watch) => {
                let mut text = String::new();
                if watch && tty {
                    // Clear the screen and go home, like `watch`.
                    text.push_str("\x1b[2J\x1b[H");
                }
                if watch {
                    text.push_str(&format!(
                        "every {}; Ctrl-C to stop\n\n",
                        humantime::format_duration(a.interval)
                    ));
                }
                for (s, doc) in &docs {
                    text.push_str(&stats_table(s, &doc["autoscaler"]));
                    if let Some(w) = dlq_trimmed_warning(s, tty && std::env::var_os("NO_COLOR").is_none()) {
                        text.push_str(&w);
                    }
                    text.push('\n');
                }
                if !text.is_empty() {
                    output::text(&text)?;
                }
                if docs.is_empty() {
                    // A note for people, on stderr like every "nothing here" of the CLI.
                    note!("{NO_QUEUES}");
                }
            }
        }
        Ok(())
    }

    async fn pending(&self, a: PendingArgs) -> Result<()> {
        let queue = self.known_queue(&a.queue).await?;
        let entries: Vec<PendingEntry> = self
            .inspector
            .pending(&queue, a.limit)
            .await
            .map_err(|e| self.engine(e))?;
        if a.output.json {
            return output::json(&entries);
        }
        let mut t = Table::new(&[
            "TASK",
            "KIND",
            "ATTEMPT",
            "PRIORITY",
            "SHARD",
            "ENTRY",
            "WORKER",
            "IDLE",
            "DELIVERIES",
        ]);
        let or_gone = |v: Option<String>| v.unwrap_or_else(|| "(gone)".to_owned());
        for e in &entries {
            t.row(vec![
                or_gone(e.task_id.clone()),
                or_gone(e.kind.as_ref().map(|k| clip(k, 40))),
                // As the worker's logs and handlers count it: the first run is attempt 1.
                or_gone(e.attempt.map(|a| (a + 1).to_string())),
                e.priority.clone(),
                e.shard.to_string(),
                e.entry.clone(),
                e.consumer.clone(),
                fmt_duration(Duration::from_millis(e.idle_ms)),
                e.deliveries.to_string(),
            ]);
        }
        if t.is_empty() {
            note!("no tasks in flight in queue {}", queue.name());
            return Ok(());
        }
        output::text(&t.render())
    }

    async fn workers(&self, json: bool) -> Result<()> {
        let mut workers: Vec<WorkerRecord> = self.inspector.workers().await.map_err(|e| self.engine(e))?;
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        if json {
            return output::json(&workers);
        }
        let now = now_ms();
        let mut t = Table::new(&[
            "ID",
            "HOST",
            "PID",
            "QUEUES",
            "CONCURRENCY",
            "IN_FLIGHT",
            "STARTED",
            "SUCCEEDED",
            "FAILED",
            "LAST_BEAT",
        ]);
        for w in &workers {
            t.row(vec![
                w.id.clone(),
                w.host.clone(),
                w.pid.to_string(),
                w.queues.join(","),
                w.concurrency.to_string(),
                w.in_flight.to_string(),
                w.started.to_string(),
                w.succeeded.to_string(),
                w.failed.to_string(),
                fmt_ago(w.last_beat, now),
            ]);
        }
        if t.is_empty() {
            note!("no live workers");
            return Ok(());
        }
        output::text(&t.render())
    }

    async fn limits(&self, json: bool) -> Result<()> {
        let limits = self.inspector.limits().await.map_err(|e| self.engine(e))?;
        if json {
            return output::json(&limits);
        }
        let mut t = Table::new(&[
            "LIMIT",
            "RATE",
            "CURRENT/S",
            "RUNNING",
            "WAITING_RATE",
            "WAITING_SLOT",
            "GRANTED",
            "WAITED",
        ]);
        let dash = || "-".to_owned();
        for l in &limits {
            t.row(vec![
                l.name.clone(),
                l.rate.map_or_else(dash, |r| r.to_string()),
                l.current_rate.to_string(),
                match l.max_running {
                    Some(cap) => format!("{}/{cap}", l.running),
                    None => dash(),
                },
                l.waiting_for_rate.to_string(),
                l.waiting_for_slot.to_string(),
                l.granted.to_string(),
                l.waited.to_string(),
            ]);
        }
        if t.is_empty() {
            note!("no limits yet (workers record theirs when they start with --rate-limit or --max-running)");
            return Ok(());
        }
        output::text(&t.render())
    }

    async fn groups(&self, a: QueueArgs) -> Result<()> {
        let queue = self.known_queue(&a.queue).await?;
        let g = self.inspector.groups(&queue).await.map_err(|e| self.engine(e))?;
        if a.output.json {
            return output::json(&g);
        }
        let mut t = Table::new(&["PRIORITY", "GROUP", "WAITING", "WEIGHT", "TURNS", "RUNNING"]);
        for r in &g.groups {
            t.row(vec![
                r.priority.clone(),
                r.group.clone(),
                r.waiting.to_string(),
                r.weight.to_string(),
                format!("{:.0}", r.turns.ceil()),
                r.running.to_string(),
            ]);
        }
        let mut s = Table::new(&["PRIORITY", "SHARD", "WAITING", "GROUPS", "FLOOR", "NEXT", "WINDOW"]);
        let tag = |x: f64| format!("{x:.2}");
        for sh in g.shards.iter().filter(|sh| sh.waiting > 0 || sh.floor > 0.0) {
            s.row(vec![
                sh.priority.clone(),
                sh.shard.to_string(),
                sh.waiting.to_string(),
                sh.groups.to_string(),
                tag(sh.floor),
                sh.next_tag.map_or_else(|| "-".to_owned(), tag),
                sh.window.to_string(),
            ]);
        }
        if t.is_empty() && s.is_empty() {
            note!(
                "no grouped tasks in queue {} (enqueue with --group to use fair groups)",
                queue.name()
            );
            return Ok(());
        }
        let mut text = String::new();
        if t.is_empty() {
            text.push_str("no group has tasks waiting for its turn\n");
        } else {
            text.push_str(&t.render());
        }
        if !s.is_empty() {
            text.push('\n');
            text.push_str(&s.render());
        }
        output::text(&text)
    }

    async fn dlq_list(&self, a: DlqListArgs) -> Result<()> {
        let queue = self.known_queue(&a.queue).await?;
        let mut found: Vec<DeadLetter> = Vec::new();
        let mut after: Option<String> = None;
        // Page through when filtering by kind; one page of `limit` otherwise.
        let page = if a.kind.is_some() { DLQ_PAGE } else { a.limit.max(1) };
        while found.len() < a.limit {
            let batch = self
                .inspector
                .dlq_list(&queue, after.as_deref(), page)
                .await
                .map_err(|e| self.engine(e))?;
            let Some(last) = batch.last() else { break };
            after = Some(last.id.entry.clone());
            let full = batch.len() == page;
            found.extend(
                batch
                    .into_iter()
                    .filter(|d| a.kind.as_ref().is_none_or(|k| &d.kind == k)),
            );
            if !full {
                break;
            }
        }
        found.truncate(a.limit);
        if a.output.json {
            return output::json(&found);
        }
        let now = now_ms();
        let mut t = Table::new(&[
            "ID", "TASK", "KIND", "REASON", "ATTEMPT", "DIED", "SIZE", "PAYLOAD", "ERROR",
        ]);
        for d in &found {
            t.row(vec![
                d.id.to_string(),
                d.task_id.clone(),
                d.kind.clone(),
                d.reason.to_string(),
                d.attempt.to_string(),
                fmt_ago(d.dead_at, now),
                fmt_bytes(d.payload_size),
                payload_preview(d),
                clip(&d.error, 60),
            ]);
        }
        if t.is_empty() {
            match &a.kind {
                Some(kind) => note!("no dead letters of kind {kind} in queue {}", queue.name()),
                None => note!("no dead letters in queue {}", queue.name()),
            }
            return Ok(());
        }
        output::text(&t.render())
    }

    async fn dlq_show(&self, a: DlqShowArgs) -> Result<()> {
        let id = dead_letter_id(&a.id)?;
        let queue = self.known_queue(&a.queue).await?;
        id_fits(&queue, &a.id, &id)?;
        let d = self.inspector.dlq_get(&queue, &id).await.map_err(|e| self.engine(e))?;
        if a.output.json {
            return output::json(&d);
        }
        let now = now_ms();
        let mut t = Table::new(&["FIELD", "VALUE"]);
        let known = [
            ("id", d.id.to_string()),
            ("task_id", d.task_id.clone()),
            ("kind", d.kind.clone()),
            ("reason", d.reason.to_string()),
            ("attempt", d.attempt.to_string()),
            ("deliveries", d.deliveries.to_string()),
            ("dead_at", format!("{} ({})", d.dead_at, fmt_ago(d.dead_at, now))),
            ("origin", d.origin.clone()),
            ("codec", d.codec.clone()),
        ];
        let shown: HashSet<&str> = [
            "id",
            "kind",
            "reason",
            "attempt",
            "deliveries",
            "dead_at",
            "origin",
            "codec",
        ]
        .into_iter()
        .chain(["error", "payload"])
        .collect();
        for (k, v) in known {
            t.row(vec![k.into(), v]);
        }
        for (k, v) in &d.fields {
            if !shown.contains(k.as_str()) {
                t.row(vec![k.clone(), clip(&String::from_utf8_lossy(v), 200)]);
            }
        }
        let text = format!(
            "{}error:\n  {}\npayload:\n  {}\n",
            t.render(),
            d.error.replace('\n', "\n  "),
            d.payload.replace('\n', "\n  ")
        );
        output::text(&text)
    }

    async fn dlq_apply(&self, a: DlqSelectArgs, replay: bool) -> Result<()> {
        let select = match (&a.id, &a.kind, a.all) {
            (Some(id), _, _) => DlqSelect::Id(dead_letter_id(id)?),
            (None, Some(kind), _) => DlqSelect::Kind(kind.clone()),
            _ => DlqSelect::All,
        };
        let queue = self.known_queue(&a.queue).await?;
        if let (DlqSelect::Id(id), Some(raw)) = (&select, &a.id) {
            id_fits(&queue, raw, id)?;
        }
        let n = if replay {
            self.inspector.dlq_replay(&queue, &select).await
        } else {
            self.inspector.dlq_purge(&queue, &select).await
        }
        .map_err(|e| self.engine(e))?;
        let verb = if replay { "replayed" } else { "purged" };
        if a.output.json {
            return output::json(&json!({ "queue": queue.name().as_str(), verb: n }));
        }
        output::text(&format!("{verb} {n} dead letter(s) of queue {}\n", queue.name()))
    }

    async fn delete_queue(&self, a: DeleteQueueArgs) -> Result<()> {
        let queue = self.known_queue(&a.queue).await?;
        let gone = match self.inspector.delete_queue(&queue, a.force).await {
            Ok(gone) => gone,
            Err(e @ rivulet::Error::QueueInUse { .. }) => {
                return Err(anyhow::anyhow!("{e} (--force discards them)"));
            }
            Err(e) => return Err(self.engine(e)),
        };
        if a.output.json {
            return output::json(&json!({ "deleted": gone }));
        }
        let mut line = format!("deleted queue {}", gone.queue);
        if gone.workers > 0 || gone.tasks > 0 || gone.dead_letters > 0 {
            line += &format!(
                " (discarded {} task(s) and {} dead letter(s); {} live worker(s) were serving it)",
                gone.tasks, gone.dead_letters, gone.workers
            );
        }
        output::text(&format!("{line}\n"))
    }

    async fn install_functions(&self, json: bool) -> Result<()> {
        let revision = self.inspector.install_functions().await.map_err(|e| self.engine(e))?;
        let library = rivulet::functions::LIBRARY;
        if json {
            return output::json(&json!({ "library": library, "revision": revision }));
        }
        output::text(&format!("loaded function library {library} (revision {revision})\n"))
    }

    async fn pause(&self, a: QueueArgs, pause: bool) -> Result<()> {
        let queue = self.known_queue(&a.queue).await?;
        if pause {
            self.inspector.pause(&queue).await
        } else {
            self.inspector.resume(&queue).await
        }
        .map_err(|e| self.engine(e))?;
        if a.output.json {
            return output::json(&json!({ "queue": queue.name().as_str(), "paused": pause }));
        }
        let what = if pause {
            "paused (workers stop fetching within a moment; running tasks finish)"
        } else {
            "resumed"
        };
        output::text(&format!("queue {} {what}\n", queue.name()))
    }
}

/// A payload's start on one line, for the listing (`dlq show` prints it whole).
fn payload_preview(d: &DeadLetter) -> String {
    let one_line: String = d
        .payload
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clipped = clip(&one_line, 40);
    if d.payload_truncated && !clipped.ends_with('…') {
        format!("{clipped}…")
    } else {
        clipped
    }
}

/// A size in bytes for people: 512 B, 1.5 KiB, 50.0 MiB.
fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn dead_letter_id(s: &str) -> Result<DeadLetterId> {
    DeadLetterId::from_str(s).map_err(|_| {
        UsageError(format!(
            "--id {s:?}: dead-letter ids look like normal/0/1700000000000-0 (see `dlq list`)"
        ))
        .into()
    })
}

/// A well-formed id that cannot name a dead letter of `queue` (a priority or shard the queue
/// does not have) is a bad flag like a malformed one, not a dead letter that is missing.
fn id_fits(queue: &Queue, raw: &str, id: &DeadLetterId) -> Result<()> {
    let layout = queue.layout();
    if queue.rank(&id.priority).is_err() {
        return Err(UsageError(format!(
            "--id {raw:?}: queue {} has no priority {:?} (its priorities: {}); see `dlq list`",
            queue.name(),
            id.priority,
            layout.priorities.join(", ")
        ))
        .into());
    }
    if id.shard >= layout.shards {
        return Err(UsageError(format!(
            "--id {raw:?}: queue {} has no shard {} (its shards are numbered 0 to {}); see `dlq list`",
            queue.name(),
            id.shard,
            layout.shards - 1
        ))
        .into());
    }
    Ok(())
}

fn read_payload(a: &EnqueueArgs) -> Result<Bytes> {
    if let Some(p) = &a.payload {
        return Ok(Bytes::from(p.clone().into_bytes()));
    }
    let Some(path) = &a.payload_file else {
        return Ok(Bytes::from_static(b"null"));
    };
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the payload from stdin")?;
    } else {
        buf = std::fs::read(path).map_err(|e| payload_file_error(path, e))?;
    }
    Ok(Bytes::from(buf))
}

/// A payload file that is missing, unreadable or not a file is a bad flag (exit 2); an I/O
/// failure while reading one that exists is a runtime failure (exit 1).
fn payload_file_error(path: &std::path::Path, e: std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind::{InvalidInput, IsADirectory, NotFound, PermissionDenied};
    match e.kind() {
        NotFound | PermissionDenied | IsADirectory | InvalidInput => UsageError(format!(
            "--payload-file {}: {}",
            path.display(),
            match e.kind() {
                NotFound => "no such file".to_owned(),
                PermissionDenied => "permission denied".to_owned(),
                IsADirectory => "is a directory".to_owned(),
                _ => e.to_string(),
            }
        ))
        .into(),
        _ => anyhow::Error::new(e).context(format!("reading the payload file {}", path.display())),
    }
}

/// Resolves on the first SIGINT or SIGTERM after this call (both handlers are installed
/// before it returns).
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// The line under a table when tasks were lost: `lost` must stay 0 (docs/operations.md).
fn lost_warning(queue: &str, lost: u64) -> Option<String> {
    (lost > 0).then(|| {
        format!(
            "warning: queue {queue}: {lost} task(s) lost: in-flight entries were deleted from a stream by \
             something other than Rivulet (an XTRIM, XDEL or MAXLEN); see docs/operations.md\n"
        )
    })
}

/// A warning line, red on a terminal (`color`), when the dead-letter cap (`--dlq-maxlen`) has
/// dropped dead letters: "nothing silently lost" holds only while this stays 0.
fn dlq_trimmed_warning(s: &QueueStats, color: bool) -> Option<String> {
    let n = s.counters.dlq_trimmed;
    if n == 0 {
        return None;
    }
    let line = format!(
        "dlq_trimmed {n}: dead letters dropped by the dead-letter cap (--dlq-maxlen); replay or purge sooner, or raise the cap"
    );
    Some(if color {
        format!("\x1b[31m{line}\x1b[0m\n")
    } else {
        format!("{line}\n")
    })
}

/// One queue's stats as a table per priority, with totals and the autoscaler's decision.
fn stats_table(s: &QueueStats, decision: &Value) -> String {
    let mut t = Table::new(&[
        "PRIORITY",
        "WAITING",
        "PENDING",
        "SCHEDULED",
        "RETRY",
        "DEAD",
        "FAIR",
        "OLDEST",
        "ENQUEUED",
        "DONE",
        "FAILED",
        "RETRIED",
        "REPLAYED",
        "REQUEUED",
        "RECLAIMED",
        "LOST",
        "FENCED",
    ]);
    let age = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), fmt_duration);
    for p in &s.priorities {
        let c = &p.counters;
        t.row(vec![
            p.priority.clone(),
            format!("{}{}", p.waiting, if p.waiting_estimated { "~" } else { "" }),
            p.pending.to_string(),
            p.scheduled.to_string(),
            p.retry.to_string(),
            p.dead_letters.to_string(),
            p.fair_waiting.to_string(),
            age(p.oldest_waiting_age),
            c.enqueued.to_string(),
            c.done.to_string(),
            c.failed.to_string(),
            c.retried.to_string(),
            c.replayed.to_string(),
            c.requeued.to_string(),
            c.reclaimed.to_string(),
            c.lost.to_string(),
            c.fenced.to_string(),
        ]);
    }
    let sum = |f: fn(&rivulet::inspector::PriorityStats) -> u64| s.priorities.iter().map(f).sum::<u64>().to_string();
    let c = &s.counters;
    t.row(vec![
        "total".into(),
        sum(|p| p.waiting),
        sum(|p| p.pending),
        sum(|p| p.scheduled),
        sum(|p| p.retry),
        sum(|p| p.dead_letters),
        sum(|p| p.fair_waiting),
        age(s.priorities.iter().filter_map(|p| p.oldest_waiting_age).max()),
        c.enqueued.to_string(),
        c.done.to_string(),
        c.failed.to_string(),
        c.retried.to_string(),
        c.replayed.to_string(),
        c.requeued.to_string(),
        c.reclaimed.to_string(),
        c.lost.to_string(),
        c.fenced.to_string(),
    ]);
    let mut out = format!(
        "queue {}{}\n{}",
        s.queue,
        if s.paused { " (paused)" } else { "" },
        t.render()
    );
    if s.priorities.iter().any(|p| p.waiting_estimated) {
        out.push_str("~ estimated: Redis could not report the lag\n");
    }
    if let Some(w) = lost_warning(s.queue.as_str(), c.lost) {
        out.push_str(&w);
    }
    match decision {
        Value::Null => {}
        Value::Object(m) => {
            // The headline fields in a fixed order; the per-priority numbers and the long
            // `detail` line are for --json.
            const SHOWN: [&str; 7] = [
                "desired",
                "current",
                "live",
                "busy",
                "reason",
                "reason_priority",
                "dry_run",
            ];
            let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let mut parts: Vec<String> = SHOWN
                .iter()
                .filter_map(|k| m.get(*k).filter(|v| !v.is_null()).map(|v| format!("{k}={}", text(v))))
                .collect();
            if parts.is_empty() {
                parts = m
                    .iter()
                    .filter(|(_, v)| !v.is_object() && !v.is_array())
                    .map(|(k, v)| format!("{k}={}", text(v)))
                    .collect();
            }
            if let Some(at) = m.get("at_ms").and_then(Value::as_u64) {
                parts.push(format!("({})", fmt_ago(at, rivulet::envelope::now_ms())));
            }
            out.push_str(&format!("autoscaler: {}\n", parts.join(" ")));
        }
        other => out.push_str(&format!("autoscaler: {}\n", clip(&other.to_string(), 200))),
    }
    out
}
