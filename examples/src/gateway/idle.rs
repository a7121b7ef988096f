//! An idle timeout for a connection: the connection fails once neither
//! side has moved a byte for a while (a keep-alive connection a client
//! parks, a peer that stopped reading).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `io` that fails with `TimedOut` after `idle` without a byte read or
/// written. The gateway sets `idle` above every route timeout, so a request
/// whose answer is still being made is never cut by it.
///
/// A byte moved only notes the instant; the timer is not reset for it (a
/// reset re-files the timer: hundreds of instructions per request). When
/// the timer fires it is moved to `idle` after the last byte if that is
/// still ahead, and the connection fails only if it is not.
pub(crate) struct IdleTimeout<T> {
    io: T,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    /// The waker the timer holds, once polled: while it is the caller's
    /// and the timer has not fired, the timer need not be polled again.
    armed: Option<Waker>,
}

impl<T> IdleTimeout<T> {
    pub(crate) fn new(io: T, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            io,
            idle,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            armed: None,
        }
    }

    fn moved(&mut self) {
        self.last = Instant::now();
    }

    /// Whether the connection has been idle for `idle`; otherwise the timer
    /// is set to wake the caller when it might have been.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.timer.is_elapsed() && self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            return false;
        }
        loop {
            // Out of cooperative budget, `Sleep::poll` answers `Pending`
            // without filing the timer or keeping the waker: it is then not
            // armed, and is polled again next time.
            let budget = tokio::task::coop::has_budget_remaining();
            if self.timer.as_mut().poll(cx).is_pending() {
                if !budget {
                    self.armed = None;
                } else if !self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    self.armed = Some(cx.waker().clone());
                }
                return false;
            }
            let due = self.last + self.idle;
            if due <= Instant::now() {
                return true;
            }
            // A byte moved since the timer was set: idle only from then.
            self.timer.as_mut().reset(due);
            self.armed = None;
        }
    }

    /// What a write of the stream came to: bytes written note the
    /// activity, a write still pending past the idle time fails.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle")
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, written)
    }

    // Forwarded so that hyper sees a vectored stream (as the bare socket
    // is) and writes head and body with one `writev` instead of first
    // copying the body behind the head.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_fails_after_the_idle_time_and_traffic_defers_it() {
        let idle = Duration::from_secs(10);
        let (client, server) = tokio::io::duplex(64);
        let mut conn = IdleTimeout::new(server, idle);
        let mut client = client;
        let start = Instant::now();
        // Traffic every 6 s keeps it open past several idle times.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            conn.read_exact(&mut b).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // Then nothing: it fails 10 s after the last byte, not before.
        let last = Instant::now();
        let mut b = [0u8; 1];
        let err = conn.read(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(last.elapsed(), idle);
    }
}
