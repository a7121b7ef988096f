//! A Redis Cluster of throwaway servers, with replicas and failovers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::RedisServer;
use super::support::{admin, temp_dir, text, wait_until};

/// A Redis Cluster of `redis-server` children on loopback: `masters`
/// masters with the 16,384 slots split evenly between them, and
/// `replicas` replicas of each. Stopped (and its files removed) when
/// dropped.
#[derive(Debug)]
pub struct RedisCluster {
    /// Masters first (in slot order), then the replicas of master 0, of
    /// master 1, …
    nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// Starts `masters` cluster-enabled servers, assigns the slots, joins
    /// them, and waits until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    /// If a server does not start or the cluster is not ready within 20 s.
    pub fn start(masters: usize) -> Self {
        Self::with_replicas(masters, 0)
    }

    /// As [`start`](Self::start), with `replicas` replicas of every
    /// master, each in sync with its master before this returns.
    ///
    /// # Panics
    /// If a server does not start or the cluster is not ready within 30 s.
    pub fn with_replicas(masters: usize, replicas: usize) -> Self {
        assert!(masters >= 1, "a cluster needs at least one master");
        let dir = temp_dir("cluster");
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let dir_arg = dir.display().to_string();
                RedisServer::start_args(move |port| {
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        format!("nodes-{port}.conf"),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                        "--dir".into(),
                        dir_arg.clone(),
                    ]
                })
            })
            .collect();
        let mut cluster = Self { nodes, masters };
        cluster.nodes[0].dir = Some(dir);
        let per = 16384 / masters;
        for (i, node) in cluster.nodes[..masters].iter().enumerate() {
            let first = i * per;
            let last = if i + 1 == masters {
                16383
            } else {
                first + per - 1
            };
            let slots: Vec<String> = (first..=last).map(|s| s.to_string()).collect();
            let mut args = vec!["CLUSTER", "ADDSLOTS"];
            args.extend(slots.iter().map(String::as_str));
            node.command(&args).expect("CLUSTER ADDSLOTS");
        }
        let first = cluster.nodes[0].addr();
        for node in &cluster.nodes[1..] {
            let port = node.port.to_string();
            admin(first, None, &["CLUSTER", "MEET", "127.0.0.1", &port]).expect("CLUSTER MEET");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        // Every node must know every other before a replica can follow a
        // master by id.
        for node in &cluster.nodes {
            wait_until(deadline, "every node known", || {
                text(node.command(&["CLUSTER", "NODES"]))
                    .is_some_and(|nodes| nodes.lines().count() == cluster.nodes.len())
            });
        }
        for m in 0..masters {
            let id = text(cluster.nodes[m].command(&["CLUSTER", "MYID"])).expect("CLUSTER MYID");
            for r in 0..replicas {
                let replica = &cluster.nodes[masters + m * replicas + r];
                replica
                    .command(&["CLUSTER", "REPLICATE", id.trim()])
                    .expect("CLUSTER REPLICATE");
            }
        }
        for node in &cluster.nodes {
            wait_until(deadline, "cluster_state:ok", || {
                text(node.command(&["CLUSTER", "INFO"]))
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
        }
        for replica in &cluster.nodes[masters..] {
            wait_until(deadline, "replica in sync", || {
                text(replica.command(&["INFO", "replication"]))
                    .is_some_and(|info| info.contains("master_link_status:up"))
            });
        }
        cluster
    }

    /// The masters' addresses, in slot order (as started: a failover
    /// changes who is master, not this list).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes[..self.masters]
            .iter()
            .map(RedisServer::addr)
            .collect()
    }

    /// Every node's `redis://` URL, masters first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Keys stored on each master (`DBSIZE`), in [`addrs`](Self::addrs)
    /// order.
    ///
    /// # Panics
    /// If a node does not answer.
    pub fn keys_per_node(&self) -> Vec<i64> {
        self.nodes[..self.masters]
            .iter()
            .map(|n| match n.command(&["DBSIZE"]) {
                Ok(redis::Value::Int(n)) => n,
                other => panic!("DBSIZE: {other:?}"),
            })
            .collect()
    }

    /// Promotes the first replica of master `master` with `CLUSTER
    /// FAILOVER` (the coordinated, no-data-loss kind) and waits until it
    /// reports itself master and the old master follows it.
    ///
    /// # Panics
    /// Without replicas, or if the failover does not finish within 20 s.
    pub fn failover(&self, master: usize) {
        let replicas = (self.nodes.len() - self.masters) / self.masters;
        assert!(replicas > 0, "a failover needs a replica");
        let replica = &self.nodes[self.masters + master * replicas];
        replica
            .command(&["CLUSTER", "FAILOVER"])
            .expect("CLUSTER FAILOVER");
        let deadline = Instant::now() + Duration::from_secs(20);
        wait_until(deadline, "the replica promoted", || {
            text(replica.command(&["INFO", "replication"]))
                .is_some_and(|info| info.contains("role:master"))
        });
        let old = &self.nodes[master];
        wait_until(deadline, "the old master following", || {
            text(old.command(&["INFO", "replication"]))
                .is_some_and(|info| info.contains("role:slave"))
        });
    }
}
