//! What the limiter talks to Redis through: a connection of redis-rs.
//!
//! [`RedisConnection`] is built from whatever the application already
//! holds — a [`redis::Client`] (any URL redis-rs reads: credentials,
//! `rediss://` with the `tls` feature, a database number, a Unix socket),
//! a [`ConnectionManager`], a [`MultiplexedConnection`], a
//! [`ClusterClient`] or a [`ClusterConnection`] — or found through Redis
//! Sentinel (feature `sentinel`).
//!
//! # Reconnecting
//! A connection the application passed in is used as it is: a
//! `ConnectionManager` reconnects by its own policy, a `ClusterConnection`
//! follows slot moves and failovers itself. From a *client* (single node,
//! cluster or Sentinel) the limiter makes its own connection on the first
//! call and makes it again on the first call after the connection proved
//! unreachable, within that call's timeout. That is what lets a limiter
//! whose breaker probes a restarted Redis succeed on the very first probe:
//! no reconnect schedule of its own to wait out.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::error::ErrorClass;

/// The Redis a limiter decides on, over redis-rs. Cheap to clone (an
/// `Arc`); clones share one connection.
///
/// ```no_run
/// use floodwall_redis::RedisConnection;
///
/// # fn main() -> Result<(), redis::RedisError> {
/// // From a URL: user, password and database number included.
/// let redis = RedisConnection::open("redis://limiter:secret@10.0.0.5:6379/2")?;
/// // From a client the application already configured.
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let redis = RedisConnection::from(client);
/// // A cluster: any nodes; redis-rs finds the rest and follows failovers.
/// let cluster = redis::cluster::ClusterClient::new(vec!["redis://10.0.0.1:7000"])?;
/// let redis = RedisConnection::from(cluster);
/// # let _ = redis;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    source: Arc<Source>,
}

/// Where connections come from.
enum Source {
    /// One the application made; used as it is.
    Given(Conn),
    /// Made (and made again after it proves unreachable) from a client.
    Dialed(Box<Dialer>),
}

/// The connections redis-rs offers, behind one [`ConnectionLike`].
#[derive(Clone)]
pub(crate) enum Conn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A client and the connection made from it, if any.
struct Dialer {
    target: Target,
    /// The current connection and its generation (to drop only the one
    /// that failed, not a newer one).
    current: Mutex<Option<(u64, Conn)>>,
    /// Held while connecting, so that concurrent callers wait for one
    /// connection instead of opening one each.
    dialing: tokio::sync::Mutex<u64>,
}

// One per connection, made once: its size does not matter (without the
// `sentinel` feature the cluster client is the one large variant).
#[allow(clippy::large_enum_variant)]
enum Target {
    Node(redis::Client),
    Cluster(ClusterClient),
    #[cfg(feature = "sentinel")]
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

impl Target {
    async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Target::Node(client) => client
                .get_multiplexed_async_connection()
                .await
                .map(Conn::Multiplexed),
            Target::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
            #[cfg(feature = "sentinel")]
            Target::Sentinel(client) => client
                .lock()
                .await
                .get_async_connection()
                .await
                .map(Conn::Multiplexed),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Node(client) => format!("node {}", client.get_connection_info().addr()),
            Target::Cluster(_) => "cluster".to_owned(),
            #[cfg(feature = "sentinel")]
            Target::Sentinel(_) => "sentinel".to_owned(),
        }
    }
}

/// A connection lent for one call, and how to report that it failed.
pub(crate) struct Lent {
    pub(crate) conn: Conn,
    generation: Option<u64>,
}

impl RedisConnection {
    /// A connection to the Redis at `url`, made on the first call: see
    /// [`redis::Client::open`] for the URL forms (`redis://[user:pass@]host[:port][/db]`,
    /// `rediss://` with the `tls` feature, `redis+unix://`).
    ///
    /// # Errors
    /// The URL cannot be read, or names TLS without the `tls` feature.
    pub fn open(url: &str) -> RedisResult<Self> {
        redis::Client::open(url).map(Self::from)
    }

    /// The master the Sentinels at `sentinels` know as `master`, with
    /// `node` (credentials, database, TLS) for the connection to it. Found
    /// on the first call, and found again after it proves unreachable, so a
    /// Sentinel failover moves the limiter to the new master.
    ///
    /// # Errors
    /// As [`redis::sentinel::SentinelClient::build`].
    #[cfg(feature = "sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentinel")))]
    pub fn sentinel<T: redis::IntoConnectionInfo>(
        sentinels: Vec<T>,
        master: String,
        node: Option<redis::sentinel::SentinelNodeConnectionInfo>,
    ) -> RedisResult<Self> {
        let client = redis::sentinel::SentinelClient::build(
            sentinels,
            master,
            node,
            redis::sentinel::SentinelServerType::Master,
        )?;
        Ok(Self::dialed(Target::Sentinel(tokio::sync::Mutex::new(
            client,
        ))))
    }

    fn dialed(target: Target) -> Self {
        Self {
            source: Arc::new(Source::Dialed(Box::new(Dialer {
                target,
                current: Mutex::new(None),
                dialing: tokio::sync::Mutex::new(0),
            }))),
        }
    }

    fn given(conn: Conn) -> Self {
        Self {
            source: Arc::new(Source::Given(conn)),
        }
    }

    /// A connection for one call: the current one, or a new one when there
    /// is none (the caller bounds how long this may take).
    pub(crate) async fn lend(&self) -> RedisResult<Lent> {
        let dialer = match &*self.source {
            Source::Given(conn) => {
                return Ok(Lent {
                    conn: conn.clone(),
                    generation: None,
                });
            }
            Source::Dialed(dialer) => dialer,
        };
        if let Some((generation, conn)) = &*dialer.current.lock() {
            return Ok(Lent {
                conn: conn.clone(),
                generation: Some(*generation),
            });
        }
        let mut dialed = dialer.dialing.lock().await;
        // Someone else may have connected while this caller waited.
        if let Some((generation, conn)) = &*dialer.current.lock() {
            return Ok(Lent {
                conn: conn.clone(),
                generation: Some(*generation),
            });
        }
        let conn = dialer.target.connect().await?;
        *dialed += 1;
        let generation = *dialed;
        *dialer.current.lock() = Some((generation, conn.clone()));
        tracing::debug!(redis = %dialer.target.describe(), generation, "redis limiter connected");
        Ok(Lent {
            conn,
            generation: Some(generation),
        })
    }

    /// Reports how a call on `lent` failed: a connection that proved
    /// unreachable is dropped, and the next call makes a new one.
    pub(crate) fn failed(&self, lent: &Lent, class: ErrorClass) {
        let (Source::Dialed(dialer), Some(generation)) = (&*self.source, lent.generation) else {
            return;
        };
        if class != ErrorClass::Unreachable {
            return;
        }
        let mut current = dialer.current.lock();
        if matches!(&*current, Some((g, _)) if *g == generation) {
            *current = None;
        }
    }

    /// What kind of connection this is, for `Debug`.
    fn kind(&self) -> String {
        match &*self.source {
            Source::Given(Conn::Manager(_)) => "connection manager".to_owned(),
            Source::Given(Conn::Multiplexed(_)) => "multiplexed connection".to_owned(),
            Source::Given(Conn::Cluster(_)) => "cluster connection".to_owned(),
            Source::Dialed(dialer) => dialer.target.describe(),
        }
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisConnection")
            .field(&self.kind())
            .finish()
    }
}

impl From<redis::Client> for RedisConnection {
    /// Connects on the first call, and again after the connection proves
    /// unreachable.
    fn from(client: redis::Client) -> Self {
        Self::dialed(Target::Node(client))
    }
}

impl From<ClusterClient> for RedisConnection {
    /// Connects to the cluster on the first call, and again after every
    /// node proved unreachable; slot moves and failovers in between are
    /// redis-rs's to follow.
    fn from(client: ClusterClient) -> Self {
        Self::dialed(Target::Cluster(client))
    }
}

impl From<ConnectionManager> for RedisConnection {
    /// Used as it is: the manager reconnects by its own configuration.
    /// The limiter bounds every call by its timeout, so a manager with few
    /// reconnect retries and a short `max_delay` recovers soonest.
    fn from(conn: ConnectionManager) -> Self {
        Self::given(Conn::Manager(conn))
    }
}

impl From<MultiplexedConnection> for RedisConnection {
    /// Used as it is, and never replaced: prefer a `Client` or a
    /// `ConnectionManager`, which reconnect.
    fn from(conn: MultiplexedConnection) -> Self {
        Self::given(Conn::Multiplexed(conn))
    }
}

impl From<ClusterConnection> for RedisConnection {
    /// Used as it is: redis-rs follows slot moves and failovers.
    fn from(conn: ClusterConnection) -> Self {
        Self::given(Conn::Cluster(conn))
    }
}
