//! Following Redis Cluster's redirections.
//!
//! A limiter starts with one node (the client it was built with). When a
//! node answers `MOVED <slot> <addr>`, the slot's owner is remembered and
//! the call is repeated there; later calls for that slot go straight to
//! it. `ASK <slot> <addr>` (a slot being migrated) is followed once, with
//! `ASKING`, without remembering. Against a single Redis none of this
//! happens and every call goes to the one client.

use std::net::SocketAddr;

use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::client::{RedisClient, RedisError};
use crate::cluster::hash_slot;
use crate::script::{Grant, Script};

/// The most redirections one call follows.
const MAX_REDIRECTS: usize = 3;

/// The nodes a limiter talks to and which owns which slot.
#[derive(Debug)]
pub(crate) struct Router {
    seed: RedisClient,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<SocketAddr, RedisClient>,
    slots: HashMap<u16, SocketAddr>,
    redirects: u64,
}

/// A redirection found in an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Redirect {
    Moved(u16, SocketAddr),
    Ask(SocketAddr),
}

impl Router {
    pub(crate) fn new(seed: RedisClient) -> Self {
        Self {
            seed,
            state: Mutex::new(State::default()),
        }
    }

    /// The client calls start from.
    pub(crate) fn seed(&self) -> &RedisClient {
        &self.seed
    }

    /// Redirections followed so far.
    pub(crate) fn redirects(&self) -> u64 {
        self.state.lock().redirects
    }

    fn client_for(&self, slot: u16) -> RedisClient {
        let state = self.state.lock();
        state
            .slots
            .get(&slot)
            .and_then(|addr| state.nodes.get(addr))
            .unwrap_or(&self.seed)
            .clone()
    }

    /// The client for `addr`, opened (lazily) on first use.
    fn node(&self, addr: SocketAddr, learn: Option<u16>) -> RedisClient {
        let mut state = self.state.lock();
        state.redirects += 1;
        if let Some(slot) = learn {
            state.slots.insert(slot, addr);
        }
        if addr == self.seed.addr() {
            return self.seed.clone();
        }
        state
            .nodes
            .entry(addr)
            .or_insert_with(|| RedisClient::with_connect_timeout(addr, self.seed.connect_timeout()))
            .clone()
    }

    /// Runs the limiter script for `key` on the node that owns it.
    pub(crate) async fn run(
        &self,
        script: &Script,
        key: &[u8],
        args: &[&[u8]; 4],
    ) -> Result<Grant, RedisError> {
        let slot = hash_slot(key);
        let mut client = self.client_for(slot);
        let mut asking = false;
        for _ in 0..=MAX_REDIRECTS {
            let result = if asking {
                // ASKING and the script on one connection, in that order.
                let (_, result) =
                    tokio::join!(client.command(&[b"ASKING"]), script.run(&client, key, args));
                result
            } else {
                script.run(&client, key, args).await
            };
            let Err(RedisError::Server(line)) = &result else {
                return result;
            };
            let Some(redirect) = parse_redirect(line, client.addr()) else {
                return result;
            };
            match redirect {
                Redirect::Moved(slot, addr) => {
                    tracing::debug!(slot, %addr, "redis cluster slot moved");
                    client = self.node(addr, Some(slot));
                    asking = false;
                }
                Redirect::Ask(addr) => {
                    client = self.node(addr, None);
                    asking = true;
                }
            }
        }
        Err(RedisError::UnexpectedReply(format!(
            "more than {MAX_REDIRECTS} cluster redirections"
        )))
    }
}

/// Reads `MOVED <slot> <host>:<port>` or `ASK <slot> <host>:<port>`. An
/// empty host means the node that answered (Redis 7's unknown endpoint);
/// host names are not resolved (configure Cluster to announce IPs).
pub(crate) fn parse_redirect(line: &str, from: SocketAddr) -> Option<Redirect> {
    let mut parts = line.split(' ');
    let kind = parts.next()?;
    let slot: u16 = parts.next()?.parse().ok().filter(|s| *s < 16384)?;
    let endpoint = parts.next()?;
    let addr = match endpoint.strip_prefix(':') {
        Some(port) => SocketAddr::new(from.ip(), port.parse().ok()?),
        None => endpoint.parse().ok()?,
    };
    match kind {
        "MOVED" => Some(Redirect::Moved(slot, addr)),
        "ASK" => Some(Redirect::Ask(addr)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_moved_and_ask_redirections() {
        let from: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        assert_eq!(
            parse_redirect("MOVED 3999 127.0.0.1:6381", from),
            Some(Redirect::Moved(3999, "127.0.0.1:6381".parse().unwrap()))
        );
        assert_eq!(
            parse_redirect("ASK 12 [::1]:7002", from),
            Some(Redirect::Ask("[::1]:7002".parse().unwrap()))
        );
        assert_eq!(
            parse_redirect("MOVED 5 :7001", from),
            Some(Redirect::Moved(5, "10.0.0.1:7001".parse().unwrap()))
        );
        assert_eq!(parse_redirect("MOVED 16384 127.0.0.1:1", from), None);
        assert_eq!(parse_redirect("MOVED 1 redis-2.internal:6379", from), None);
        assert_eq!(parse_redirect("ERR something", from), None);
        assert_eq!(parse_redirect("NOSCRIPT No matching script", from), None);
    }
}
