//! One pipelined connection to a broker: requests framed and sent in
//! order, responses matched to them, bounded in size.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::ClientError;

const RESPONSE_BYTES_MAX: usize = 128 * 1024 * 1024;

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
    /// The broker this connection is to, as it was dialled.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection is gone (its writer stopped).
    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

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
