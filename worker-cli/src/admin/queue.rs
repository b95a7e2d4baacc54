//! `queue create` and `queue show`: a queue's layout (priorities, shards) from the command
//! line, checked by the library's own rules (`Queue::with_layout`) before anything is sent.

use anyhow::Result;
use rivulet::{Client, Queue};
use serde_json::json;

use super::{Admin, queue_name};
use crate::cli::{QueueCreateArgs, QueueShowArgs};
use crate::output::{self, Table};
use crate::settings::UsageError;

/// The layout `queue create` asks for, as a queue: a bad name, priority list or shard count is
/// a usage error (exit 2) naming the flag, whatever state Redis is in.
pub(super) fn wanted(a: &QueueCreateArgs) -> Result<Queue> {
    queue_name(&a.name)?;
    let layout = rivulet::keys::Layout {
        priorities: a.priorities.iter().map(|p| p.trim().to_owned()).collect(),
        shards: a.shards,
    };
    Queue::with_layout(&a.name, layout).map_err(|e| {
        let flag = match &e {
            rivulet::Error::InvalidConfig { field, .. } if field.contains("shards") => "--shards",
            _ => "--priorities",
        };
        UsageError(format!("{flag}: {e}")).into()
    })
}

/// A queue's layout as `queue show --json` and `queue create --json` print it.
fn layout_json(queue: &Queue, paused: bool) -> serde_json::Value {
    let layout = queue.layout();
    json!({
        "queue": queue.name().as_str(),
        "priorities": layout.priorities,
        "shards": layout.shards,
        "default_priority": queue.default_priority(),
        "paused": paused,
    })
}

impl Admin {
    pub(super) async fn queue_create(&self, a: QueueCreateArgs) -> Result<()> {
        let queue = wanted(&a)?;
        let existed = self
            .inspector
            .queues()
            .await
            .map_err(|e| self.engine(e))?
            .iter()
            .any(|q| q.name() == queue.name());
        let producer = Client::new(&self.client).await.map_err(|e| self.engine(e))?;
        match producer.declare(&queue).await {
            Ok(()) => {}
            Err(rivulet::Error::LayoutMismatch {
                queue: name,
                stored,
                wanted,
            }) => {
                anyhow::bail!(
                    "queue {name} already exists with another layout ({stored}; asked for {wanted}); a layout cannot change while producers and workers use it: delete the queue first (`worker-cli delete-queue --queue {name}`) or use another name"
                );
            }
            Err(e) => return Err(self.engine(e)),
        }
        if a.output.json {
            let mut doc = layout_json(&queue, false);
            doc["created"] = json!(!existed);
            return output::json(&doc);
        }
        let layout = queue.layout();
        output::text(&format!(
            "{} queue {} (priorities {}; {} shard(s) each)\n",
            if existed { "unchanged: existing" } else { "created" },
            queue.name(),
            layout.priorities.join(", "),
            layout.shards
        ))
    }

    pub(super) async fn queue_show(&self, a: QueueShowArgs) -> Result<()> {
        let queue = self.known_queue(&a.name).await?;
        let paused = self.inspector.stats(&queue).await.map_err(|e| self.engine(e))?.paused;
        if a.output.json {
            return output::json(&layout_json(&queue, paused));
        }
        let layout = queue.layout();
        let mut t = Table::new(&["FIELD", "VALUE"]);
        t.row(vec!["queue".into(), queue.name().to_string()]);
        t.row(vec!["priorities".into(), layout.priorities.join(", ")]);
        t.row(vec!["shards".into(), layout.shards.to_string()]);
        t.row(vec!["default_priority".into(), queue.default_priority().to_owned()]);
        t.row(vec!["paused".into(), paused.to_string()]);
        output::text(&t.render())
    }
}
