//! The Redis [`LogBus`] (fred): one pub/sub channel per deployment
//! (`scalemesh:deployment:<id>`) and one for system events (`scalemesh:system`), so
//! every `scalemesh` process sharing the Redis server sees every line and event.
//!
//! Redis is a relay, never the record: lines are persisted before or as they are
//! published. While Redis is down, publishes are dropped after a short timeout (the
//! database has them), subscribers fall back to reading the database, and fred
//! reconnects and resubscribes on its own when Redis returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::config::ReconnectPolicy;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::BroadcastStream;

use super::{DeploymentEvent, LogBus, SystemEvent};

const SYSTEM_CHANNEL: &str = "scalemesh:system";
const DEPLOYMENT_PREFIX: &str = "scalemesh:deployment:";
/// Publishes waiting for Redis; past this they are dropped.
const OUTBOX: usize = 10_000;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

pub struct RedisBus {
    outbox: mpsc::Sender<(String, String)>,
    subscriber: SubscriberClient,
    /// Local fan-out of the channels this process subscribed to.
    local: Arc<Mutex<HashMap<String, broadcast::Sender<String>>>>,
}

impl RedisBus {
    /// Connects in the background (a Redis that is down at start is retried forever)
    /// and starts the publisher and the dispatcher of incoming messages.
    pub fn connect(url: &str) -> anyhow::Result<RedisBus> {
        let config = Config::from_url(url).map_err(|e| anyhow::anyhow!("logs.redis_url: {e}"))?;
        let policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
        let mut builder = Builder::from_config(config);
        builder.set_policy(policy);
        builder.with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT);
        let publisher = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        publisher.connect();
        subscriber.connect();
        subscriber.manage_subscriptions();

        let (outbox, mut rx) = mpsc::channel::<(String, String)>(OUTBOX);
        tokio::spawn(async move {
            while let Some((channel, payload)) = rx.recv().await {
                if let Err(e) = publisher.publish::<i64, _, _>(channel, payload).await {
                    tracing::debug!(error = %e, "redis publish dropped");
                }
            }
        });

        let local: Arc<Mutex<HashMap<String, broadcast::Sender<String>>>> = Arc::default();
        let mut messages = subscriber.message_rx();
        let fanout = local.clone();
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(msg) => {
                        let Some(payload) = msg.value.as_string() else {
                            continue;
                        };
                        let map = fanout.lock().expect("fanout lock");
                        if let Some(tx) = map.get(&*msg.channel) {
                            let _ = tx.send(payload);
                        }
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

    /// A local receiver of `channel`, subscribing at Redis on first use.
    async fn listen(&self, channel: String) -> anyhow::Result<broadcast::Receiver<String>> {
        let (rx, first) = {
            let mut map = self.local.lock().expect("fanout lock");
            match map.get(&channel) {
                Some(tx) if tx.receiver_count() > 0 => (tx.subscribe(), false),
                _ => {
                    let (tx, rx) = broadcast::channel(4096);
                    map.insert(channel.clone(), tx);
                    (rx, true)
                }
            }
        };
        if first {
            tokio::time::timeout(COMMAND_TIMEOUT, self.subscriber.subscribe(channel.clone()))
                .await
                .map_err(|_| anyhow::anyhow!("redis did not answer SUBSCRIBE"))??;
        }
        Ok(rx)
    }
}

fn decoded<T: serde::de::DeserializeOwned + Clone + Send + 'static>(
    rx: broadcast::Receiver<String>,
) -> BoxStream<'static, T> {
    BroadcastStream::new(rx)
        .take_while(|r| std::future::ready(r.is_ok()))
        .filter_map(|r| std::future::ready(r.ok().and_then(|s| serde_json::from_str(&s).ok())))
        .boxed()
}

#[async_trait::async_trait]
impl LogBus for RedisBus {
    fn publish(&self, deployment_id: &str, event: DeploymentEvent) {
        if let Ok(payload) = serde_json::to_string(&event) {
            self.send(format!("{DEPLOYMENT_PREFIX}{deployment_id}"), payload);
        }
    }

    async fn subscribe(
        &self,
        deployment_id: &str,
    ) -> anyhow::Result<BoxStream<'static, DeploymentEvent>> {
        let rx = self
            .listen(format!("{DEPLOYMENT_PREFIX}{deployment_id}"))
            .await?;
        Ok(decoded(rx))
    }

    fn publish_system(&self, event: SystemEvent) {
        if let Ok(payload) = serde_json::to_string(&event) {
            self.send(SYSTEM_CHANNEL.to_string(), payload);
        }
    }

    async fn subscribe_system(&self) -> anyhow::Result<BoxStream<'static, SystemEvent>> {
        Ok(decoded(self.listen(SYSTEM_CHANNEL.to_string()).await?))
    }
}
