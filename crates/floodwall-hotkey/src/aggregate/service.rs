//! The Tower half of write aggregation: the [`Aggregate`] service an
//! [`AggregateLayer`] builds, which takes each update into its key's
//! batch, and the task that gathers a batch and writes it.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use floodwall_core::{BoxError, RejectKind, Rejected};
use tokio::sync::{oneshot, watch};
use tower_layer::Layer;
use tower_service::Service;

use super::{AggregateError, AggregateFull, AggregateLayer, Batch, Merge, Shared, Sum, Update};

impl<S, K, D, R, M> Layer<S> for AggregateLayer<K, D, R, M> {
    type Service = Aggregate<S, K, D, R, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Aggregate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service an [`AggregateLayer`] builds.
pub struct Aggregate<S, K, D, R, M = Sum> {
    inner: S,
    shared: Arc<Shared<K, D, R, M>>,
}

impl<S: Clone, K, D, R, M> Clone for Aggregate<S, K, D, R, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, K, D, R, M> fmt::Debug for Aggregate<S, K, D, R, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregate")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

/// The response future of [`Aggregate`].
pub type AggregateFuture<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

impl<S, K, D, R, M> Service<Update<K, D>> for Aggregate<S, K, D, R, M>
where
    S: Service<Update<K, D>, Response = R> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    D: Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
    M: Merge<D>,
{
    type Response = R;
    type Error = BoxError;
    type Future = AggregateFuture<R>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Updates are taken into batches, not sent: the downstream's
        // readiness is awaited by each write.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, update: Update<K, D>) -> Self::Future {
        let shared = &self.shared;
        let mut batches = shared.batches.lock();
        let rx = if let Some(batch) = batches.get_mut(&update.key) {
            let held = batch.delta.take().expect("a gathering batch holds a delta");
            batch.delta = Some(shared.merge.merge(held, update.delta));
            batch.updates += 1;
            let rx = batch.landed.subscribe();
            if batch.updates >= shared.config.max_batch as u64
                && let Some(now) = batch.now.take()
            {
                let _ = now.send(());
            }
            rx
        } else if batches.len() >= shared.config.max_keys {
            drop(batches);
            shared.requests.rejected(RejectKind::Overloaded);
            let max_keys = shared.config.max_keys;
            return Box::pin(async move { Err(Rejected::boxed(AggregateFull { max_keys })) });
        } else {
            let (landed, rx) = watch::channel(None);
            let (now, write_now) = oneshot::channel();
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let key = update.key.clone();
            batches.insert(
                update.key,
                Batch {
                    delta: Some(update.delta),
                    updates: 1,
                    landed,
                    now: Some(now),
                    id,
                },
            );
            tokio::spawn(gather_and_write(
                self.inner.clone(),
                shared.clone(),
                key,
                id,
                write_now,
            ));
            rx
        };
        drop(batches);
        shared.requests.admitted();
        Box::pin(async move {
            let mut rx = rx;
            match rx.wait_for(Option::is_some).await {
                Ok(landed) => match landed.clone().expect("waited for it") {
                    Ok(response) => Ok(response),
                    Err(error) => Err(BoxError::from(error)),
                },
                // The write's task ended without an answer (the runtime is
                // shutting down).
                Err(_) => Err(BoxError::from("the aggregated write was abandoned")),
            }
        })
    }
}

/// A batch's life after its first update: gathers until its window ends
/// (or it is told to write now), then writes the merged update and tells
/// every caller in it.
async fn gather_and_write<S, K, D, R, M>(
    mut svc: S,
    shared: Arc<Shared<K, D, R, M>>,
    key: K,
    id: u64,
    write_now: oneshot::Receiver<()>,
) where
    S: Service<Update<K, D>, Response = R>,
    S::Error: Into<BoxError>,
    K: Hash + Eq,
    R: Clone,
{
    tokio::select! {
        () = tokio::time::sleep(shared.config.window) => {}
        _ = write_now => {}
    }
    let batch = {
        let mut batches = shared.batches.lock();
        match batches.get(&key) {
            Some(b) if b.id == id => {
                // Counted as writing before it stops gathering: a flush
                // never sees it in neither.
                shared.writing.fetch_add(1, Ordering::AcqRel);
                batches.remove(&key)
            }
            _ => None,
        }
    };
    let Some(batch) = batch else {
        return;
    };
    shared.merged.increment(batch.updates);
    let update = Update {
        key,
        delta: batch.delta.expect("a gathering batch holds a delta"),
    };
    let result = async {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        svc.call(update).await.map_err(Into::into)
    }
    .await;
    match &result {
        Ok(_) => shared.writes_ok.increment(1),
        Err(e) => {
            shared.writes_failed.increment(1);
            tracing::warn!(name = %shared.name, error = %e, "an aggregated write failed");
        }
    }
    batch
        .landed
        .send_replace(Some(result.map_err(|e| AggregateError(Arc::from(e)))));
    shared.writing.fetch_sub(1, Ordering::AcqRel);
}
