//! Hedging against SPECS.md ("Hedging", gRPC A6), under virtual time:
//! the delay, non-fatal answers sending the next hedge at once, pushback
//! delaying and stopping hedges, the budget, the deadline in scope, the
//! don't-retry marker, the percentile delay, and cancellation.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floodwall_core::{BoxError, Deadline};
use floodwall_tail::{HedgeConfig, HedgeDelay, HedgeLayer};
use floodwall_throttle::{DoNotRetry, NO_RETRY_HEADER, RetryBudget, RetryHttp};
use parking_lot::Mutex;
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What one attempt does: answers after `after` with `answer`.
#[derive(Clone)]
struct Step {
    after: u64,
    answer: Answer,
}

#[derive(Clone)]
enum Answer {
    Ok(&'static str),
    /// A retryable failure (non-fatal under `RetryErrors`).
    Fail,
    /// A failure marked "do not retry" by a retry layer below.
    DoNotRetry,
    /// An HTTP answer with a status and headers.
    Http(u16, &'static [(&'static str, &'static str)]),
}

fn step(after: u64, answer: Answer) -> Step {
    Step { after, answer }
}

/// A scripted backend: attempt `i` plays `script[i]`; it notes when each
/// attempt started and how many are alive (not finished or dropped).
#[derive(Clone, Default)]
struct Backend {
    script: Arc<Mutex<VecDeque<Step>>>,
    starts: Arc<Mutex<Vec<Instant>>>,
    live: Arc<AtomicUsize>,
    t0: Arc<Mutex<Option<Instant>>>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let b = Self::default();
        b.script.lock().extend(steps);
        *b.t0.lock() = Some(Instant::now());
        b
    }

    /// When each attempt started, in ms since the backend was made.
    fn starts(&self) -> Vec<u64> {
        let t0 = self.t0.lock().unwrap();
        self.starts
            .lock()
            .iter()
            .map(|t| (*t - t0).as_millis() as u64)
            .collect()
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn service<Req: Send + 'static>(
        &self,
    ) -> impl Service<Req, Response = http::Response<&'static str>, Error = BoxError, Future: Send>
    + Clone
    + Send
    + 'static {
        let b = self.clone();
        service_fn(move |_: Req| {
            let b = b.clone();
            async move {
                let step = b
                    .script
                    .lock()
                    .pop_front()
                    .expect("an attempt beyond the script");
                b.starts.lock().push(Instant::now());
                b.live.fetch_add(1, Ordering::SeqCst);
                let _alive = Alive(b.live.clone());
                sleep(ms(step.after)).await;
                match step.answer {
                    Answer::Ok(body) => Ok(http::Response::new(body)),
                    Answer::Fail => Err(BoxError::from("connection reset")),
                    Answer::DoNotRetry => {
                        Err(Box::new(DoNotRetry::new("gave up below".into())) as BoxError)
                    }
                    Answer::Http(status, headers) => {
                        let mut res = http::Response::new("");
                        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        for (k, v) in headers {
                            res.headers_mut().insert(*k, v.parse().unwrap());
                        }
                        Ok(res)
                    }
                }
            }
        })
    }
}

fn fixed(delay: u64, max_attempts: u32) -> HedgeConfig {
    HedgeConfig {
        max_attempts,
        delay: HedgeDelay::Fixed(ms(delay)),
        ..HedgeConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_is_hedged_after_the_delay_and_the_first_good_answer_wins() {
    let backend = Backend::new([
        step(100, Answer::Ok("first")),
        step(10, Answer::Ok("hedge")),
    ]);
    let layer = HedgeLayer::new(fixed(20, 2)).unwrap();
    let svc = layer.layer(backend.service::<u32>());
    let start = Instant::now();
    let res = svc.oneshot(1).await.unwrap();
    assert_eq!(*res.body(), "hedge");
    assert_eq!(start.elapsed(), ms(30));
    assert_eq!(backend.starts(), [0, 20]);
    assert_eq!(backend.live(), 0, "the first attempt was cancelled");
}

#[tokio::test(start_paused = true)]
async fn an_answer_within_the_delay_sends_no_hedge() {
    let backend = Backend::new([step(19, Answer::Ok("first"))]);
    let svc = HedgeLayer::new(fixed(20, 5))
        .unwrap()
        .layer(backend.service::<u32>());
    assert_eq!(*svc.oneshot(1).await.unwrap().body(), "first");
    assert_eq!(backend.starts(), [0]);
}

#[tokio::test(start_paused = true)]
async fn hedges_go_out_one_delay_apart_up_to_max_attempts() {
    let backend = Backend::new([
        step(500, Answer::Ok("1")),
        step(500, Answer::Ok("2")),
        step(500, Answer::Ok("3")),
    ]);
    let svc = HedgeLayer::new(fixed(20, 3))
        .unwrap()
        .layer(backend.service::<u32>());
    let start = Instant::now();
    assert_eq!(*svc.oneshot(1).await.unwrap().body(), "1");
    assert_eq!(start.elapsed(), ms(500));
    assert_eq!(backend.starts(), [0, 20, 40], "3 attempts at most");
}

#[tokio::test(start_paused = true)]
async fn a_non_fatal_failure_sends_the_next_hedge_at_once() {
    let backend = Backend::new([step(5, Answer::Fail), step(10, Answer::Ok("second"))]);
    let svc = HedgeLayer::new(fixed(50, 3))
        .unwrap()
        .layer(backend.service::<u32>());
    let start = Instant::now();
    assert_eq!(*svc.oneshot(1).await.unwrap().body(), "second");
    assert_eq!(backend.starts(), [0, 5], "not at the 50 ms delay");
    assert_eq!(start.elapsed(), ms(15));
}

#[tokio::test(start_paused = true)]
async fn a_fatal_answer_commits_and_cancels_the_others() {
    // Under RetryHttp a 500 is fatal: returned at once, marked.
    let backend = Backend::new([
        step(100, Answer::Ok("first")),
        step(5, Answer::Http(500, &[])),
    ]);
    let layer = HedgeLayer::builder(fixed(20, 3))
        .policy(RetryHttp)
        .build()
        .unwrap();
    let svc = layer.layer(backend.service::<u32>());
    let start = Instant::now();
    let res = svc.oneshot(1).await.unwrap();
    assert_eq!(res.status(), 500);
    assert!(res.headers().contains_key(NO_RETRY_HEADER));
    assert_eq!(start.elapsed(), ms(25));
    assert_eq!(backend.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn pushback_delays_the_next_hedge() {
    let backend = Backend::new([
        step(5, Answer::Http(503, &[("grpc-retry-pushback-ms", "30")])),
        step(10, Answer::Ok("after pushback")),
    ]);
    let layer = HedgeLayer::builder(fixed(100, 3))
        .policy(RetryHttp)
        .build()
        .unwrap();
    let svc = layer.layer(backend.service::<u32>());
    assert_eq!(*svc.oneshot(1).await.unwrap().body(), "after pushback");
    assert_eq!(backend.starts(), [0, 35], "5 ms + 30 ms of pushback");
}

#[tokio::test(start_paused = true)]
async fn negative_pushback_stops_hedging() {
    let backend = Backend::new([step(
        5,
        Answer::Http(503, &[("grpc-retry-pushback-ms", "-1")]),
    )]);
    let layer = HedgeLayer::builder(fixed(20, 3))
        .policy(RetryHttp)
        .build()
        .unwrap();
    let svc = layer.layer(backend.service::<u32>());
    let start = Instant::now();
    let res = svc.oneshot(1).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        start.elapsed(),
        ms(5),
        "returned at once: no hedge will come"
    );
    assert_eq!(backend.starts(), [0]);
}

#[tokio::test(start_paused = true)]
async fn negative_pushback_lets_attempts_already_out_finish() {
    // The hedge (sent at 20 ms) says never at 25 ms; the first attempt still
    // runs and answers at 60 ms.
    let backend = Backend::new([
        step(60, Answer::Ok("first")),
        step(5, Answer::Http(503, &[("grpc-retry-pushback-ms", "-1")])),
    ]);
    let layer = HedgeLayer::builder(fixed(20, 5))
        .policy(RetryHttp)
        .build()
        .unwrap();
    let svc = layer.layer(backend.service::<u32>());
    assert_eq!(*svc.oneshot(1).await.unwrap().body(), "first");
    assert_eq!(backend.starts(), [0, 20], "no hedge after the pushback");
}

#[tokio::test(start_paused = true)]
async fn the_do_not_retry_marker_stops_hedging_and_propagates() {
    let backend = Backend::new([step(5, Answer::DoNotRetry)]);
    let svc = HedgeLayer::new(fixed(20, 3))
        .unwrap()
        .layer(backend.service::<u32>());
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is::<DoNotRetry>(), "{err}");
    assert_eq!(backend.starts(), [0]);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_failing_returns_the_last_failure_marked() {
    let backend = Backend::new([step(5, Answer::Fail), step(5, Answer::Fail)]);
    let svc = HedgeLayer::new(fixed(20, 2))
        .unwrap()
        .layer(backend.service::<u32>());
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is::<DoNotRetry>(), "marked for the layers above: {err}");
    assert_eq!(backend.starts(), [0, 5]);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_sends_no_hedge() {
    let budget = Arc::new(RetryBudget::new(10.0, 0.1).unwrap());
    for _ in 0..5 {
        budget.on_failure();
    }
    assert!(!budget.can_retry());
    let backend = Backend::new([step(100, Answer::Ok("first"))]);
    let layer = HedgeLayer::builder(fixed(20, 2))
        .budget(budget.clone())
        .build()
        .unwrap();
    let svc = layer.layer(backend.service::<u32>());
    let start = Instant::now();
    assert_eq!(*svc.oneshot(1).await.unwrap().body(), "first");
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(backend.starts(), [0]);
    assert_eq!(budget.tokens(), 5.1, "the success still refills");
}

/// The budget bounds hedges when every first attempt is slow: each timer
/// hedge takes a token, each success gives `token_ratio` back, and no
/// hedge goes out at or under half the tokens (A6). Counted exactly
/// against that model.
#[tokio::test(start_paused = true)]
async fn timer_hedges_take_a_token_so_the_budget_bounds_them() {
    let calls = 200;
    let mut steps = Vec::new();
    // The model, in milli-tokens: which calls hedge.
    let (mut tokens, max, ratio) = (10_000u64, 10_000u64, 100u64);
    let mut hedged = 0;
    for _ in 0..calls {
        if tokens * 2 > max {
            tokens -= 1_000;
            hedged += 1;
            // First attempt slow, the hedge fast and winning.
            steps.push(step(100, Answer::Ok("slow")));
            steps.push(step(10, Answer::Ok("hedge")));
        } else {
            steps.push(step(100, Answer::Ok("slow")));
        }
        tokens = (tokens + ratio).min(max);
    }
    let backend = Backend::new(steps);
    let layer = HedgeLayer::new(fixed(20, 2)).unwrap();
    let budget = layer.handle().budget().clone();
    let svc = layer.layer(backend.service::<u32>());
    for _ in 0..calls {
        svc.clone().oneshot(1).await.unwrap();
    }
    let attempts = backend.starts().len();
    assert_eq!(attempts - calls, hedged);
    // 6 from the budget's top half, then one per 10 calls.
    assert_eq!(hedged, 25);
    assert!((hedged as f64) <= 0.1 * calls as f64 + 5.0);
    assert_eq!((budget.tokens() * 1000.0).round() as u64, tokens);
}

#[tokio::test(start_paused = true)]
async fn hedges_and_retries_draw_from_one_budget() {
    let budget = Arc::new(RetryBudget::new(2.0, 0.1).unwrap());
    let retry = floodwall_throttle::RetryLayer::builder(floodwall_throttle::RetryConfig::default())
        .budget(budget.clone())
        .build()
        .unwrap();
    let hedge = HedgeLayer::builder(fixed(20, 2))
        .budget(budget.clone())
        .build()
        .unwrap();
    // A failure through the retry layer takes the token the hedge needs.
    let failing = service_fn(|_: u32| async { Err::<(), BoxError>("down".into()) });
    let _ = retry.layer(failing).oneshot(1).await;
    assert!(!budget.can_retry());
    let backend = Backend::new([step(100, Answer::Ok("first"))]);
    let svc = hedge.layer(backend.service::<u32>());
    svc.oneshot(1).await.unwrap();
    assert_eq!(
        backend.starts(),
        [0],
        "no hedge: the retry spent the budget"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_in_scope_leaves_no_time_for_a_hedge() {
    let backend = Backend::new([step(100, Answer::Ok("first"))]);
    let svc = HedgeLayer::new(fixed(20, 2))
        .unwrap()
        .layer(backend.service::<u32>());
    // 30 ms left at the call: at 20 ms only 10 remain, less than the delay.
    let deadline = Deadline::after(Instant::now(), ms(30));
    let res = floodwall_deadline::scope(deadline, svc.oneshot(1)).await;
    assert_eq!(*res.unwrap().body(), "first");
    assert_eq!(backend.starts(), [0]);
    // With 50 ms left, 30 remain at 20 ms: the hedge goes.
    let backend = Backend::new([step(100, Answer::Ok("first")), step(5, Answer::Ok("hedge"))]);
    let svc = HedgeLayer::new(fixed(20, 2))
        .unwrap()
        .layer(backend.service::<u32>());
    let deadline = Deadline::after(Instant::now(), ms(50));
    let res = floodwall_deadline::scope(deadline, svc.oneshot(1)).await;
    assert_eq!(*res.unwrap().body(), "hedge");
    assert_eq!(backend.starts(), [0, 20]);
}

#[tokio::test(start_paused = true)]
async fn the_percentile_delay_is_read_from_the_last_period() {
    let config = HedgeConfig {
        max_attempts: 2,
        delay: HedgeDelay::Percentile {
            percentile: 0.9,
            min_samples: 50,
            period: ms(1_000),
        },
        ..HedgeConfig::default()
    };
    let layer = HedgeLayer::new(config).unwrap();
    let handle = layer.handle();
    // 100 concurrent calls answering after 1..=100 ms: no hedge yet (no
    // full period).
    let backend = Backend::new((1..=100).map(|i| step(i, Answer::Ok("x"))));
    let svc = layer.layer(backend.service::<u32>());
    let calls: Vec<_> = (0..100)
        .map(|_| tokio::spawn(svc.clone().oneshot(1)))
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(backend.starts().len(), 100);
    assert_eq!(handle.delay(), None);
    sleep(ms(1_000)).await;
    // The 90th of 1..=100 ms is 90 ms; the histogram's bucket bound is
    // within 1/16 under it.
    let delay = handle.delay().unwrap();
    assert!(delay > ms(84) && delay <= ms(90), "{delay:?}");
    // A slow call is now hedged at that delay (the timer wakes on the
    // next whole millisecond).
    let backend = Backend::new([
        step(1_000, Answer::Ok("slow")),
        step(5, Answer::Ok("hedge")),
    ]);
    let svc = layer.layer(backend.service::<u32>());
    let start = Instant::now();
    assert_eq!(*svc.oneshot(1).await.unwrap().body(), "hedge");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= delay + ms(5) && elapsed <= delay + ms(6),
        "{elapsed:?} for {delay:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_cancels_every_attempt() {
    let backend = Backend::new([step(100, Answer::Ok("1")), step(100, Answer::Ok("2"))]);
    let svc = HedgeLayer::new(fixed(20, 2))
        .unwrap()
        .layer(backend.service::<u32>());
    let call = tokio::spawn(svc.oneshot(1));
    sleep(ms(30)).await;
    assert_eq!(backend.live(), 2);
    call.abort();
    let _ = call.await;
    assert_eq!(backend.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reconfigured_layer_plans_the_next_call_anew() {
    let layer = HedgeLayer::new(fixed(20, 2)).unwrap();
    let handle = layer.handle();
    assert!(
        handle.reconfigure(&fixed(20, 6)).is_err(),
        "A6 allows 5 at most"
    );
    assert_eq!(handle.config().0, 2, "a refused change changes nothing");
    handle.reconfigure(&fixed(50, 2)).unwrap();
    let backend = Backend::new([step(100, Answer::Ok("1")), step(5, Answer::Ok("2"))]);
    let svc = layer.layer(backend.service::<u32>());
    svc.oneshot(1).await.unwrap();
    assert_eq!(backend.starts(), [0, 50]);
}

#[test]
fn configs_out_of_range_are_refused_with_their_value() {
    for (config, field) in [
        (fixed(20, 1), "max_attempts"),
        (fixed(20, 6), "max_attempts"),
        (
            HedgeConfig {
                delay: HedgeDelay::Percentile {
                    percentile: 1.5,
                    min_samples: 1,
                    period: ms(1),
                },
                ..HedgeConfig::default()
            },
            "delay.percentile",
        ),
        (
            HedgeConfig {
                delay: HedgeDelay::Percentile {
                    percentile: 0.5,
                    min_samples: 1,
                    period: Duration::ZERO,
                },
                ..HedgeConfig::default()
            },
            "delay.period",
        ),
    ] {
        let err = HedgeLayer::new(config).unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[cfg(feature = "serde")]
#[test]
fn the_config_deserializes_with_human_durations() {
    let config: HedgeConfig = serde_json::from_str(
        r#"{ "max_attempts": 3, "delay": { "fixed": "15ms" }, "budget": { "max_tokens": 20, "token_ratio": 0.2 } }"#,
    )
    .unwrap();
    assert_eq!(config.delay, HedgeDelay::Fixed(ms(15)));
    assert_eq!(config.max_attempts, 3);
    let config: HedgeConfig = serde_json::from_str(
        r#"{ "delay": { "percentile": { "percentile": 0.95, "min_samples": 10, "period": "5s" } } }"#,
    )
    .unwrap();
    assert!(matches!(
        config.delay,
        HedgeDelay::Percentile {
            min_samples: 10,
            ..
        }
    ));
}
