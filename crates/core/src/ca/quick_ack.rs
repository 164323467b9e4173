//! Acknowledges a client's segments at once instead of delaying the ACK.
//!
//! Istio's CA clients keep Nagle's algorithm on: a small write waits until
//! every earlier segment is acknowledged. When a client's last segment needs
//! no answer (an HTTP/2 WINDOW_UPDATE, a PING ACK, a late END_STREAM), the
//! server's kernel delays its ACK by up to 40 ms, and the client's next
//! request waits that long behind it. Linux's TCP_QUICKACK switches the
//! delay off and sends an ACK the kernel is holding back at once; the kernel
//! switches the delay back on as the connection turns interactive, so it is
//! set again after each read: whatever the client sent is acknowledged as
//! soon as meshroot has read it. Not after writes too: the read that follows
//! any segment the client sends is what matters, and the second system call
//! per request cost throughput (docs/performance.md). Elsewhere this is a
//! plain TCP stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TCP stream that keeps TCP_QUICKACK on.
#[derive(Debug)]
pub struct QuickAck {
    stream: TcpStream,
}

impl QuickAck {
    /// Wraps an accepted connection and switches delayed ACKs off.
    pub fn new(stream: TcpStream) -> Self {
        let quick = Self { stream };
        quick.rearm();
        quick
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn rearm(&self) {
        // Best effort: a failure only brings back the delayed ACK.
        let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn rearm(&self) {}
}

impl AsyncRead for QuickAck {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if polled.is_ready() {
            self.rearm();
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for QuickAck {
    // The same connect info as a bare TcpStream, so the peer address (rate
    // limits, audit) and the client certificates are found as before.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn quickack(stream: &QuickAck) -> bool {
        socket2::SockRef::from(&stream.stream).tcp_quickack().unwrap()
    }

    fn clear(stream: &QuickAck) {
        socket2::SockRef::from(&stream.stream).set_tcp_quickack(false).unwrap();
    }

    #[tokio::test]
    async fn quickack_is_on_from_the_start_and_again_after_each_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut server = QuickAck::new(listener.accept().await.unwrap().0);
        assert!(quickack(&server), "on when accepted");

        clear(&server);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert!(quickack(&server), "on again after a read");

        // A write leaves the setting alone (one system call fewer per response).
        clear(&server);
        server.write_all(b"pong").await.unwrap();
        assert!(!quickack(&server), "a write makes no setsockopt");
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(server.connect_info().remote_addr, Some(client.local_addr().unwrap()));
    }
}
