//! Metric names reported by the floodwall layers through the `metrics` facade.
//!
//! Every metric carries the label [`LABEL_NAME`] with the layer's configured
//! name, so several instances of one layer can be told apart. Names follow
//! `floodwall_<layer>_<what>`; counters end in `_total`.
//!
//! Layers register their metric handles when the layer is built, so install
//! your `metrics` recorder before building layers.

/// The label every floodwall metric carries: the layer instance's name.
pub const LABEL_NAME: &str = "name";

/// The label naming why a request was rejected or a key evicted.
pub const LABEL_REASON: &str = "reason";

/// Counter: requests the token bucket admitted.
pub const TOKEN_BUCKET_ADMITTED: &str = "floodwall_token_bucket_admitted_total";
/// Counter: requests the token bucket rejected (label `reason`:
/// `rate_limited`, `exceeds_burst`, `wait_too_long`).
pub const TOKEN_BUCKET_REJECTED: &str = "floodwall_token_bucket_rejected_total";
/// Counter: requests that waited for tokens in wait mode before being admitted.
pub const TOKEN_BUCKET_WAITED: &str = "floodwall_token_bucket_waited_total";
/// Gauge: keys currently tracked by a keyed token bucket.
pub const TOKEN_BUCKET_KEYS: &str = "floodwall_token_bucket_keys";
/// Counter: keys a keyed token bucket forgot (label `reason`: `idle` when the
/// key's bucket had refilled, which changes no decision; `capacity` when the
/// map was full and a key still in debt had to go).
pub const TOKEN_BUCKET_EVICTED: &str = "floodwall_token_bucket_evicted_total";

/// Counter: requests the leaky bucket admitted at once (meter, or a shaper
/// with an empty queue).
pub const LEAKY_BUCKET_ADMITTED: &str = "floodwall_leaky_bucket_admitted_total";
/// Counter: requests the leaky bucket refused (label `reason`:
/// `rate_limited` for a full meter, `wait_too_long` for a full shaper
/// queue, `exceeds_burst`).
pub const LEAKY_BUCKET_REJECTED: &str = "floodwall_leaky_bucket_rejected_total";
/// Counter: requests the shaper delayed to their start slot, then admitted.
pub const LEAKY_BUCKET_WAITED: &str = "floodwall_leaky_bucket_waited_total";
/// Gauge: keys currently tracked by a keyed leaky bucket.
pub const LEAKY_BUCKET_KEYS: &str = "floodwall_leaky_bucket_keys";
/// Counter: keys a keyed leaky bucket forgot (label `reason`: `idle`,
/// `capacity`).
pub const LEAKY_BUCKET_EVICTED: &str = "floodwall_leaky_bucket_evicted_total";

/// Counter: requests a sliding-window limiter admitted.
pub const SLIDING_WINDOW_ADMITTED: &str = "floodwall_sliding_window_admitted_total";
/// Counter: requests a sliding-window limiter refused (label `reason`:
/// `rate_limited`, `exceeds_burst`).
pub const SLIDING_WINDOW_REJECTED: &str = "floodwall_sliding_window_rejected_total";
/// Counter: never incremented by the sliding window, which does not wait;
/// named for symmetry with the other rate limiters.
pub const SLIDING_WINDOW_WAITED: &str = "floodwall_sliding_window_waited_total";
/// Gauge: keys currently tracked by a keyed sliding-window limiter.
pub const SLIDING_WINDOW_KEYS: &str = "floodwall_sliding_window_keys";
/// Counter: keys a keyed sliding-window limiter forgot (label `reason`:
/// `idle`, `capacity`).
pub const SLIDING_WINDOW_EVICTED: &str = "floodwall_sliding_window_evicted_total";

/// Label naming a request's criticality class.
pub const LABEL_CRITICALITY: &str = "criticality";

/// Counter: requests adaptive throttling dropped locally (label
/// `criticality`).
pub const THROTTLE_REJECTED: &str = "floodwall_throttle_rejected_total";
/// Counter: requests adaptive throttling let through to the backend.
pub const THROTTLE_ADMITTED: &str = "floodwall_throttle_admitted_total";
/// Gauge: the current local rejection probability (label `criticality`).
pub const THROTTLE_PROBABILITY: &str = "floodwall_throttle_probability";
/// Counter: retries the retry layer sent.
pub const RETRY_ATTEMPTS: &str = "floodwall_retry_attempts_total";
/// Counter: retries the retry layer wanted but the budget or a don't-retry
/// signal refused (label `reason`: `budget`, `attempts`, `do_not_retry`).
pub const RETRY_SKIPPED: &str = "floodwall_retry_skipped_total";
/// Gauge: the retry budget's tokens.
pub const RETRY_TOKENS: &str = "floodwall_retry_tokens";

/// Counter: calls a circuit breaker let through, by outcome (label
/// `outcome`: `success`, `failure`, `cancelled`).
pub const BREAKER_CALLS: &str = "floodwall_breaker_calls_total";
/// Counter: calls a circuit breaker refused (label `state`).
pub const BREAKER_REJECTED: &str = "floodwall_breaker_rejected_total";
/// Gauge: the breaker's state (0 closed, 1 open, 2 half-open, 3 forced
/// open, 4 disabled).
pub const BREAKER_STATE: &str = "floodwall_breaker_state";
/// Counter: state transitions (labels `from`, `to`).
pub const BREAKER_TRANSITIONS: &str = "floodwall_breaker_transitions_total";

/// Gauge: requests waiting in an admission queue.
pub const CODEL_QUEUE_LENGTH: &str = "floodwall_codel_queue_length";
/// Histogram: seconds each served request waited in the queue.
pub const CODEL_SOJOURN_SECONDS: &str = "floodwall_codel_sojourn_seconds";
/// Counter: requests dropped instead of served (label `reason`: `timeout`,
/// `codel`, `deadline`, `full`).
pub const CODEL_DROPPED: &str = "floodwall_codel_dropped_total";
/// Gauge: 1 while the queue serves newest first, else 0.
pub const CODEL_LIFO: &str = "floodwall_codel_lifo";

/// Counter: deadlines that ran out (label `phase`: `on_arrival`,
/// `in_flight`, `before_send`, `awaiting_response`).
pub const DEADLINE_EXCEEDED: &str = "floodwall_deadline_exceeded_total";
/// Histogram: seconds left on inbound requests' deadlines when they arrive
/// at the server layer.
pub const DEADLINE_INBOUND_SECONDS: &str = "floodwall_deadline_inbound_seconds";

/// Label naming a request's business priority (its value, `"0"`..`"255"`),
/// or its criticality class in criticality mode.
pub const LABEL_PRIORITY: &str = "priority";

/// Counter: requests priority admission let through (label `priority`).
pub const PRIORITY_ADMITTED: &str = "floodwall_priority_admitted_total";
/// Counter: requests priority admission refused (label `priority`).
pub const PRIORITY_DROPPED: &str = "floodwall_priority_dropped_total";
/// Gauge: the admission level as one number, `business * 128 + user`
/// (32767 admits everything).
pub const PRIORITY_LEVEL: &str = "floodwall_priority_level";
/// Gauge: the average queuing time, in seconds, of the last closed window.
pub const PRIORITY_QUEUING_SECONDS: &str = "floodwall_priority_queuing_seconds";
/// Counter: requests a collaborative client dropped locally because the
/// downstream's admission level would refuse them (label `priority`).
pub const PRIORITY_LOCAL_DROPPED: &str = "floodwall_priority_local_dropped_total";

/// Label naming who decided a distributed limiter's request: `redis`,
/// `lease`, `cached`, `fallback`, `fail_open` or `fail_closed`.
pub const LABEL_SOURCE: &str = "source";

/// Counter: requests the Redis limiter admitted (label `source`).
pub const REDIS_ADMITTED: &str = "floodwall_redis_admitted_total";
/// Counter: requests the Redis limiter refused (label `source`).
pub const REDIS_REJECTED: &str = "floodwall_redis_rejected_total";
/// Counter: limiter script calls that got an answer from Redis.
pub const REDIS_ROUND_TRIPS: &str = "floodwall_redis_round_trips_total";
/// Histogram: seconds per limiter round trip to Redis, answered or not.
pub const REDIS_ROUND_TRIP_SECONDS: &str = "floodwall_redis_round_trip_seconds";
/// Counter: limiter round trips that failed (label `reason`: `timeout`,
/// `io`, `server`, `protocol`, `busy`).
pub const REDIS_ERRORS: &str = "floodwall_redis_errors_total";
/// Gauge: 1 while the limiter decides without Redis (its breaker is not
/// closed), else 0.
pub const REDIS_FALLBACK: &str = "floodwall_redis_fallback";

/// Gauge: an adaptive concurrency limit's current limit (set when it changes).
pub const CONCURRENCY_LIMIT: &str = "floodwall_concurrency_limit";
/// Gauge: requests in flight under an adaptive concurrency limit (set when
/// its handle reads it: per-request updates would cost every request).
pub const CONCURRENCY_IN_FLIGHT: &str = "floodwall_concurrency_in_flight";
/// Counter: requests an adaptive concurrency limit refused.
pub const CONCURRENCY_REJECTED: &str = "floodwall_concurrency_rejected_total";
/// Counter: admitted requests by how they finished (label `outcome`:
/// `success`, `dropped`, `ignored`, `cancelled`).
pub const CONCURRENCY_CALLS: &str = "floodwall_concurrency_calls_total";
/// Gauge: the RTTs an adaptive concurrency limit steers by, in seconds
/// (label `estimate`: `baseline`, `latest`), refreshed when its handle reads
/// them.
pub const CONCURRENCY_RTT_SECONDS: &str = "floodwall_concurrency_rtt_seconds";
