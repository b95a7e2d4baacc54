//! `schedule add|list|show|remove|pause|resume|run-now|sync`, `scheduler`, and the
//! supervisor's scheduler: periodic tasks through the engine's `Schedules` and `Scheduler`.
//! A definition is checked by the engine's own rules (`Schedule::validate`) before anything is
//! sent, so a bad cron expression, zone, interval or payload is exit 2 whatever Redis does.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use rivulet::envelope::{millis, now_ms};
use rivulet::schedule::{Change, ScheduleInfo};
use rivulet::{Missed, Schedule, Scheduler, Schedules};
use serde::Deserialize;
use serde_json::json;

use crate::cli::{
    GlobalArgs, MissedArg, PayloadCodec, ScheduleAddArgs, ScheduleCommand, ScheduleNameArgs, SchedulerArgs,
};
use crate::output::{self, Table, fmt_ago};
use crate::settings::UsageError;
use crate::store;

/// An engine refusal of a definition is the user's to fix: exit 2, prefixed with where it
/// came from (`--cron`, the file).
fn usage(e: rivulet::Error, url: &str, from: &str) -> anyhow::Error {
    match e {
        e @ rivulet::Error::InvalidSchedule { .. } => UsageError::new(format!("{from}{e}")).into(),
        e => store::engine_error(url, e),
    }
}

/// `schedule ...`.
pub async fn run(global: &GlobalArgs, command: ScheduleCommand) -> Result<()> {
    // Definitions first: a bad one is exit 2 even when Redis cannot be reached.
    let added = match &command {
        ScheduleCommand::Add(a) => Some(definition(a)?),
        _ => None,
    };
    let synced = match &command {
        ScheduleCommand::Sync(a) => Some(read_file(&a.file)?),
        _ => None,
    };
    let url = &global.redis_url;
    let schedules = connect(global).await?;
    match command {
        ScheduleCommand::Add(a) => add(&schedules, url, added.expect("parsed above"), &a).await,
        ScheduleCommand::List(o) => list(&schedules, url, o.json).await,
        ScheduleCommand::Show(a) => show(&schedules, url, &a).await,
        ScheduleCommand::Remove(a) => {
            let removed = schedules
                .remove(&a.name)
                .await
                .map_err(|e| store::engine_error(url, e))?;
            if !removed {
                anyhow::bail!("no schedule {:?} (see `worker-cli schedule list`)", a.name);
            }
            said(
                &a,
                json!({"name": a.name, "removed": true}),
                format!("removed schedule {}", a.name),
            )
        }
        ScheduleCommand::Pause(a) => {
            let changed = schedules
                .pause(&a.name)
                .await
                .map_err(|e| store::engine_error(url, e))?;
            let word = if changed { "paused" } else { "already paused:" };
            said(
                &a,
                json!({"name": a.name, "paused": true, "changed": changed}),
                format!("{word} schedule {}", a.name),
            )
        }
        ScheduleCommand::Resume(a) => {
            let changed = schedules
                .resume(&a.name)
                .await
                .map_err(|e| store::engine_error(url, e))?;
            let word = if changed { "resumed" } else { "not paused:" };
            said(
                &a,
                json!({"name": a.name, "paused": false, "changed": changed}),
                format!("{word} schedule {}", a.name),
            )
        }
        ScheduleCommand::RunNow(a) => {
            let id = schedules
                .run_now(&a.name)
                .await
                .map_err(|e| store::engine_error(url, e))?;
            said(
                &a,
                json!({"name": a.name, "task_id": id.as_str()}),
                format!("enqueued task {id} of schedule {}", a.name),
            )
        }
        ScheduleCommand::Sync(a) => {
            let file = a.file.display().to_string();
            let changes = sync(&schedules, url, &synced.expect("read above"), &file, a.dry_run).await?;
            print_changes(&changes, a.dry_run, a.output.json)
        }
    }
}

async fn connect(global: &GlobalArgs) -> Result<Schedules> {
    let (client, _) = store::connect_checked(&global.redis_url, &global.tls()).await?;
    Schedules::new(&client)
        .await
        .map_err(|e| store::engine_error(&global.redis_url, e))
}

/// Prints the one-line outcome of a command on one schedule, or its JSON.
fn said(a: &ScheduleNameArgs, doc: serde_json::Value, line: String) -> Result<()> {
    if a.output.json {
        output::json(&doc)
    } else {
        output::text(&format!("{line}\n"))
    }
}

/// `schedule add`'s flags as a definition, checked.
fn definition(a: &ScheduleAddArgs) -> Result<Schedule> {
    let mut s = match (&a.cron, a.every) {
        (Some(expr), _) => Schedule::cron(&a.name, &a.queue, &a.kind, expr).timezone(&a.timezone),
        (None, Some(every)) => Schedule::every(&a.name, &a.queue, &a.kind, every),
        (None, None) => unreachable!("clap requires --cron or --every"),
    };
    let payload = match (&a.payload, &a.payload_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| UsageError::new(format!("--payload-file {}: {e}", path.display())))?,
        ),
        (None, None) => None,
    };
    if let Some(text) = payload {
        s = match a.codec {
            PayloadCodec::Json => s.payload(serde_json::from_str(&text).map_err(|e| {
                UsageError::new(format!(
                    "--payload {text:?} is not valid JSON ({e}); quote it for the shell, or pass --codec bytes"
                ))
            })?),
            PayloadCodec::Bytes => s.payload_text(&text),
        };
    }
    if let Some(p) = &a.priority {
        s = s.priority(p);
    }
    s = s
        .jitter(a.jitter)
        .misfire_grace(a.misfire_grace)
        .missed(match a.missed {
            MissedArg::Skip => Missed::Skip,
            MissedArg::RunOnce => Missed::RunOnce,
        });
    s.validate().map_err(|e| match e {
        rivulet::Error::InvalidSchedule {
            field, value, reason, ..
        } => {
            let flag = match field {
                "name" => "NAME".to_owned(),
                f => format!("--{}", f.replace('_', "-")),
            };
            UsageError::new(format!("{flag} {value:?}: {reason}")).into()
        }
        e => anyhow::Error::new(e),
    })?;
    Ok(s)
}

async fn add(schedules: &Schedules, url: &str, s: Schedule, a: &ScheduleAddArgs) -> Result<()> {
    let change = if a.replace {
        schedules.put(&s).await.map_err(|e| usage(e, url, ""))?
    } else {
        match schedules.add(&s).await {
            Ok(()) => Change::Created,
            Err(rivulet::Error::ScheduleExists { name }) => anyhow::bail!(
                "schedule {name:?} exists already; pass --replace to update it (`worker-cli schedule show {name}` shows it)"
            ),
            Err(e) => return Err(usage(e, url, "")),
        }
    };
    let info = schedules
        .get(&s.name)
        .await
        .map_err(|e| store::engine_error(url, e))?
        .context("the schedule vanished right after it was stored (removed by someone else?)")?;
    if a.output.json {
        let mut doc = serde_json::to_value(&info)?;
        doc["change"] = json!(change);
        return output::json(&doc);
    }
    let next = info.next_fires.first().map_or("never".to_owned(), Clone::clone);
    output::text(&format!(
        "{} schedule {} ({}; into {} as {}); next fire {next}\n",
        change.as_str(),
        s.name,
        s.cadence_text(),
        s.queue,
        s.kind
    ))
}

async fn list(schedules: &Schedules, url: &str, json_out: bool) -> Result<()> {
    let all = schedules.list().await.map_err(|e| store::engine_error(url, e))?;
    if json_out {
        return output::json(&all);
    }
    if all.is_empty() {
        note!("no schedules (add one with `worker-cli schedule add`)");
        return Ok(());
    }
    let now = now_ms();
    let mut t = Table::new(&["NAME", "QUEUE", "KIND", "WHEN", "STATE", "LAST FIRED", "NEXT FIRE"]);
    for s in &all {
        t.row(vec![
            s.schedule.name.clone(),
            s.schedule.queue.clone(),
            s.schedule.kind.clone(),
            s.schedule.cadence_text(),
            state(s).into(),
            s.last_fired_ms.map_or("-".into(), |t| fmt_ago(t, now)),
            s.next_fires.first().cloned().unwrap_or_else(|| "-".into()),
        ]);
    }
    output::text(&t.render())
}

fn state(s: &ScheduleInfo) -> &'static str {
    match (&s.error, s.paused) {
        (Some(_), _) => "unusable",
        (None, true) => "paused",
        (None, false) => "active",
    }
}

async fn show(schedules: &Schedules, url: &str, a: &ScheduleNameArgs) -> Result<()> {
    let Some(info) = schedules.get(&a.name).await.map_err(|e| store::engine_error(url, e))? else {
        anyhow::bail!("no schedule {:?} (see `worker-cli schedule list`)", a.name);
    };
    if a.output.json {
        return output::json(&info);
    }
    let s = &info.schedule;
    let mut t = Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["name".into(), s.name.clone()]);
    t.row(vec!["queue".into(), s.queue.clone()]);
    t.row(vec!["kind".into(), s.kind.clone()]);
    t.row(vec!["when".into(), s.cadence_text()]);
    t.row(vec!["payload".into(), output::clip(&s.payload.to_string(), 80)]);
    t.row(vec!["codec".into(), s.codec.clone()]);
    t.row(vec![
        "priority".into(),
        s.priority.clone().unwrap_or_else(|| "(queue default)".into()),
    ]);
    t.row(vec![
        "jitter".into(),
        output::fmt_duration(Duration::from_millis(s.jitter_ms)),
    ]);
    t.row(vec!["missed".into(), s.missed.as_str().into()]);
    t.row(vec![
        "misfire_grace".into(),
        output::fmt_duration(Duration::from_millis(s.misfire_grace_ms)),
    ]);
    t.row(vec!["state".into(), state(&info).into()]);
    if let Some(e) = &info.error {
        t.row(vec!["error".into(), e.clone()]);
    }
    t.row(vec![
        "last_fired".into(),
        info.last_fired_ms.map_or("-".into(), |t| s.local_time(t)),
    ]);
    for (i, next) in info.next_fires.iter().enumerate() {
        t.row(vec![
            if i == 0 { "next_fires".into() } else { String::new() },
            next.clone(),
        ]);
    }
    output::text(&t.render())
}

/// One `[[schedule]]` of a schedules file: `schedule add`'s flags as fields, durations as
/// text (`60s`, `1h30m`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchedule {
    name: String,
    queue: String,
    kind: String,
    cron: Option<String>,
    timezone: Option<String>,
    every: Option<String>,
    /// A string is JSON text (or the bytes, with codec = "bytes"); any other TOML value is
    /// the JSON payload itself.
    payload: Option<toml::Value>,
    codec: Option<String>,
    priority: Option<String>,
    jitter: Option<String>,
    missed: Option<Missed>,
    misfire_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    #[serde(default)]
    schedule: Vec<FileSchedule>,
}

fn file_duration(file: &str, name: &str, field: &str, text: &str) -> Result<Duration, UsageError> {
    crate::values::parse_duration(text)
        .map_err(|e| UsageError::new(format!("{file}: schedule {name:?}: {field} {text:?}: {e}")))
}

/// Reads and checks a schedules file: a file that is not TOML, a field that is unknown or of
/// the wrong type, or a definition the engine refuses is a usage error naming the file.
pub fn read_file(path: &Path) -> Result<Vec<Schedule>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| UsageError::new(format!("--schedules {file}: {e}")))?;
    let parsed: ScheduleFile = toml::from_str(&text).map_err(|e| UsageError::new(format!("{file}: {e}")))?;
    let mut out = Vec::with_capacity(parsed.schedule.len());
    for f in parsed.schedule {
        let mut s = Schedule::cron(&f.name, &f.queue, &f.kind, "");
        s.cron = f.cron.clone();
        if let Some(tz) = &f.timezone {
            s.timezone = tz.clone();
        }
        if let Some(every) = &f.every {
            s.every_ms = Some(millis(file_duration(&file, &f.name, "every", every)?));
        }
        let codec = f.codec.clone().unwrap_or_else(|| "json".into());
        s.codec = codec.clone();
        s.payload = match (f.payload, codec.as_str()) {
            (None, _) => serde_json::Value::Null,
            (Some(toml::Value::String(text)), "json") => serde_json::from_str(&text).map_err(|e| {
                UsageError::new(format!(
                    "{file}: schedule {:?}: payload {text:?} is not valid JSON ({e}); write it as a TOML value, or set codec = \"bytes\"",
                    f.name
                ))
            })?,
            (Some(v), _) => serde_json::to_value(v).context("a TOML value is always JSON")?,
        };
        s.priority = f.priority.clone();
        if let Some(j) = &f.jitter {
            s.jitter_ms = millis(file_duration(&file, &f.name, "jitter", j)?);
        }
        if let Some(m) = f.missed {
            s.missed = m;
        }
        if let Some(g) = &f.misfire_grace {
            s.misfire_grace_ms = millis(file_duration(&file, &f.name, "misfire_grace", g)?);
        }
        s.validate().map_err(|e| usage(e, "", &format!("{file}: ")))?;
        out.push(s);
    }
    Ok(out)
}

async fn sync(
    schedules: &Schedules,
    url: &str,
    wanted: &[Schedule],
    file: &str,
    dry_run: bool,
) -> Result<Vec<(String, Change)>> {
    schedules
        .sync(wanted, dry_run)
        .await
        .map_err(|e| usage(e, url, &format!("{file}: ")))
}

fn print_changes(changes: &[(String, Change)], dry_run: bool, json_out: bool) -> Result<()> {
    if json_out {
        let doc: Vec<_> = changes
            .iter()
            .map(|(name, change)| json!({"name": name, "change": change}))
            .collect();
        return output::json(&json!({"dry_run": dry_run, "changes": doc}));
    }
    let mut text = String::new();
    for (name, change) in changes {
        text.push_str(&format!("{:<9} {name}\n", change.as_str()));
    }
    let changed = changes.iter().filter(|(_, c)| *c != Change::Unchanged).count();
    note!(
        "{changed} change(s){}",
        if dry_run {
            " would be made (dry run: nothing changed)"
        } else {
            ""
        }
    );
    output::text(&text)
}

/// Syncs `path` at the start of a scheduler or supervisor, logging each change.
pub async fn sync_at_start(target: &rivulet::RedisTarget, url: &str, path: &Path) -> Result<()> {
    let wanted = read_file(path)?;
    let schedules = Schedules::new(target.clone())
        .await
        .map_err(|e| store::engine_error(url, e))?;
    let file = path.display().to_string();
    for (name, change) in sync(&schedules, url, &wanted, &file, false).await? {
        if change != Change::Unchanged {
            tracing::info!(schedule = %name, change = change.as_str(), file = %file, "schedules file synced");
        }
    }
    Ok(())
}

/// `worker-cli scheduler`: one scheduler until a signal.
pub async fn run_scheduler(global: &GlobalArgs, args: &SchedulerArgs) -> Result<()> {
    if let Some(path) = &args.schedules {
        read_file(path)?;
    }
    let (client, _) = store::connect_checked(&global.redis_url, &global.tls()).await?;
    if let Some(path) = &args.schedules {
        sync_at_start(&client, &global.redis_url, path).await?;
    }
    let stop = rivulet_fleet::Stop::new();
    let mut signals = tokio::task::JoinSet::new();
    stop.on_signals(&mut signals)?;
    Scheduler::new(client)
        .poll_interval(args.poll)
        .run(stop.drain.cancelled())
        .await
        .map_err(|e| store::engine_error(&global.redis_url, e))
}
