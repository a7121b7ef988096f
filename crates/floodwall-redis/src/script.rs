//! The GCRA decision as one Lua script, run atomically inside Redis.

use std::sync::OnceLock;
use std::time::Duration;

use crate::client::{RedisClient, RedisError};
use crate::resp::Value;

/// The script. One key (`KEYS[1]`, the limit's theoretical arrival time in
/// microseconds of Redis's own clock), so it is safe on Redis Cluster: a
/// call touches exactly one slot.
///
/// Arguments: the emission interval `I` in microseconds (may be
/// fractional), the burst `b`, the tokens the request needs (`need`) and the
/// tokens the caller would like to take (`want ≥ need`, for a lease).
///
/// With `now` from `TIME`, `tat = max(TAT, now)` and
/// `available = ⌊(now + b·I − tat) / I⌋` (the tokens in the bucket), the
/// script grants `min(want, available)` if that is at least `need` and
/// moves the TAT by `granted·I`, else grants nothing and reports the wait
/// `tat + need·I − b·I − now`. This is the token bucket's GCRA step
/// (ITU-T I.371, as floodwall-token-bucket implements it) with `n = granted`. The key expires when its TAT passes:
/// from then on an absent key and a full bucket are the same thing.
///
/// Reply: `{granted, retry_after_us, available_after}`.
pub(crate) const GCRA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
local available = math.floor((now + burst * interval - tat) / interval + 1e-9)
if available < need then
  local wait = tat + need * interval - burst * interval - now
  return {0, math.ceil(wait), math.max(available, 0)}
end
local granted = math.min(want, available)
local new_tat = tat + granted * interval
local ttl = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(ttl, 1))
return {granted, 0, available - granted}
"#;

/// What the script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Tokens taken (0 when refused).
    pub(crate) granted: u32,
    /// When refused: how long until `need` tokens conform.
    pub(crate) retry_after: Duration,
    /// Tokens left in the global bucket after this decision.
    pub(crate) available: u64,
}

/// The loaded script: its SHA once Redis has told us, so that every call
/// after the first sends 40 bytes instead of the script.
#[derive(Debug, Default)]
pub(crate) struct Script {
    sha: OnceLock<[u8; 40]>,
}

impl Script {
    /// Runs the script for one key. Loads it first if this process has not
    /// yet, and again if Redis answers `NOSCRIPT` (restarted, flushed, or a
    /// cluster node that has not seen it): at most three round trips.
    pub(crate) async fn run(
        &self,
        client: &RedisClient,
        key: &[u8],
        args: &[&[u8]; 4],
    ) -> Result<Grant, RedisError> {
        let sha = match self.sha.get() {
            Some(sha) => *sha,
            None => self.load(client).await?,
        };
        let reply = evalsha(client, &sha, key, args).await?;
        let reply = match reply.error_code() {
            Some("NOSCRIPT") => {
                tracing::debug!("redis lost the limiter script; loading it again");
                let sha = self.load(client).await?;
                evalsha(client, &sha, key, args).await?
            }
            _ => reply,
        };
        parse(reply)
    }

    async fn load(&self, client: &RedisClient) -> Result<[u8; 40], RedisError> {
        match client
            .command(&[b"SCRIPT", b"LOAD", GCRA.as_bytes()])
            .await?
        {
            Value::Bulk(Some(sha)) if sha.len() == 40 => {
                let mut out = [0u8; 40];
                out.copy_from_slice(&sha);
                // Every load of the same text yields the same SHA.
                let _ = self.sha.set(out);
                Ok(out)
            }
            Value::Error(line) => Err(RedisError::Server(line)),
            other => Err(RedisError::UnexpectedReply(format!(
                "{other:?} to SCRIPT LOAD"
            ))),
        }
    }
}

async fn evalsha(
    client: &RedisClient,
    sha: &[u8; 40],
    key: &[u8],
    args: &[&[u8]; 4],
) -> Result<Value, RedisError> {
    client
        .command(&[
            b"EVALSHA", sha, b"1", key, args[0], args[1], args[2], args[3],
        ])
        .await
}

/// Reads the script's `{granted, retry_after_us, available}` reply.
pub(crate) fn parse(reply: Value) -> Result<Grant, RedisError> {
    let items = match reply {
        Value::Array(Some(items)) if items.len() == 3 => items,
        Value::Error(line) => return Err(RedisError::Server(line)),
        other => {
            return Err(RedisError::UnexpectedReply(format!(
                "{other:?} from the limiter script"
            )));
        }
    };
    let int = |v: &Value| match v {
        Value::Int(n) if *n >= 0 => Ok(*n as u64),
        other => Err(RedisError::UnexpectedReply(format!(
            "{other:?} in the limiter script's reply"
        ))),
    };
    Ok(Grant {
        granted: u32::try_from(int(&items[0])?).unwrap_or(u32::MAX),
        retry_after: Duration::from_micros(int(&items[1])?),
        available: int(&items[2])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_grant_and_a_refusal() {
        let ok = Value::Array(Some(vec![Value::Int(5), Value::Int(0), Value::Int(3)]));
        assert_eq!(
            parse(ok).unwrap(),
            Grant {
                granted: 5,
                retry_after: Duration::ZERO,
                available: 3
            }
        );
        let no = Value::Array(Some(vec![Value::Int(0), Value::Int(1500), Value::Int(0)]));
        assert_eq!(parse(no).unwrap().retry_after, Duration::from_micros(1500));
    }

    #[test]
    fn refuses_malformed_replies() {
        assert!(matches!(
            parse(Value::Error("ERR boom".into())),
            Err(RedisError::Server(_))
        ));
        assert!(parse(Value::Int(1)).is_err());
        assert!(
            parse(Value::Array(Some(vec![
                Value::Int(1),
                Value::Int(-1),
                Value::Int(0)
            ])))
            .is_err()
        );
        assert!(parse(Value::Array(Some(vec![Value::Int(1)]))).is_err());
    }
}
