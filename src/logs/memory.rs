//! The in-process [`LogBus`]: one `tokio::sync::broadcast` channel per watched
//! deployment, made on first subscribe and dropped when its last subscriber leaves.
//!
//! The map sits behind a `std::sync::Mutex`: it is held only to look up or insert a
//! channel, never across an `.await`, so Tokio's async mutex would add cost for nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use super::{DeploymentEvent, LogBus, SystemEvent};

/// Events a subscriber may fall behind before it misses some.
const CHANNEL_CAPACITY: usize = 16_384;

pub struct MemoryBus {
    deployments: Mutex<HashMap<String, broadcast::Sender<DeploymentEvent>>>,
    system: broadcast::Sender<SystemEvent>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus {
            deployments: Mutex::new(HashMap::new()),
            system: broadcast::channel(256).0,
        }
    }
}

#[async_trait::async_trait]
impl LogBus for MemoryBus {
    fn publish(&self, deployment_id: &str, event: DeploymentEvent) {
        let mut map = self.deployments.lock().expect("bus lock");
        if let Some(tx) = map.get(deployment_id)
            && tx.send(event).is_err()
        {
            // Nobody listens any more.
            map.remove(deployment_id);
        }
    }

    async fn subscribe(
        &self,
        deployment_id: &str,
    ) -> anyhow::Result<BoxStream<'static, DeploymentEvent>> {
        let rx = self
            .deployments
            .lock()
            .expect("bus lock")
            .entry(deployment_id.to_string())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Ok(receiver_stream(rx))
    }

    fn publish_system(&self, event: SystemEvent) {
        let _ = self.system.send(event);
    }

    async fn subscribe_system(&self) -> anyhow::Result<BoxStream<'static, SystemEvent>> {
        Ok(receiver_stream(self.system.subscribe()))
    }
}

/// A broadcast receiver as a stream that ends when the receiver falls behind: the
/// subscriber then knows it may have missed events and reads the database.
pub(super) fn receiver_stream<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> BoxStream<'static, T> {
    BroadcastStream::new(rx)
        .take_while(|r| std::future::ready(r.is_ok()))
        .filter_map(|r| std::future::ready(r.ok()))
        .boxed()
}
