//! A small Kafka client for the CLI, the benchmark and the tests: pipelined
//! connections, metadata-driven routing to partition leaders, and retries
//! (bounded, with backoff) on the errors Kafka marks retriable. A consumer
//! group member built on it is in [`consumer`].

pub mod consumer;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex};

const RESPONSE_BYTES_MAX: usize = 128 * 1024 * 1024;

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

type Reply = oneshot::Sender<Result<Bytes, ClientError>>;

struct Outgoing {
    frame: BytesMut,
    reply: Option<Reply>,
}

/// One pipelined connection: requests are written in order and responses,
/// which Kafka returns in order, are matched to them.
#[derive(Clone)]
pub struct Connection {
    addr: String,
    tx: mpsc::Sender<Outgoing>,
    next_cid: Arc<std::sync::atomic::AtomicI32>,
    timeout: Duration,
}

impl Connection {
    pub async fn connect(
        addr: &str,
        timeout: Duration,
        in_flight_max: usize,
    ) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.to_string(),
                ms: timeout.as_millis() as u64,
            })?
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Outgoing>(in_flight_max);
        let (pending_tx, mut pending_rx) = mpsc::channel::<Reply>(in_flight_max);
        let a = addr.to_string();
        tokio::spawn(async move {
            while let Some(o) = rx.recv().await {
                if let Some(reply) = o.reply {
                    if pending_tx.send(reply).await.is_err() {
                        break;
                    }
                }
                if let Err(e) = wr.write_all(&o.frame).await {
                    tracing::debug!(addr = %a, error = %e, "write failed");
                    break;
                }
            }
        });
        let a = addr.to_string();
        tokio::spawn(async move {
            while let Some(reply) = pending_rx.recv().await {
                let r = async {
                    let len = rd.read_i32().await?;
                    if len < 4 || len as usize > RESPONSE_BYTES_MAX {
                        return Err(std::io::Error::other(format!("bad response length {len}")));
                    }
                    let mut buf = vec![0u8; len as usize];
                    rd.read_exact(&mut buf).await?;
                    Ok(Bytes::from(buf))
                }
                .await
                .map_err(|e| ClientError::Io {
                    addr: a.clone(),
                    reason: e.to_string(),
                });
                let failed = r.is_err();
                let _ = reply.send(r);
                if failed {
                    break;
                }
            }
        });
        Ok(Connection {
            addr: addr.to_string(),
            tx,
            next_cid: Arc::new(1.into()),
            timeout,
        })
    }

    fn frame(
        &self,
        api: ApiKey,
        version: i16,
        req: &impl Encodable,
    ) -> Result<BytesMut, ClientError> {
        let cid = self
            .next_cid
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(cid)
            .with_client_id(Some(StrBytes::from_static_str("meridian")));
        let mut buf = BytesMut::with_capacity(64);
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        req.encode(&mut buf, version)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let len = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf)
    }

    /// Sends a request and decodes its response.
    pub async fn call<Req, Resp>(
        &self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, ClientError>
    where
        Req: Encodable,
        Resp: Decodable,
    {
        let frame = self.frame(api, version, req)?;
        let (reply, rx) = oneshot::channel();
        let gone = || ClientError::Io {
            addr: self.addr.clone(),
            reason: "connection closed".into(),
        };
        self.tx
            .send(Outgoing {
                frame,
                reply: Some(reply),
            })
            .await
            .map_err(|_| gone())?;
        let mut body = tokio::time::timeout(self.timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
                ms: self.timeout.as_millis() as u64,
            })?
            .map_err(|_| gone())??;
        ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Resp::decode(&mut body, version).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends a request that gets no response (produce with `acks = 0`).
    pub async fn send_only(
        &self,
        api: ApiKey,
        version: i16,
        req: &impl Encodable,
    ) -> Result<(), ClientError> {
        let frame = self.frame(api, version, req)?;
        self.tx
            .send(Outgoing { frame, reply: None })
            .await
            .map_err(|_| ClientError::Io {
                addr: self.addr.clone(),
                reason: "connection closed".into(),
            })
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
            if !c.tx.is_closed() {
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
                self.forget(&conn.addr).await;
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
                    let addr = c.addr.clone();
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

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(name.to_string())))
                .with_num_partitions(partitions)
                .with_replication_factor(-1)
                .with_configs(
                    configs
                        .iter()
                        .map(|(k, v)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(k.clone()))
                                .with_value(Some(StrBytes::from_string(v.clone())))
                        })
                        .collect(),
                )])
            .with_timeout_ms(30_000);
        let resp: CreateTopicsResponse = self
            .any()
            .await?
            .call(ApiKey::CreateTopics, V_CREATE_TOPICS, &req)
            .await?;
        for t in resp.topics {
            if t.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("create topic `{name}`"),
                    t.error_code,
                    t.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let req = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(StrBytes::from_string(name.to_string()))])
            .with_timeout_ms(30_000);
        let resp: DeleteTopicsResponse = self
            .any()
            .await?
            .call(ApiKey::DeleteTopics, V_DELETE_TOPICS, &req)
            .await?;
        for t in resp.responses {
            if t.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("delete topic `{name}`"),
                    t.error_code,
                    t.error_message.as_ref(),
                ));
            }
        }
        Ok(())
    }

    pub async fn describe_configs(
        &self,
        name: &str,
    ) -> Result<Vec<(String, String, bool)>, ClientError> {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(name.to_string()))
                .with_configuration_keys(None),
        ]);
        let resp: DescribeConfigsResponse = self
            .any()
            .await?
            .call(ApiKey::DescribeConfigs, V_DESCRIBE_CONFIGS, &req)
            .await?;
        let mut out = Vec::new();
        for r in resp.results {
            if r.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("describe `{name}`"),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
            for c in r.configs {
                out.push((
                    c.name.to_string(),
                    c.value.map(|v| v.to_string()).unwrap_or_default(),
                    c.config_source == 1,
                ));
            }
        }
        Ok(out)
    }

    pub async fn alter_configs(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<(), ClientError> {
        let mut configs: Vec<AlterableConfig> = set
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .collect();
        configs.extend(delete.iter().map(|k| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(k.clone()))
                .with_config_operation(1)
                .with_value(None)
        }));
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(name.to_string()))
                .with_configs(configs),
        ]);
        let resp: IncrementalAlterConfigsResponse = self
            .any()
            .await?
            .call(ApiKey::IncrementalAlterConfigs, V_ALTER_CONFIGS, &req)
            .await?;
        for r in resp.responses {
            if r.error_code != 0 {
                return Err(ClientError::kafka(
                    format!("alter `{name}`"),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
        }
        Ok(())
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

/// A record to write, with its headers.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// An idempotent producer's identity and the sequence of a batch's first
/// record in its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub id: i64,
    pub epoch: i16,
    pub sequence: i32,
}

/// Encodes records with headers as one Kafka v2 batch, stamped with an
/// idempotent producer's id, epoch and first sequence when given.
pub fn encode_stamped(
    records: &[OutRecord],
    stamp: Option<ProducerStamp>,
    compression: Compression,
) -> Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let headers = r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone().map(Bytes::from)))
                .collect();
            let mut rec =
                crate::log::records::plain(0, i, now, r.key.clone(), r.value.clone(), headers);
            if let Some(s) = stamp {
                rec.producer_id = s.id;
                rec.producer_epoch = s.epoch;
                rec.sequence = s.sequence.wrapping_add(i as i32);
            }
            rec
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode record batch");
    buf.freeze()
}

/// Encodes records as one Kafka v2 batch, as a producer would.
pub fn encode_batch(records: &[(Option<Bytes>, Option<Bytes>)], compression: Compression) -> Bytes {
    let records: Vec<OutRecord> = records
        .iter()
        .map(|(key, value)| OutRecord {
            key: key.clone(),
            value: value.clone(),
            headers: Vec::new(),
        })
        .collect();
    encode_stamped(&records, None, compression)
}

pub async fn produce_on(
    c: &Connection,
    topic: &str,
    partition: i32,
    batch: Bytes,
    acks: i16,
) -> Result<i64, ClientError> {
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    if acks == 0 {
        c.send_only(ApiKey::Produce, V_PRODUCE, &req).await?;
        return Ok(-1);
    }
    let resp: ProduceResponse = c.call(ApiKey::Produce, V_PRODUCE, &req).await?;
    let p = resp
        .responses
        .into_iter()
        .flat_map(|t| t.partition_responses)
        .next()
        .ok_or_else(|| ClientError::Protocol("empty produce response".into()))?;
    if p.error_code != 0 {
        return Err(ClientError::kafka(
            format!("produce to {topic}-{partition}"),
            p.error_code,
            p.error_message.as_ref(),
        ));
    }
    Ok(p.base_offset)
}

pub async fn fetch_on(
    c: &Connection,
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
) -> Result<(Vec<Consumed>, i64), ClientError> {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(16 * 1024 * 1024)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(4 * 1024 * 1024)])]);
    let resp: FetchResponse = c.call(ApiKey::Fetch, V_FETCH, &req).await?;
    let p = resp
        .responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .next()
        .ok_or_else(|| ClientError::Protocol("empty fetch response".into()))?;
    if p.error_code != 0 {
        return Err(ClientError::kafka(
            format!("fetch {topic}-{partition}@{offset}"),
            p.error_code,
            None,
        ));
    }
    let mut out = Vec::new();
    if let Some(mut bytes) = p.records {
        while bytes.has_remaining() {
            let set = RecordBatchDecoder::decode(&mut bytes)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            for r in set.records {
                if r.offset < offset {
                    continue; // a batch starts before the requested offset
                }
                let mut origin = None;
                let mut hlc = None;
                let mut headers = Vec::new();
                for (k, v) in r.headers {
                    match k.as_str() {
                        "meridian.origin" => {
                            origin = v.map(|b| String::from_utf8_lossy(&b).into_owned())
                        }
                        "meridian.hlc" => {
                            hlc = v.and_then(|b| {
                                std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok())
                            })
                        }
                        _ => headers.push((k.to_string(), v.map(|b| b.to_vec()))),
                    }
                }
                out.push(Consumed {
                    partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(|b| b.to_vec()),
                    value: r.value.map(|b| b.to_vec()),
                    origin,
                    hlc,
                    headers,
                });
            }
        }
    }
    Ok((out, p.high_watermark))
}
