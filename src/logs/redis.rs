//! The Redis [`LogBus`] (fred): one pub/sub channel per deployment
//! (`scalemesh:deployment:<id>`) and one for system events (`scalemesh:system`), so
//! every `scalemesh` process sharing the Redis server sees every line and event.
//!
//! Redis is a relay, never the record: lines are persisted before or as they are
//! published. While Redis is down, publishes are dropped after a short timeout (the
//! database has them), subscribers fall back to reading the database, and fred
//! reconnects and resubscribes on its own when Redis returns.
//!
//! ```text
//!  publish ─► outbox ─► one task: pipelines of ≤512 PUBLISH, in order
//!  Redis ─► subscriber connection ─► parse once ─► local broadcast per channel ─► streams
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;
use futures::stream::BoxStream;
use tokio::sync::{broadcast, mpsc};

use super::memory::receiver_stream;
use super::{DeploymentEvent, LogBus, SystemEvent, WireEvent};

const SYSTEM_CHANNEL: &str = "scalemesh:system";
const DEPLOYMENT_PREFIX: &str = "scalemesh:deployment:";
/// Publishes waiting for Redis; past this they are dropped.
const OUTBOX: usize = 10_000;
/// Most publishes sent in one pipeline.
const PIPELINE: usize = 512;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Events a local subscriber may fall behind before it reads the database instead.
const LOCAL_CAPACITY: usize = 16_384;

/// The channels this process listens to, each fanned out locally.
#[derive(Default)]
struct Local {
    deployments: HashMap<String, broadcast::Sender<DeploymentEvent>>,
    system: Option<broadcast::Sender<SystemEvent>>,
}

pub struct RedisBus {
    outbox: mpsc::Sender<(String, String)>,
    subscriber: SubscriberClient,
    local: Arc<Mutex<Local>>,
}

impl RedisBus {
    /// Connects in the background (a Redis that is down at start is retried forever)
    /// and starts the publisher and the dispatcher of incoming messages.
    pub fn connect(url: &str) -> anyhow::Result<RedisBus> {
        let config = Config::from_url(url).map_err(|e| anyhow::anyhow!("logs.redis_url: {e}"))?;
        let mut builder = Builder::from_config(config);
        builder.set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
        builder.with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            // fred's own fan-out of received messages holds 32 by default: a burst of
            // lines would overflow it, and every stream would repair the gap from the
            // database at once.
            p.broadcast_channel_capacity = LOCAL_CAPACITY;
        });
        let publisher = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        publisher.connect();
        subscriber.connect();
        subscriber.manage_subscriptions();

        let (outbox, mut rx) = mpsc::channel::<(String, String)>(OUTBOX);
        tokio::spawn(async move {
            // Whatever has queued up goes out as one pipeline: one round trip for a
            // burst of lines instead of one each, in order.
            let mut batch = Vec::with_capacity(PIPELINE);
            while rx.recv_many(&mut batch, PIPELINE).await > 0 {
                let pipeline = publisher.pipeline();
                for (channel, payload) in batch.drain(..) {
                    let _: Result<(), _> = pipeline.publish(channel, payload).await;
                }
                if let Err(e) = pipeline.all::<Vec<fred::types::Value>>().await {
                    tracing::debug!(error = %e, "redis publish dropped");
                }
            }
        });

        let local: Arc<Mutex<Local>> = Arc::default();
        let mut messages = subscriber.message_rx();
        let fanout = local.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(msg) => {
                        let Some(payload) = msg.value.as_str() else {
                            continue;
                        };
                        dispatch(&fanout, &msg.channel, &payload);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "redis messages missed; streams read the database"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        Ok(RedisBus {
            outbox,
            subscriber,
            local,
        })
    }

    fn send(&self, channel: String, payload: String) {
        if self.outbox.try_send((channel, payload)).is_err() {
            tracing::debug!("redis outbox full; event dropped (the database has it)");
        }
    }

    async fn subscribe_at_redis(&self, channel: String) -> anyhow::Result<()> {
        tokio::time::timeout(COMMAND_TIMEOUT, self.subscriber.subscribe(channel))
            .await
            .map_err(|_| anyhow::anyhow!("redis did not answer SUBSCRIBE"))??;
        Ok(())
    }
}

/// Parses one message, once, and hands it to this process's subscribers.
fn dispatch(local: &Mutex<Local>, channel: &str, payload: &str) {
    let mut local = local.lock().expect("fanout lock");
    if channel == SYSTEM_CHANNEL {
        if let (Some(tx), Ok(event)) = (&local.system, serde_json::from_str::<SystemEvent>(payload))
        {
            let _ = tx.send(event);
        }
    } else if let Some(id) = channel.strip_prefix(DEPLOYMENT_PREFIX)
        && let Some(tx) = local.deployments.get(id)
    {
        match serde_json::from_str::<WireEvent>(payload) {
            Ok(event) => {
                if tx.send(event.into()).is_err() {
                    // Nobody here listens any more.
                    local.deployments.remove(id);
                }
            }
            Err(e) => tracing::debug!(error = %e, "unreadable redis message"),
        }
    }
}

#[async_trait::async_trait]
impl LogBus for RedisBus {
    fn publish(&self, deployment_id: &str, event: DeploymentEvent) {
        if let Ok(payload) = serde_json::to_string(&WireEvent::from(&event)) {
            self.send(format!("{DEPLOYMENT_PREFIX}{deployment_id}"), payload);
        }
    }

    async fn subscribe(
        &self,
        deployment_id: &str,
    ) -> anyhow::Result<BoxStream<'static, DeploymentEvent>> {
        let (rx, first) = {
            let mut local = self.local.lock().expect("fanout lock");
            match local.deployments.get(deployment_id) {
                Some(tx) if tx.receiver_count() > 0 => (tx.subscribe(), false),
                _ => {
                    let (tx, rx) = broadcast::channel(LOCAL_CAPACITY);
                    local.deployments.insert(deployment_id.to_string(), tx);
                    (rx, true)
                }
            }
        };
        if first {
            self.subscribe_at_redis(format!("{DEPLOYMENT_PREFIX}{deployment_id}"))
                .await?;
        }
        Ok(receiver_stream(rx))
    }

    fn publish_system(&self, event: SystemEvent) {
        if let Ok(payload) = serde_json::to_string(&event) {
            self.send(SYSTEM_CHANNEL.to_string(), payload);
        }
    }

    async fn subscribe_system(&self) -> anyhow::Result<BoxStream<'static, SystemEvent>> {
        let (rx, first) = {
            let mut local = self.local.lock().expect("fanout lock");
            match &local.system {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(256);
                    local.system = Some(tx);
                    (rx, true)
                }
            }
        };
        if first {
            self.subscribe_at_redis(SYSTEM_CHANNEL.to_string()).await?;
        }
        Ok(receiver_stream(rx))
    }
}
