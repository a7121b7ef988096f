//! The GCRA decision as one Lua script, run atomically inside Redis.

use std::time::Duration;

use redis::Value;

use crate::connection::{Lent, RedisConnection};
use crate::error::CallError;

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
/// The key holds `TAT:I:b` (the TAT and the quota it was made under, as
/// the arguments spelled them). A call under another quota first carries
/// the key over (SPECS.md, "Reconfiguration") at the change instant
/// `tc = now − ARGV[5]` (the microseconds since the caller's limiter was
/// reconfigured): with `a = min(b', max(0, b − (max(TAT, tc) − tc)/I))`
/// tokens available under the old quota then, `TAT' = tc + (b' − a)·I'`,
/// and from `tc` on the key refills at the new rate; a TAT beyond a full
/// bucket (which only leasing's batched grants can leave) keeps its
/// excess. A bare number (written before the quota was stored) is read
/// under the caller's quota.
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
local tc = now - (tonumber(ARGV[5]) or 0)
local tat = now
local raw = redis.call('GET', KEYS[1])
if raw then
  local s, oi, ob = string.match(raw, '^([^:]+):([^:]+):([^:]+)$')
  if s then
    tat = tonumber(s) or now
    if oi ~= ARGV[1] or ob ~= ARGV[2] then
      local old_i, old_b = tonumber(oi), tonumber(ob)
      local ahead = math.max(tat - tc, 0)
      local tol = old_b * old_i
      if ahead >= tol then
        tat = tc + (ahead - tol) + burst * interval
      else
        local a = math.min(burst, (tol - ahead) / old_i)
        tat = tc + (burst - a) * interval
      end
    end
  else
    tat = tonumber(raw) or now
  end
end
if tat < now then tat = now end
local available = math.floor((now + burst * interval - tat) / interval + 1e-9)
if available < need then
  local wait = tat + need * interval - burst * interval - now
  return {0, math.ceil(wait), math.max(available, 0)}
end
local granted = math.min(want, available)
local new_tat = tat + granted * interval
local ttl = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat) .. ':' .. ARGV[1] .. ':' .. ARGV[2], 'PX', math.max(ttl, 1))
return {granted, 0, available - granted}
"#;

/// What the script decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Tokens taken (0 when refused); never more than asked for.
    pub(crate) granted: u32,
    /// When refused: how long until `need` tokens conform.
    pub(crate) retry_after: Duration,
    /// Tokens left in the global bucket after this decision.
    pub(crate) available: u64,
}

/// The script, hashed once: redis-rs sends `EVALSHA` and, when Redis
/// answers `NOSCRIPT` (restarted, flushed, or a cluster node that has not
/// seen it), loads it and calls again.
#[derive(Debug)]
pub(crate) struct Script {
    script: redis::Script,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            script: redis::Script::new(GCRA),
        }
    }
}

/// The script's arguments, formatted once per limiter where they can be.
pub(crate) struct Args<'a> {
    pub(crate) key: &'a str,
    pub(crate) interval: &'a str,
    pub(crate) burst: &'a str,
    pub(crate) need: u32,
    pub(crate) want: u32,
    /// Microseconds since the limiter's quota last changed (0 if never).
    pub(crate) since_us: u64,
}

impl Script {
    /// Runs the script for one key on a connection of `redis`. A
    /// connection that proves unreachable is reported, so the next call
    /// makes a new one.
    pub(crate) async fn run(
        &self,
        redis: &RedisConnection,
        args: Args<'_>,
    ) -> Result<Grant, CallError> {
        let mut lent: Lent = redis.lend().await?;
        let reply = self
            .script
            .key(args.key)
            .arg(args.interval)
            .arg(args.burst)
            .arg(args.need)
            .arg(args.want)
            .arg(args.since_us)
            .invoke_async::<Value>(&mut lent.conn)
            .await;
        let result = reply
            .map_err(CallError::from)
            .and_then(|value| parse(value, args.want));
        if let Err(err) = &result {
            redis.failed(&lent, err.class);
        }
        result
    }
}

/// Reads the script's `{granted, retry_after_us, available}` reply;
/// `granted` is clamped to `want`, what was asked for, whatever the
/// script (or whatever answered in its place) says.
pub(crate) fn parse(reply: Value, want: u32) -> Result<Grant, CallError> {
    let items = match reply {
        Value::Array(items) if items.len() == 3 => items,
        other => {
            return Err(CallError::script(format!("{other:?}")));
        }
    };
    let int = |v: &Value| match v {
        Value::Int(n) if *n >= 0 => Ok(*n as u64),
        other => Err(CallError::script(format!("{other:?} in the reply"))),
    };
    let granted = int(&items[0])?;
    Ok(Grant {
        granted: u32::try_from(granted).unwrap_or(u32::MAX).min(want),
        retry_after: Duration::from_micros(int(&items[1])?),
        available: int(&items[2])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn parses_a_grant_and_a_refusal() {
        let ok = Value::Array(vec![Value::Int(5), Value::Int(0), Value::Int(3)]);
        assert_eq!(
            parse(ok, 5).unwrap(),
            Grant {
                granted: 5,
                retry_after: Duration::ZERO,
                available: 3
            }
        );
        let no = Value::Array(vec![Value::Int(0), Value::Int(1500), Value::Int(0)]);
        assert_eq!(
            parse(no, 1).unwrap().retry_after,
            Duration::from_micros(1500)
        );
    }

    #[test]
    fn clamps_granted_to_what_was_asked() {
        let more = Value::Array(vec![Value::Int(1_000_000), Value::Int(0), Value::Int(0)]);
        assert_eq!(parse(more, 10).unwrap().granted, 10);
        let huge = Value::Array(vec![Value::Int(i64::MAX), Value::Int(0), Value::Int(0)]);
        assert_eq!(parse(huge, 1).unwrap().granted, 1);
    }

    #[test]
    fn refuses_malformed_replies_as_script_errors() {
        let bad = [
            Value::Int(1),
            Value::Nil,
            Value::Array(vec![Value::Int(1), Value::Int(-1), Value::Int(0)]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![
                Value::BulkString(b"1".to_vec()),
                Value::Int(0),
                Value::Int(0),
            ]),
        ];
        for reply in bad {
            let err = parse(reply.clone(), 1).expect_err("malformed");
            assert_eq!(err.class, ErrorClass::Script, "{reply:?}");
        }
    }
}
