//! Bandwidth caps (`--max-upload`, `--max-download`): one token bucket per
//! direction, shared by every substream of every connection, so that gossip,
//! state sync and the rest all obey the same cap. The buckets wrap the
//! connection's muxer, so each substream's reads and writes draw from them;
//! a throttled read leaves data in the muxer's window, and yamux's and QUIC's
//! flow control then slow the sender down.
//!
//! The caps count what the substreams carry (what libp2p's bandwidth metrics
//! count too); noise and muxer framing add a few percent on the wire.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::Duration,
};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox};
use tokio::time::{Instant, Sleep};

/// A token bucket of bytes, pure: time comes in as an argument.
#[derive(Debug)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: f64,
    /// The most bytes that may go at once after a quiet spell.
    capacity: f64,
    /// Available bytes; negative after a read or write that took more than was there.
    tokens: f64,
    last: Instant,
}

/// The least a throttled read or write waits for (unless asked for less):
/// waking for a handful of bytes at a time would cost more than it moves.
const MIN_GRANT: usize = 4096;

impl TokenBucket {
    /// A bucket of `rate` bytes per second, full at `now`; it holds at most
    /// 100 ms of traffic (16 KiB at least).
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let capacity = (rate / 10.0).max(16.0 * 1024.0);
        Self { rate, capacity, tokens: capacity, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = now;
    }

    /// How many of `want` bytes may move now (at least one), or how long to
    /// wait until some may. Takes nothing: [`TokenBucket::take`] does once they moved.
    pub fn available(&mut self, now: Instant, want: usize) -> Result<usize, Duration> {
        self.refill(now);
        let least = want.min(MIN_GRANT).min(self.capacity as usize).max(1) as f64;
        if self.tokens >= least {
            return Ok((self.tokens as usize).min(want).max(1));
        }
        Err(Duration::from_secs_f64((least - self.tokens) / self.rate))
    }

    /// Takes `bytes` that moved.
    pub fn take(&mut self, now: Instant, bytes: usize) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }
}

/// The upload and download caps a node applies, in bytes per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BandwidthLimits {
    pub upload: Option<u64>,
    pub download: Option<u64>,
}

impl BandwidthLimits {
    pub fn is_limited(&self) -> bool {
        self.upload.is_some() || self.download.is_some()
    }
}

/// The shared buckets of one node.
#[derive(Clone, Debug, Default)]
pub struct Limiter {
    up: Option<Arc<Mutex<TokenBucket>>>,
    down: Option<Arc<Mutex<TokenBucket>>>,
}

impl Limiter {
    pub fn new(limits: BandwidthLimits) -> Self {
        let bucket = |rate: u64| Arc::new(Mutex::new(TokenBucket::new(rate, Instant::now())));
        Self { up: limits.upload.map(bucket), down: limits.download.map(bucket) }
    }

    /// Wraps a connection's muxer so that its substreams draw from the buckets.
    pub fn wrap(&self, muxer: StreamMuxerBox) -> StreamMuxerBox {
        StreamMuxerBox::new(ThrottledMuxer { inner: muxer, limiter: self.clone() })
    }

    /// Wraps one stream.
    pub fn stream<S>(&self, inner: S) -> Throttled<S> {
        Throttled { inner, up: self.up.clone(), down: self.down.clone(), read_wait: None, write_wait: None }
    }
}

/// A muxer whose substreams are [`Throttled`].
struct ThrottledMuxer {
    inner: StreamMuxerBox,
    limiter: Limiter,
}

impl StreamMuxer for ThrottledMuxer {
    type Substream = Throttled<SubstreamBox>;
    type Error = io::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, io::Error>> {
        let stream = ready!(Pin::new(&mut self.inner).poll_inbound(cx))?;
        Poll::Ready(Ok(self.limiter.stream(stream)))
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, io::Error>> {
        let stream = ready!(Pin::new(&mut self.inner).poll_outbound(cx))?;
        Poll::Ready(Ok(self.limiter.stream(stream)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<StreamMuxerEvent, io::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// A stream whose reads and writes draw from shared token buckets.
pub struct Throttled<S> {
    inner: S,
    up: Option<Arc<Mutex<TokenBucket>>>,
    down: Option<Arc<Mutex<TokenBucket>>>,
    read_wait: Option<Pin<Box<Sleep>>>,
    write_wait: Option<Pin<Box<Sleep>>>,
}

/// How many of `want` bytes the bucket lets through now, waiting (registered
/// with `cx`) until it lets some.
fn poll_allowance(
    bucket: &Option<Arc<Mutex<TokenBucket>>>,
    wait: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<usize> {
    let Some(bucket) = bucket else { return Poll::Ready(want) };
    loop {
        if let Some(sleep) = wait {
            ready!(sleep.as_mut().poll(cx));
            *wait = None;
        }
        let now = Instant::now();
        match bucket.lock().expect("the bucket lock is never poisoned").available(now, want) {
            Ok(allowed) => return Poll::Ready(allowed),
            Err(delay) => *wait = Some(Box::pin(tokio::time::sleep_until(now + delay))),
        }
    }
}

fn take(bucket: &Option<Arc<Mutex<TokenBucket>>>, bytes: usize) {
    if let Some(bucket) = bucket {
        bucket.lock().expect("the bucket lock is never poisoned").take(Instant::now(), bytes);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let allowed = ready!(poll_allowance(&this.down, &mut this.read_wait, cx, buf.len()));
        let read = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf[..allowed]))?;
        take(&this.down, read);
        Poll::Ready(Ok(read))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        let this = &mut *self;
        let allowed = ready!(poll_allowance(&this.up, &mut this.write_wait, cx, buf.len()));
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]))?;
        take(&this.up, written);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_bucket_lets_its_rate_through_and_no_more() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(MIB, start);
        // Full at first: one burst of its capacity (100 ms of traffic).
        let burst = bucket.available(start, usize::MAX).unwrap();
        assert_eq!(burst as u64, MIB / 10);
        bucket.take(start, burst);
        // Empty: the next 4 KiB come after 4 KiB / rate.
        let wait = bucket.available(start, 64 * 1024).unwrap_err();
        let expected = Duration::from_secs_f64(4096.0 / MIB as f64);
        assert!(wait.abs_diff(expected) < Duration::from_micros(1), "{wait:?}");
        // Over ten simulated seconds of reads as fast as it allows, it lets
        // through its rate times the time, plus the first burst.
        let mut now = start;
        let mut moved = 0u64;
        while now < start + Duration::from_secs(10) {
            match bucket.available(now, 64 * 1024) {
                Ok(n) => {
                    bucket.take(now, n);
                    moved += n as u64;
                }
                Err(wait) => now += wait,
            }
        }
        let expected = 10 * MIB;
        assert!(moved.abs_diff(expected) <= 64 * 1024, "moved {moved} bytes in 10 s at 1 MiB/s");
    }

    #[test]
    fn a_write_beyond_the_tokens_is_a_debt_repaid_before_the_next() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100 * 1024, start);
        bucket.take(start, 200 * 1024);
        let wait = bucket.available(start, 1024).unwrap_err();
        // 16 KiB of capacity, 200 KiB taken: 184 KiB of debt plus 1 KiB at 100 KiB/s.
        assert_eq!(wait, Duration::from_secs_f64((184.0 + 1.0) / 100.0));
    }

    /// Copies `bytes` through a capped stream and returns how long it took.
    async fn timed_copy(limits: BandwidthLimits, bytes: usize) -> Duration {
        use super::tokio_util_compat::Compat;
        let (a, b) = tokio::io::duplex(64 * 1024);
        let limiter = Limiter::new(limits);
        let mut writer = limiter.stream(Compat::new(a));
        let mut reader = Compat::new(b);
        let start = Instant::now();
        let send = async move {
            writer.write_all(&vec![7u8; bytes]).await.unwrap();
            writer.close().await.unwrap();
        };
        let receive = async move {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.unwrap();
            got.len()
        };
        let (_, got) = tokio::join!(send, receive);
        assert_eq!(got, bytes);
        start.elapsed()
    }

    #[tokio::test]
    async fn a_capped_transfer_takes_at_least_its_size_over_the_rate() {
        // 1 MiB at 1 MiB/s: the bucket lets the first 100 ms through at once,
        // so no schedule can finish before 0.9 s (less 10 ms of rounding). The
        // uncapped copy is held to the same bound, which an in-memory pipe beats by far.
        let least = Duration::from_millis(890);
        let capped = timed_copy(BandwidthLimits { upload: Some(MIB), download: None }, MIB as usize).await;
        assert!(capped >= least, "1 MiB capped at 1 MiB/s took {capped:?}");
        let free = timed_copy(BandwidthLimits::default(), MIB as usize).await;
        assert!(free < least, "an uncapped copy waits for nothing, took {free:?}");
    }
}

/// Adapts tokio's I/O traits to futures' for the tests' in-memory pipes.
#[cfg(test)]
mod tokio_util_compat {
    use std::{
        io,
        pin::Pin,
        task::{Context, Poll},
    };

    pub struct Compat<T>(T);

    impl<T> Compat<T> {
        pub fn new(inner: T) -> Self {
            Self(inner)
        }
    }

    impl<T: tokio::io::AsyncRead + Unpin> futures::AsyncRead for Compat<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut buf = tokio::io::ReadBuf::new(buf);
            std::task::ready!(Pin::new(&mut self.0).poll_read(cx, &mut buf))?;
            Poll::Ready(Ok(buf.filled().len()))
        }
    }

    impl<T: tokio::io::AsyncWrite + Unpin> futures::AsyncWrite for Compat<T> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}
