//! Recording accepted deliveries in batches: the webhook handlers hand
//! each delivery to one writer, which records whatever has gathered while
//! the previous batch committed in one transaction. Under a burst (a
//! forge redelivering, a monorepo's pushes) the commits stay few and the
//! answers fast; alone, a delivery is recorded at once.

use std::sync::Arc;

use axum::body::Bytes;
use solstice_core::store::{IntegrationStore, NewDelivery, SqlStore};
use tokio::sync::{mpsc, oneshot};

/// Most deliveries recorded in one transaction.
const BATCH: usize = 256;
/// Deliveries waiting for the writer before handlers wait too.
const QUEUE: usize = 4096;

struct Item {
    forge: &'static str,
    id: String,
    event: String,
    body: Bytes,
    reply: oneshot::Sender<Result<bool, String>>,
}

/// The handlers' side.
#[derive(Debug, Clone)]
pub struct Intake {
    tx: mpsc::Sender<Item>,
}

impl Intake {
    /// Starts the writer.
    pub fn start(store: Arc<SqlStore>) -> Intake {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, rx));
        Intake { tx }
    }

    /// Records a delivery durably: `true` when new, `false` when seen before.
    pub async fn record(
        &self,
        forge: &'static str,
        id: &str,
        event: &str,
        body: Bytes,
    ) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            forge,
            id: id.to_string(),
            event: event.to_string(),
            body,
            reply,
        };
        self.tx
            .send(item)
            .await
            .map_err(|_| "the recorder has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the recorder has stopped".to_string())?
    }
}

async fn write(store: Arc<SqlStore>, mut rx: mpsc::Receiver<Item>) {
    let mut items: Vec<Item> = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut items, BATCH).await > 0 {
        let batch: Vec<NewDelivery<'_>> = items
            .iter()
            .map(|i| NewDelivery::new(i.forge, &i.id, &i.event, &i.body))
            .collect();
        let result = store
            .record_deliveries(&batch, solstice_core::engine::now_ms())
            .await;
        drop(batch);
        match result {
            Ok(new) => {
                for (item, new) in items.drain(..).zip(new) {
                    let _ = item.reply.send(Ok(new));
                }
            }
            Err(e) => {
                let why = crate::daemon::chain(&e);
                for item in items.drain(..) {
                    let _ = item.reply.send(Err(why.clone()));
                }
            }
        }
    }
}
