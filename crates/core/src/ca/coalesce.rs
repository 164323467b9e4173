//! Sends what one connection writes between two polls of its task in one
//! system call.
//!
//! h2 writes a unary response in two flushes: its encoder holds a large DATA
//! frame by reference and must flush it before it takes the next frame, so
//! HEADERS and DATA go out in one write and the trailers in a second. Each
//! write costs a system call, a TCP segment the client must process, and
//! (quick_ack.rs) a setsockopt. Under TLS, this layer keeps what is written
//! and sends it at every second flush: the first flush after new bytes only
//! wakes the task and reports success, so the trailers h2 buffers next, in
//! the same poll, go out with the rest at its second flush. Bytes that no
//! second flush follows are sent when the woken task is polled again, one
//! turn of the scheduler later: h2 flushes on every poll of an open
//! connection, and drains through `poll_shutdown` when it closes.
//!
//! Returning `Pending` from the first flush instead (an honest yield) cost
//! the 10,000-request burst 10–20 MiB more memory: each response then waited
//! for its connection's task to come round again, behind every request
//! already queued. No more than [`MAX_BUFFERED`] bytes are ever held, and an
//! idle connection holds no buffer. What a deferred flush left is also sent
//! before the next read, which may find the client gone. One case is still
//! lost: an alert rustls writes after the handshake just before it reports a
//! broken record, since the connection is then dropped without a flush.
//!
//! Writes pass straight through until [`Coalesce::enable`], which the server
//! calls once the TLS handshake is done: a failed handshake writes its alert
//! and drops the stream without flushing, and the client must still get the
//! alert that says why it was refused.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The most bytes held before they are written out without waiting for a flush.
pub const MAX_BUFFERED: usize = 16 * 1024;

/// An I/O stream whose writes are coalesced up to each flush.
#[derive(Debug)]
pub struct Coalesce<T> {
    inner: T,
    /// Bytes accepted and not yet written; `buffer[sent..]` remains.
    buffer: Vec<u8>,
    sent: usize,
    /// The pending bytes have had their one deferred flush.
    deferred: bool,
    /// Whether writes are held at all (see the module's notes).
    enabled: bool,
}

impl<T> Coalesce<T> {
    /// Wraps a stream.
    pub fn new(inner: T) -> Self {
        Self { inner, buffer: Vec::new(), sent: 0, deferred: false, enabled: false }
    }

    /// Holds writes until the next flush from now on.
    pub fn enable(&mut self) {
        self.enabled = true;
    }

    fn pending(&self) -> usize {
        self.buffer.len().saturating_sub(self.sent)
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out everything held, then frees the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.buffer.get(self.sent..).filter(|rest| !rest.is_empty()) {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent = self.sent.saturating_add(n);
        }
        // Freed rather than kept: thousands of idle connections hold nothing.
        self.buffer = Vec::new();
        self.sent = 0;
        self.deferred = false;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes; `Ready(false)` when they are too many to hold at all.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        // What a partial write already sent is dropped before anything is added, so the buffer
        // itself, not only what it still has to send, stays within the bound.
        if self.sent > 0 {
            self.buffer.drain(..self.sent.min(self.buffer.len()));
            self.sent = 0;
        }
        if self.buffer.len().saturating_add(len) > MAX_BUFFERED {
            std::task::ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len <= MAX_BUFFERED))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if !self.enabled || !std::task::ready!(self.poll_room(cx, buf.len()))? {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        self.buffer.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().fold(0usize, |sum, b| sum.saturating_add(b.len()));
        if !self.enabled || !std::task::ready!(self.poll_room(cx, len))? {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        self.buffer.reserve(len);
        for b in bufs {
            self.buffer.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        self.enabled || self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending() > 0 {
            if !self.deferred {
                // The wake guarantees the poll in which these bytes go out.
                self.deferred = true;
                cx.waker().wake_by_ref();
                return Poll::Ready(Ok(()));
            }
            std::task::ready!(self.poll_drain(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // The poll after a deferred flush reads before it flushes; if that read ends the
        // connection (a client that half-closed), what was deferred would be dropped unsent.
        if self.deferred && self.pending() > 0 {
            let _ = self.poll_drain(cx);
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Connected> Connected for Coalesce<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Records each write it is given.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
        /// The most bytes one write takes.
        limit: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = self.limit.map_or(buf.len(), |l| l.min(buf.len()));
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn enabled(inner: Recorder) -> Coalesce<Recorder> {
        let mut c = Coalesce::new(inner);
        c.enable();
        c
    }

    fn write(c: &mut Coalesce<Recorder>, cx: &mut Context<'_>, bytes: &[u8]) {
        assert_eq!(Pin::new(c).poll_write(cx, bytes).map(|r| r.unwrap()), Poll::Ready(bytes.len()));
    }

    fn flush(c: &mut Coalesce<Recorder>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(c).poll_flush(cx).map(|r| r.unwrap())
    }

    #[test]
    fn the_writes_of_two_flushes_before_the_next_poll_go_out_as_one() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = enabled(Recorder::default());
        write(&mut c, &mut cx, b"headers+data");
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()), "the first flush is deferred");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "and wakes the task, so that another flush comes");
        assert!(c.inner.writes.is_empty());
        assert_eq!(c.inner.flushes, 0);
        write(&mut c, &mut cx, b"trailers");
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.inner.writes, vec![b"headers+datatrailers".to_vec()]);
        assert_eq!(c.inner.flushes, 1);
        // Nothing held: a flush passes straight through, without deferring.
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.inner.flushes, 2);
        assert_eq!(c.buffer.capacity(), 0, "an idle connection holds no buffer");
        // The next bytes are deferred once again, and the task woken again.
        write(&mut c, &mut cx, b"next");
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.inner.writes.len(), 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()));
        assert_eq!(c.inner.writes.len(), 2);
    }

    #[test]
    fn vectored_writes_are_kept_in_order() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut c = enabled(Recorder::default());
        let slices = [io::IoSlice::new(b"ab"), io::IoSlice::new(b""), io::IoSlice::new(b"cd")];
        assert!(c.is_write_vectored());
        assert_eq!(Pin::new(&mut c).poll_write_vectored(&mut cx, &slices).map(|r| r.unwrap()), Poll::Ready(4));
        write(&mut c, &mut cx, b"e");
        assert!(flush(&mut c, &mut cx).is_ready());
        assert!(c.inner.writes.is_empty());
        assert!(flush(&mut c, &mut cx).is_ready());
        assert_eq!(c.inner.writes, vec![b"abcde".to_vec()]);
    }

    #[test]
    fn no_more_than_the_bound_is_held_and_partial_writes_resume() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut c = enabled(Recorder { limit: Some(10_000), ..Recorder::default() });
        let chunk = vec![7u8; MAX_BUFFERED / 8 * 5];
        write(&mut c, &mut cx, &chunk);
        assert!(c.inner.writes.is_empty());
        // The second chunk would pass the bound: what is held goes out first, in several writes.
        write(&mut c, &mut cx, &chunk);
        assert_eq!(c.inner.writes.iter().map(Vec::len).sum::<usize>(), chunk.len());
        assert!(c.pending() <= MAX_BUFFERED);
        // A write larger than the bound is not held at all.
        let huge = vec![1u8; MAX_BUFFERED + 1];
        let before = c.inner.writes.iter().map(Vec::len).sum::<usize>();
        assert_eq!(Pin::new(&mut c).poll_write(&mut cx, &huge).map(|r| r.unwrap()), Poll::Ready(10_000));
        assert_eq!(c.inner.writes.iter().map(Vec::len).sum::<usize>(), before + chunk.len() + 10_000);
        assert_eq!(c.pending(), 0);
    }

    /// A socket that takes part of a write and then pushes back: what was sent is dropped from
    /// the buffer before more is added, so the buffer never grows past the bound.
    #[test]
    fn a_socket_that_pushes_back_never_lets_the_buffer_grow_past_the_bound() {
        struct Slow {
            taken: usize,
            turn: usize,
        }
        impl AsyncWrite for Slow {
            fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                self.turn += 1;
                if self.turn.is_multiple_of(2) {
                    return Poll::Pending;
                }
                let n = buf.len().min(6000);
                self.taken += n;
                Poll::Ready(Ok(n))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut c = Coalesce::new(Slow { taken: 0, turn: 0 });
        c.enable();
        let chunk = vec![3u8; 5000];
        let mut accepted = 0;
        for _ in 0..200 {
            if let Poll::Ready(Ok(n)) = Pin::new(&mut c).poll_write(&mut cx, &chunk) {
                accepted += n;
            }
            let _ = Pin::new(&mut c).poll_flush(&mut cx);
            assert!(c.buffer.len() <= MAX_BUFFERED, "buffer {} bytes", c.buffer.len());
        }
        assert_eq!(accepted, c.inner.taken + c.pending(), "nothing lost, nothing sent twice");
    }

    /// What a deferred flush left is written before the next read, which may be the last.
    #[test]
    fn a_read_sends_what_a_deferred_flush_left() {
        struct Both(Recorder);
        impl AsyncWrite for Both {
            fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.0).poll_write(cx, buf)
            }
            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_flush(cx)
            }
            fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_shutdown(cx)
            }
        }
        impl AsyncRead for Both {
            fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                // End of stream: the client is gone.
                Poll::Ready(Ok(()))
            }
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut c = Coalesce::new(Both(Recorder::default()));
        c.enable();
        assert!(Pin::new(&mut c).poll_write(&mut cx, b"last response").is_ready());
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert!(c.inner.0.writes.is_empty(), "deferred");
        let mut space = [0u8; 8];
        let mut read = ReadBuf::new(&mut space);
        assert!(Pin::new(&mut c).poll_read(&mut cx, &mut read).is_ready());
        assert_eq!(c.inner.0.writes, vec![b"last response".to_vec()]);
    }

    #[test]
    fn writes_pass_straight_through_until_enabled() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut c = Coalesce::new(Recorder::default());
        // A handshake's alert, written and never flushed, still reaches the peer.
        write(&mut c, &mut cx, b"alert");
        assert_eq!(c.inner.writes, vec![b"alert".to_vec()]);
        assert!(!c.is_write_vectored(), "as the inner stream until enabled");
        assert_eq!(flush(&mut c, &mut cx), Poll::Ready(()), "nothing deferred");
        c.enable();
        write(&mut c, &mut cx, b"held");
        assert_eq!(c.inner.writes.len(), 1);
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held_first() {
        let mut c = enabled(Recorder::default());
        poll_fn(|cx| Pin::new(&mut c).poll_write(cx, b"goaway")).await.unwrap();
        poll_fn(|cx| Pin::new(&mut c).poll_shutdown(cx)).await.unwrap();
        assert_eq!(c.inner.writes, vec![b"goaway".to_vec()]);
        assert!(c.inner.shut);
    }

    /// A task that flushes once and then waits (as h2 does when it has nothing more to write) is
    /// woken, and its next poll's flush sends the bytes.
    #[tokio::test]
    async fn bytes_no_second_flush_follows_go_out_on_the_next_poll() {
        let mut c = enabled(Recorder::default());
        let mut polls = 0;
        poll_fn(|cx| {
            polls += 1;
            if polls == 1 {
                assert!(Pin::new(&mut c).poll_write(cx, b"ping ack").is_ready());
            }
            assert!(Pin::new(&mut c).poll_flush(cx).is_ready());
            if c.inner.writes.is_empty() { Poll::Pending } else { Poll::Ready(()) }
        })
        .await;
        assert_eq!(polls, 2, "woken once, without anything else waking it");
        assert_eq!(c.inner.writes, vec![b"ping ack".to_vec()]);
    }
}
