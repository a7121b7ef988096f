//! A small pipelined Redis client: one connection, many callers.
//!
//! The limiter needs three commands (`EVALSHA`, `SCRIPT LOAD`, `PING`), a
//! hard bound on how long each may take, and no dependency on a particular
//! Redis crate. [`RedisClient`] is that: a handle on a background task that
//! owns one TCP connection, writes every queued command in one batch
//! (automatic pipelining) and hands replies back in order. It reconnects on
//! the next command after the connection fails; the caller decides how long
//! to wait ([`RedisLimiter`](crate::RedisLimiter) wraps every call in its
//! timeout).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::resp::{self, ProtocolError, Value};

/// How many commands may wait for the connection task before new ones are
/// refused at once with [`RedisError::Busy`].
const QUEUE: usize = 4096;

/// The most bytes written in one batch before the task looks at replies.
const MAX_BATCH: usize = 64 * 1024;

/// Why a Redis command did not produce a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisError {
    /// Connecting, writing or reading failed (the message is the I/O
    /// error's).
    Io(String),
    /// Connecting took longer than the connect timeout.
    ConnectTimeout,
    /// The connection was lost before the reply arrived.
    Disconnected,
    /// The reply was not valid RESP.
    Protocol(String),
    /// Redis answered with an error reply (the whole line, such as
    /// `NOSCRIPT No matching script`).
    Server(String),
    /// The reply had the wrong shape for the command.
    UnexpectedReply(String),
    /// Too many commands are already waiting for the connection.
    Busy,
    /// The caller's time bound elapsed first.
    Timeout,
    /// The client's connection task has stopped (the runtime is shutting
    /// down).
    Closed,
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::Io(msg) => write!(f, "redis I/O error: {msg}"),
            RedisError::ConnectTimeout => f.write_str("connecting to redis timed out"),
            RedisError::Disconnected => f.write_str("redis connection lost before the reply"),
            RedisError::Protocol(msg) => write!(f, "redis protocol error: {msg}"),
            RedisError::Server(line) => write!(f, "redis error reply: {line}"),
            RedisError::UnexpectedReply(what) => write!(f, "unexpected redis reply: {what}"),
            RedisError::Busy => f.write_str("too many redis commands waiting"),
            RedisError::Timeout => f.write_str("redis call timed out"),
            RedisError::Closed => f.write_str("redis client task has stopped"),
        }
    }
}

impl std::error::Error for RedisError {}

impl From<ProtocolError> for RedisError {
    fn from(err: ProtocolError) -> Self {
        RedisError::Protocol(err.to_string())
    }
}

/// One encoded command and where its reply goes.
struct Command {
    frame: Vec<u8>,
    reply: oneshot::Sender<Result<Value, RedisError>>,
}

/// A cheap, cloneable handle on one pipelined connection to a Redis server.
///
/// Created with [`RedisClient::new`], which must run inside a Tokio runtime
/// (it spawns the connection task). The connection is opened by the first
/// command, and opened again by the first command after it fails. The task
/// ends when the last handle is dropped.
///
/// ```no_run
/// use floodwall_redis::RedisClient;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), floodwall_redis::RedisError> {
/// let client = RedisClient::new("127.0.0.1:6379".parse().unwrap());
/// client.ping().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisClient {
    tx: mpsc::Sender<Command>,
    addr: SocketAddr,
    connect_timeout: Duration,
}

impl fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// A client for the server at `addr`, with a 1 s connect timeout.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_connect_timeout(addr, Duration::from_secs(1))
    }

    /// A client whose connection attempts give up after `connect_timeout`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn with_connect_timeout(addr: SocketAddr, connect_timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(drive(addr, connect_timeout, rx));
        Self {
            tx,
            addr,
            connect_timeout,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How long a connection attempt may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Sends one command (`args[0]` is its name) and waits for its reply.
    /// An error reply is returned as `Ok(Value::Error(..))`: the caller
    /// knows which errors it can handle.
    ///
    /// Dropping the future abandons the command; if it was already written,
    /// its reply is read and discarded.
    ///
    /// # Errors
    /// [`RedisError`] when no reply arrives: the connection failed, the
    /// queue is full, or the client's task has stopped.
    pub async fn command(&self, args: &[&[u8]]) -> Result<Value, RedisError> {
        let mut frame = Vec::with_capacity(64);
        resp::encode(&mut frame, args);
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Command { frame, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => RedisError::Busy,
                mpsc::error::TrySendError::Closed(_) => RedisError::Closed,
            })?;
        rx.await.map_err(|_| RedisError::Closed)?
    }

    /// `PING`: checks that the server answers.
    ///
    /// # Errors
    /// As [`command`](Self::command), and [`RedisError::Server`] /
    /// [`RedisError::UnexpectedReply`] for any answer but `PONG`.
    pub async fn ping(&self) -> Result<(), RedisError> {
        match self.command(&[b"PING"]).await? {
            Value::Status(s) if s == "PONG" => Ok(()),
            Value::Error(line) => Err(RedisError::Server(line)),
            other => Err(RedisError::UnexpectedReply(format!("{other:?} to PING"))),
        }
    }
}

/// The live connection: the two halves, the replies still owed, and the
/// bytes read but not yet decoded.
struct Conn {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    pending: VecDeque<oneshot::Sender<Result<Value, RedisError>>>,
    buf: Vec<u8>,
}

impl Conn {
    fn fail_all(self, err: &RedisError) {
        for waiter in self.pending {
            let _ = waiter.send(Err(err.clone()));
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, RedisError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(RedisError::Io(err.to_string())),
        Err(_) => return Err(RedisError::ConnectTimeout),
    };
    // Commands are tiny and latency-bound.
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    Ok(Conn {
        read,
        write,
        pending: VecDeque::new(),
        buf: Vec::with_capacity(4096),
    })
}

/// The connection task: batches queued commands onto the socket and routes
/// replies back in order; on any failure, fails what is owed and waits for
/// the next command to reconnect.
async fn drive(addr: SocketAddr, connect_timeout: Duration, mut rx: mpsc::Receiver<Command>) {
    let mut conn: Option<Conn> = None;
    let mut out = Vec::with_capacity(4096);
    loop {
        let event = match conn.as_mut() {
            None => Event::Command(rx.recv().await),
            Some(c) => tokio::select! {
                cmd = rx.recv() => Event::Command(cmd),
                read = c.read.read_buf(&mut c.buf) => Event::Read(read),
            },
        };
        let first = match event {
            Event::Command(Some(cmd)) => cmd,
            Event::Command(None) => return,
            Event::Read(read) => {
                let c = conn.as_mut().expect("reads only while connected");
                let outcome = match read {
                    Ok(0) => Err(RedisError::Disconnected),
                    Ok(_) => route_replies(c),
                    Err(err) => Err(io_error(&err)),
                };
                if let Err(err) = outcome {
                    tracing::debug!(%addr, error = %err, "redis connection failed");
                    if let Some(c) = conn.take() {
                        c.fail_all(&err);
                    }
                }
                continue;
            }
        };
        if conn.is_none() {
            match connect(addr, connect_timeout).await {
                Ok(c) => conn = Some(c),
                Err(err) => {
                    tracing::debug!(%addr, error = %err, "redis connect failed");
                    let _ = first.reply.send(Err(err.clone()));
                    // Everything queued behind it would fail the same way.
                    while let Ok(cmd) = rx.try_recv() {
                        let _ = cmd.reply.send(Err(err.clone()));
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        out.clear();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            // A caller that already gave up does not need its command sent.
            if !cmd.reply.is_closed() {
                out.extend_from_slice(&cmd.frame);
                c.pending.push_back(cmd.reply);
            }
            if out.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if out.is_empty() {
            continue;
        }
        if let Err(err) = c.write.write_all(&out).await {
            let err = io_error(&err);
            tracing::debug!(%addr, error = %err, "redis write failed");
            if let Some(c) = conn.take() {
                c.fail_all(&err);
            }
        }
    }
}

fn io_error(err: &io::Error) -> RedisError {
    RedisError::Io(err.to_string())
}

/// Hands every complete reply in the buffer to the oldest waiter.
fn route_replies(c: &mut Conn) -> Result<(), RedisError> {
    let mut used = 0;
    while let Some((value, n)) = resp::decode(&c.buf[used..])? {
        used += n;
        match c.pending.pop_front() {
            // The waiter may have given up (timed out); the reply is dropped.
            Some(waiter) => {
                let _ = waiter.send(Ok(value));
            }
            None => {
                return Err(RedisError::Protocol(
                    "a reply arrived with no command waiting for it".into(),
                ));
            }
        }
    }
    c.buf.drain(..used);
    Ok(())
}

/// What woke the connection task.
enum Event {
    Command(Option<Command>),
    Read(io::Result<usize>),
}
