//! QUIC between nodes, with mutual TLS.
//!
//! One endpoint per node serves and dials. Every request is one
//! bidirectional stream: the request frame `[kind u8][group u64][payload]`,
//! then the response frame `[status u8][payload]`. Requests are multiplexed by
//! kind and Raft group over one connection per peer; every call has a
//! deadline and every frame a size limit. Nothing above this module imports
//! quinn.

pub mod faults;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::config::TransportConfig;
use crate::ids::NodeId;
pub use tls::TlsMaterial;

const HEADER_LEN: usize = 9;
const STATUS_OK: u8 = 0;
const STATUS_ERR: u8 = 1;
/// Largest UDP payload path-MTU discovery may probe for.
const MTU_UPPER_BOUND: u16 = 65_000;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("node {0} is not in the topology")]
    UnknownPeer(NodeId),
    #[error("cannot bind QUIC endpoint on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot reach node {peer}: {reason}")]
    Connect { peer: NodeId, reason: String },
    #[error("node {peer} did not answer within {ms} ms")]
    Timeout { peer: NodeId, ms: u64 },
    #[error("stream to node {peer} failed: {reason}")]
    Stream { peer: NodeId, reason: String },
    #[error("node {peer} is cut off by the fault layer")]
    Cut { peer: NodeId },
    #[error("node {peer} refused the request: {reason}")]
    Remote { peer: NodeId, reason: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Serves requests that arrive from other nodes.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        kind: u8,
        group: u64,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

pub struct Transport {
    endpoint: quinn::Endpoint,
    peers: HashMap<NodeId, SocketAddr>,
    conns: Mutex<HashMap<NodeId, quinn::Connection>>,
    cfg: TransportConfig,
    pub faults: faults::Faults,
}

fn quic_transport_config(cfg: &TransportConfig) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(cfg.streams_max.into());
    t.max_concurrent_uni_streams(0u32.into());
    // A peer silent for `idle_timeout_ms` is gone: its connection closes and
    // every call in flight on it fails now, not at its deadline. Without
    // this, a copy in flight to a SIGKILLed partition leader held the link
    // (and every region's view of that partition) for the whole RPC
    // deadline. Live peers send a keep-alive every quarter of it.
    let idle = Duration::from_millis(
        cfg.idle_timeout_ms
            .clamp(1, crate::config::IDLE_TIMEOUT_MS_MAX),
    );
    t.keep_alive_interval(Some(idle / 4));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).expect("clamped to a valid idle timeout"),
    ));
    // Let path-MTU discovery go past Ethernet sizes: on loopback and jumbo-
    // frame networks, large datagrams cut the packets (and syscalls) per Raft
    // entry by an order of magnitude. Probes that do not fit are simply lost.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    t.stream_receive_window((16u32 * 1024 * 1024).into());
    t.receive_window((64u32 * 1024 * 1024).into());
    t.send_window(64 * 1024 * 1024);
    Arc::new(t)
}

impl Transport {
    pub fn bind(
        cfg: TransportConfig,
        listen: SocketAddr,
        peers: HashMap<NodeId, SocketAddr>,
        tls: &TlsMaterial,
        faults: faults::Faults,
    ) -> Result<Arc<Transport>, TransportError> {
        let bind_err = |reason: String| TransportError::Bind {
            addr: listen,
            reason,
        };
        let server_tls = QuicServerConfig::try_from(tls.server_config()?)
            .map_err(|e| bind_err(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server.transport_config(quic_transport_config(&cfg));
        let client_tls = QuicClientConfig::try_from(tls.client_config()?)
            .map_err(|e| bind_err(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
        client.transport_config(quic_transport_config(&cfg));
        let mut endpoint = quinn::Endpoint::server(server, listen)
            .map_err(|e| bind_err(format!("{e}; is another process using this UDP port?")))?;
        endpoint.set_default_client_config(client);
        Ok(Arc::new(Transport {
            endpoint,
            peers,
            conns: Mutex::new(HashMap::new()),
            cfg,
            faults,
        }))
    }

    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.rpc_timeout_ms)
    }

    /// Accepts connections from other nodes until `shutdown`; the task
    /// ends early only if the endpoint closed, which the node treats as
    /// fatal (the socket cannot be bound again while the node runs).
    pub fn serve(
        self: &Arc<Self>,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let incoming = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    i = this.endpoint.accept() => match i { Some(i) => i, None => break },
                };
                let handler = handler.clone();
                let frame_max = this.cfg.frame_bytes_max as usize;
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    let conn = match incoming.await {
                        Ok(c) => c,
                        Err(e) => {
                            warn!(%remote, error = %e, "QUIC handshake failed");
                            return;
                        }
                    };
                    serve_connection(conn, handler, frame_max, shutdown)
                        .instrument(tracing::debug_span!("quic_conn", %remote))
                        .await;
                });
            }
            this.endpoint.close(0u32.into(), b"shutdown");
        })
    }

    async fn connection(&self, peer: NodeId) -> Result<quinn::Connection, TransportError> {
        if let Some(c) = self.conns.lock().expect("conns lock").get(&peer) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let addr = *self
            .peers
            .get(&peer)
            .ok_or(TransportError::UnknownPeer(peer))?;
        let connecting =
            self.endpoint
                .connect(addr, tls::SERVER_NAME)
                .map_err(|e| TransportError::Connect {
                    peer,
                    reason: e.to_string(),
                })?;
        let ms = self.cfg.connect_timeout_ms;
        let conn = tokio::time::timeout(Duration::from_millis(ms), connecting)
            .await
            .map_err(|_| TransportError::Timeout { peer, ms })?
            .map_err(|e| TransportError::Connect {
                peer,
                reason: e.to_string(),
            })?;
        self.conns
            .lock()
            .expect("conns lock")
            .insert(peer, conn.clone());
        Ok(conn)
    }

    /// Sends one request and waits for its response, for at most `timeout`.
    pub async fn call(
        &self,
        peer: NodeId,
        kind: u8,
        group: u64,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let ms = timeout.as_millis() as u64;
        let call = async {
            match self.faults.path(peer) {
                faults::Path::Cut => Err(TransportError::Cut { peer }),
                faults::Path::Lost => {
                    // The outer timeout ends the wait.
                    std::future::pending::<()>().await;
                    unreachable!("pending never completes")
                }
                faults::Path::Delay(d) if d.is_zero() => {
                    self.call_inner(peer, kind, group, payload).await
                }
                faults::Path::Delay(d) => {
                    tokio::time::sleep(d).await;
                    let r = self.call_inner(peer, kind, group, payload).await;
                    tokio::time::sleep(d).await;
                    r
                }
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| TransportError::Timeout { peer, ms })?
    }

    async fn call_inner(
        &self,
        peer: NodeId,
        kind: u8,
        group: u64,
        payload: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let stream_err = |e: &dyn std::fmt::Display| TransportError::Stream {
            peer,
            reason: e.to_string(),
        };
        let conn = self.connection(peer).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_err(&e))?;
        let mut header = [0u8; HEADER_LEN];
        header[0] = kind;
        header[1..].copy_from_slice(&group.to_be_bytes());
        send.write_all(&header).await.map_err(|e| stream_err(&e))?;
        send.write_all(payload).await.map_err(|e| stream_err(&e))?;
        send.finish().map_err(|e| stream_err(&e))?;
        let resp = recv
            .read_to_end(self.cfg.frame_bytes_max as usize)
            .await
            .map_err(|e| stream_err(&e))?;
        match resp.split_first() {
            Some((&STATUS_OK, body)) => Ok(body.to_vec()),
            Some((_, body)) => Err(TransportError::Remote {
                peer,
                reason: String::from_utf8_lossy(body).into_owned(),
            }),
            None => Err(stream_err(&"empty response")),
        }
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    handler: Arc<dyn Handler>,
    frame_max: usize,
    shutdown: CancellationToken,
) {
    loop {
        let (mut send, mut recv) = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "QUIC connection closed");
                    return;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let req = match recv.read_to_end(frame_max).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, frame_max, "dropping request stream");
                    return;
                }
            };
            let resp = if req.len() < HEADER_LEN {
                Err(format!("request frame of {} bytes is too short", req.len()))
            } else {
                let kind = req[0];
                let group = u64::from_be_bytes(req[1..HEADER_LEN].try_into().expect("8 bytes"));
                let payload = Bytes::from(req).slice(HEADER_LEN..);
                // A caller that gave up (its deadline passed) stops the
                // stream: stop working for it too, so that retries after
                // timeouts do not pile up work on a busy node.
                tokio::select! {
                    r = handler.handle(kind, group, payload) => r,
                    _ = send.stopped() => {
                        debug!(kind, group, "caller gave up; request dropped");
                        return;
                    }
                }
            };
            let (status, body) = match resp {
                Ok(b) => (STATUS_OK, b),
                Err(msg) => (STATUS_ERR, msg.into_bytes()),
            };
            if send.write_all(&[status]).await.is_ok() && send.write_all(&body).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn handle(
            &self,
            kind: u8,
            group: u64,
            payload: Bytes,
        ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
            Box::pin(async move {
                if kind == 9 {
                    return Err("kind 9 refused".into());
                }
                let mut out = group.to_be_bytes().to_vec();
                out.extend(payload);
                Ok(out)
            })
        }
    }

    /// A transport bound to `addr`, knowing `peers`, with the dev CA of
    /// `dir`'s parent.
    fn bind_at(
        cfg: &TransportConfig,
        addr: SocketAddr,
        peers: HashMap<NodeId, SocketAddr>,
        dir: &std::path::Path,
    ) -> Arc<Transport> {
        Transport::bind(
            cfg.clone(),
            addr,
            peers,
            &TlsMaterial::dev(dir).unwrap(),
            faults::Faults::new(&crate::config::Topology::default(), "r"),
        )
        .unwrap()
    }

    /// Two bound transports, nodes 1 and 2, with dev CAs from `dirs`.
    fn pair(cfg: TransportConfig, dirs: [&std::path::Path; 2]) -> (Arc<Transport>, Arc<Transport>) {
        let (a_addr, b_addr) = (free_udp(), free_udp());
        let peers: HashMap<_, _> = [(1, a_addr), (2, b_addr)].into_iter().collect();
        (
            bind_at(&cfg, a_addr, peers.clone(), dirs[0]),
            bind_at(&cfg, b_addr, peers, dirs[1]),
        )
    }

    fn free_udp() -> SocketAddr {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[tokio::test]
    async fn mutual_tls_call_round_trips_and_bounds_frames() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TransportConfig {
            frame_bytes_max: 1024,
            ..TransportConfig::default()
        };
        let (a, b) = pair(cfg, [&dir.path().join("a"), &dir.path().join("b")]);
        let stop = CancellationToken::new();
        b.serve(Arc::new(Echo), stop.clone());
        let t = Duration::from_secs(5);
        let r = a.call(2, 1, 7, b"hi", t).await.unwrap();
        assert_eq!(&r[..8], &7u64.to_be_bytes());
        assert_eq!(&r[8..], b"hi");
        let e = a.call(2, 9, 0, b"", t).await.unwrap_err();
        assert!(e.to_string().contains("kind 9 refused"), "{e}");
        // Oversized frames are refused, and the connection keeps serving.
        assert!(a.call(2, 1, 0, &[0u8; 4096], t).await.is_err());
        assert!(a.call(2, 1, 0, b"ok", t).await.is_ok());
        assert!(matches!(
            a.call(3, 1, 0, b"", t).await,
            Err(TransportError::UnknownPeer(3))
        ));
        stop.cancel();
    }

    /// Counts handler runs that started and that finished.
    struct Slow(
        Arc<std::sync::atomic::AtomicU32>,
        Arc<std::sync::atomic::AtomicU32>,
    );
    impl Handler for Slow {
        fn handle(&self, _: u8, _: u64, _: Bytes) -> BoxFuture<'static, Result<Vec<u8>, String>> {
            let (started, finished) = (self.0.clone(), self.1.clone());
            Box::pin(async move {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(600)).await;
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Vec::new())
            })
        }
    }

    #[tokio::test]
    async fn work_stops_when_the_caller_gives_up() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = pair(
            TransportConfig::default(),
            [&dir.path().join("a"), &dir.path().join("b")],
        );
        let stop = CancellationToken::new();
        let (started, finished) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        b.serve(
            Arc::new(Slow(started.clone(), finished.clone())),
            stop.clone(),
        );
        let e = a.call(2, 1, 0, b"x", Duration::from_millis(200)).await;
        assert!(matches!(e, Err(TransportError::Timeout { .. })), "{e:?}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(finished.load(Ordering::SeqCst), 0, "the handler ran on");
        // A caller that waits gets its answer.
        a.call(2, 1, 0, b"x", Duration::from_secs(3)).await.unwrap();
        assert_eq!(finished.load(Ordering::SeqCst), 1);
        stop.cancel();
    }

    /// Answers kind 8 after a minute, anything else at once.
    struct Hang;
    impl Handler for Hang {
        fn handle(
            &self,
            kind: u8,
            _: u64,
            _: Bytes,
        ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
            Box::pin(async move {
                if kind == 8 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok(Vec::new())
            })
        }
    }

    /// A UDP relay to `to`: forwards both ways until `cut`, then drops
    /// everything, as a SIGKILLed or cut-off peer would (no close, no reset).
    async fn relay(to: SocketAddr, cut: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut client = None;
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let dest = if from == to {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    to
                };
                let _ = sock.send_to(&buf[..n], dest).await;
            }
        });
        addr
    }

    /// A call in flight to a peer that goes silent fails once the peer was
    /// silent for `transport.idle_timeout_ms`, not at the call's deadline
    /// (issue 16, item 10: a link copy to a SIGKILLed partition leader held
    /// every region's view of the partition for the 5 s RPC deadline). A
    /// peer that is alive but slow is kept alive by keep-alives.
    #[tokio::test]
    async fn a_call_to_a_peer_gone_silent_fails_within_the_idle_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TransportConfig {
            idle_timeout_ms: 400,
            ..TransportConfig::default()
        };
        let (a_addr, b_addr) = (free_udp(), free_udp());
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let via = relay(b_addr, cut.clone()).await;
        let peers = |to_b| [(1, a_addr), (2, to_b)].into_iter().collect();
        let a = bind_at(&cfg, a_addr, peers(via), &dir.path().join("a"));
        let b = bind_at(&cfg, b_addr, peers(b_addr), &dir.path().join("b"));
        let stop = CancellationToken::new();
        b.serve(Arc::new(Hang), stop.clone());
        a.call(2, 1, 0, b"x", Duration::from_secs(5)).await.unwrap();
        // Alive but slow: the call runs to its deadline, well past the idle
        // timeout, and the connection still serves afterwards.
        let e = a.call(2, 8, 0, b"x", Duration::from_millis(1500)).await;
        assert!(matches!(e, Err(TransportError::Timeout { .. })), "{e:?}");
        a.call(2, 1, 0, b"x", Duration::from_secs(5)).await.unwrap();
        // Gone silent: the call fails soon after the idle timeout.
        let started = std::time::Instant::now();
        let call = a.call(2, 8, 0, b"x", Duration::from_secs(30));
        let cutter = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cut.store(true, std::sync::atomic::Ordering::SeqCst);
        };
        let (e, ()) = tokio::join!(call, cutter);
        assert!(e.is_err(), "a call to a silent peer succeeded");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a call to a silent peer took {:?} to fail: {e:?}",
            started.elapsed()
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_peer_with_another_ca_is_refused() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let (a, b) = pair(
            TransportConfig::default(),
            [&d1.path().join("a"), &d2.path().join("b")],
        );
        let stop = CancellationToken::new();
        b.serve(Arc::new(Echo), stop.clone());
        assert!(a.call(2, 1, 0, b"x", Duration::from_secs(3)).await.is_err());
        stop.cancel();
    }
}
