//! A small Kafka client for the CLI, the benchmark and the tests: pipelined
//! connections, metadata-driven routing to partition leaders, and retries
//! (bounded, with backoff) on the errors Kafka marks retriable. A consumer
//! group member built on it is in [`consumer`].

mod admin;
mod connection;
pub mod consumer;
mod records;

pub use connection::Connection;
pub use records::{encode_batch, encode_stamped, fetch_on, produce_on, OutRecord, ProducerStamp};

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to {addr}: {reason}; is a Meridian node listening there? \
         (give the brokers with --bootstrap or MERIDIAN_BOOTSTRAP)"
    )]
    Connect { addr: String, reason: String },
    #[error("connection to {addr} failed: {reason}")]
    Io { addr: String, reason: String },
    #[error("no answer from {addr} within {ms} ms")]
    Timeout { addr: String, ms: u64 },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{what}: {code} ({message})")]
    Kafka {
        what: String,
        code: i16,
        message: String,
    },
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
}

impl ClientError {
    fn kafka(what: impl Into<String>, code: i16, message: Option<&StrBytes>) -> Self {
        let name =
            ResponseError::try_from_code(code).map_or("OK".to_string(), |e| format!("{e:?}"));
        ClientError::Kafka {
            what: what.into(),
            code,
            message: message.map_or(name, |m| m.to_string()),
        }
    }

    /// Whether retrying after a metadata refresh may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Kafka { code, .. } => {
                ResponseError::try_from_code(*code).is_some_and(|e| e.is_retriable())
            }
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Timeout { .. } => {
                true
            }
            _ => false,
        }
    }
}

pub const V_METADATA: i16 = 12;
pub const V_PRODUCE: i16 = 8;
pub const V_FETCH: i16 = 11;
pub const V_LIST_OFFSETS: i16 = 5;
pub const V_CREATE_TOPICS: i16 = 5;
pub const V_DELETE_TOPICS: i16 = 4;
pub const V_DESCRIBE_CONFIGS: i16 = 4;
pub const V_ALTER_CONFIGS: i16 = 1;
pub const V_INIT_PRODUCER_ID: i16 = 2;

/// A record read from Meridian, with its identity headers split out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub origin: Option<String>,
    pub hlc: Option<u64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub id: uuid::Uuid,
    /// Leader broker id per partition (-1: none yet).
    pub leaders: Vec<i32>,
}

/// A client of one Meridian region: bootstraps, keeps metadata and one
/// connection per broker.
pub struct Client {
    bootstrap: Vec<String>,
    brokers: Mutex<HashMap<i32, String>>,
    /// Partition leaders per topic, from the last metadata; dropped on errors.
    leaders: Mutex<HashMap<String, Vec<i32>>>,
    conns: Mutex<HashMap<String, Connection>>,
    pub timeout: Duration,
    pub in_flight_max: usize,
    pub retries_max: u32,
}

impl Client {
    pub fn new(bootstrap: &str) -> Self {
        Client {
            bootstrap: bootstrap
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            brokers: Mutex::new(HashMap::new()),
            leaders: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            timeout: Duration::from_secs(30),
            in_flight_max: 64,
            retries_max: 20,
        }
    }

    pub async fn connection(&self, addr: &str) -> Result<Connection, ClientError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let c = Connection::connect(addr, self.timeout, self.in_flight_max).await?;
        conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn forget(&self, addr: &str) {
        self.conns.lock().await.remove(addr);
    }

    /// Any reachable broker: the bootstrap list first, then known brokers.
    pub async fn any(&self) -> Result<Connection, ClientError> {
        let mut last = None;
        let known: Vec<String> = self.brokers.lock().await.values().cloned().collect();
        for addr in self.bootstrap.iter().chain(known.iter()) {
            match self.connection(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Protocol("no bootstrap address given".into())))
    }

    pub async fn metadata(
        &self,
        topics: Option<&[&str]>,
        auto_create: bool,
    ) -> Result<MetadataResponse, ClientError> {
        let req = MetadataRequest::default()
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(auto_create);
        let conn = self.any().await?;
        let resp: MetadataResponse = match conn.call(ApiKey::Metadata, V_METADATA, &req).await {
            Ok(r) => r,
            Err(e) => {
                self.forget(conn.addr()).await;
                return Err(e);
            }
        };
        let mut brokers = self.brokers.lock().await;
        for b in &resp.brokers {
            brokers.insert(b.node_id.0, format!("{}:{}", b.host.as_str(), b.port));
        }
        Ok(resp)
    }

    pub async fn topic(&self, name: &str, auto_create: bool) -> Result<TopicInfo, ClientError> {
        let md = self.metadata(Some(&[name]), auto_create).await?;
        let t = md
            .topics
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::Protocol("metadata without the topic".into()))?;
        if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
            return Err(ClientError::UnknownTopic(name.to_string()));
        }
        if t.error_code != 0 {
            return Err(ClientError::kafka(
                format!("metadata of `{name}`"),
                t.error_code,
                None,
            ));
        }
        let mut leaders = vec![-1; t.partitions.len()];
        for p in t.partitions {
            if let Some(slot) = leaders.get_mut(p.partition_index as usize) {
                *slot = p.leader_id.0;
            }
        }
        self.leaders
            .lock()
            .await
            .insert(name.to_string(), leaders.clone());
        Ok(TopicInfo {
            id: t.topic_id,
            leaders,
        })
    }

    /// A connection to the leader of a partition, per fresh metadata.
    pub async fn leader(&self, topic: &str, partition: i32) -> Result<Connection, ClientError> {
        let t = self.topic(topic, false).await?;
        self.connect_leader(topic, partition, &t.leaders).await
    }

    /// Like [`Client::leader`], from the last metadata when it names one;
    /// call [`Client::forget_leaders`] after an error.
    pub async fn leader_cached(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Connection, ClientError> {
        let cached = self.leaders.lock().await.get(topic).cloned();
        match cached {
            Some(leaders) if leaders.get(partition as usize).is_some_and(|l| *l >= 0) => {
                self.connect_leader(topic, partition, &leaders).await
            }
            _ => self.leader(topic, partition).await,
        }
    }

    pub async fn forget_leaders(&self, topic: &str) {
        self.leaders.lock().await.remove(topic);
    }

    async fn connect_leader(
        &self,
        topic: &str,
        partition: i32,
        leaders: &[i32],
    ) -> Result<Connection, ClientError> {
        let leader = *leaders.get(partition as usize).ok_or(ClientError::Kafka {
            what: format!("{topic}-{partition}"),
            code: ResponseError::UnknownTopicOrPartition.code(),
            message: format!("topic `{topic}` has {} partitions", leaders.len()),
        })?;
        if leader < 0 {
            return Err(ClientError::kafka(
                format!("{topic}-{partition}"),
                ResponseError::LeaderNotAvailable.code(),
                None,
            ));
        }
        let addr = self
            .brokers
            .lock()
            .await
            .get(&leader)
            .cloned()
            .ok_or_else(|| {
                ClientError::Protocol(format!("leader {leader} is not among the brokers"))
            })?;
        self.connection(&addr).await
    }

    /// Runs `op` against the partition leader, refreshing metadata and
    /// retrying with backoff on retriable errors.
    pub async fn with_leader<T, F, Fut>(
        &self,
        topic: &str,
        partition: i32,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            let r = match self.leader_cached(topic, partition).await {
                Ok(c) => {
                    let addr = c.addr().to_string();
                    let r = op(c).await;
                    if matches!(
                        r,
                        Err(ClientError::Io { .. }) | Err(ClientError::Timeout { .. })
                    ) {
                        self.forget(&addr).await;
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.is_retriable() && attempt < self.retries_max => {
                    attempt += 1;
                    self.forget_leaders(topic).await;
                    tracing::debug!(error = %e, attempt, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                r => return r,
            }
        }
    }

    /// Appends records to a partition with `acks = all` and returns the base
    /// offset. Retries after leader changes; this client is not an
    /// idempotent producer, so a retried batch that had in fact been
    /// committed is stored twice.
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        batch: Bytes,
    ) -> Result<i64, ClientError> {
        self.with_leader(topic, partition, |c| {
            let batch = batch.clone();
            async move { produce_on(&c, topic, partition, batch, -1).await }
        })
        .await
    }

    /// Fetches committed records from `offset`, waiting up to `max_wait_ms`
    /// for some; returns the records and the high watermark.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_wait_ms: i32,
    ) -> Result<(Vec<Consumed>, i64), ClientError> {
        self.with_leader(topic, partition, |c| async move {
            fetch_on(&c, topic, partition, offset, max_wait_ms).await
        })
        .await
    }

    /// A new idempotent producer id and epoch (InitProducerId without a
    /// transactional id).
    pub async fn init_producer_id(&self) -> Result<(i64, i16), ClientError> {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(i32::MAX)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let resp: InitProducerIdResponse = self
            .any()
            .await?
            .call(ApiKey::InitProducerId, V_INIT_PRODUCER_ID, &req)
            .await?;
        if resp.error_code != 0 {
            return Err(ClientError::kafka("InitProducerId", resp.error_code, None));
        }
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<(i64, i64), ClientError> {
        self.with_leader(topic, partition, |c| async move {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_current_leader_epoch(-1)
                        .with_timestamp(timestamp)])]);
            let resp: ListOffsetsResponse =
                c.call(ApiKey::ListOffsets, V_LIST_OFFSETS, &req).await?;
            let p = resp
                .topics
                .into_iter()
                .flat_map(|t| t.partitions)
                .next()
                .ok_or_else(|| ClientError::Protocol("empty ListOffsets response".into()))?;
            if p.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("{topic}-{partition}"),
                    p.error_code,
                    None,
                ));
            }
            Ok((p.offset, p.timestamp))
        })
        .await
    }
}
