//! Answers a unary call once its one message has arrived, not at END_STREAM.
//!
//! tonic's unary handling reads the request message, then waits for the end
//! of the request body before calling the handler. Some Istio CA clients
//! (ztunnel's) leave Nagle's algorithm on and send the message and the empty
//! END_STREAM DATA frame in two writes: the second waits for the ACK of the
//! first, which a delayed-ACK server sends only after about 40 ms. gRPC-Go
//! (istiod's CA) answers as soon as the message is complete, and its
//! response carries the ACK. This wrapper does the same: once the body has
//! delivered exactly one whole length-prefixed message, it reports the end
//! of the body, so the handler runs at once. When the response is complete
//! and the client has not yet ended its half, h2 resets the stream with
//! NO_ERROR, as RFC 9113 §8.1 provides and as gRPC-Go does.
//!
//! Anything but one whole message ending exactly at a DATA frame's end (a
//! second message, trailers, a message split oddly) is passed through
//! untouched, so tonic's own checks see it as before.

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::server::NamedService;

/// gRPC's message prefix: one flag byte, then a big-endian u32 length.
const PREFIX_BYTES: usize = 5;

/// Where the request body stands, as far as the first message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Reading the 5-byte prefix; `have` bytes of it so far.
    Prefix { prefix: [u8; PREFIX_BYTES], have: usize },
    /// Reading the message; this many bytes of it are still to come.
    Message { remaining: u64 },
    /// The one message is complete: the body ends here.
    Complete,
    /// Not a lone message: pass everything through to the real end.
    PassThrough,
}

impl Progress {
    fn start() -> Self {
        Progress::Prefix { prefix: [0; PREFIX_BYTES], have: 0 }
    }

    /// Accounts for one DATA frame.
    fn advance(self, mut data: &[u8]) -> Self {
        let mut progress = self;
        loop {
            progress = match progress {
                Progress::Prefix { mut prefix, mut have } => {
                    while have < PREFIX_BYTES {
                        let Some((&byte, rest)) = data.split_first() else {
                            return Progress::Prefix { prefix, have };
                        };
                        if let Some(slot) = prefix.get_mut(have) {
                            *slot = byte;
                        }
                        have = have.saturating_add(1);
                        data = rest;
                    }
                    let [_compressed, a, b, c, d] = prefix;
                    Progress::Message { remaining: u64::from(u32::from_be_bytes([a, b, c, d])) }
                }
                Progress::Message { remaining } => {
                    let len = data.len() as u64;
                    return match len.cmp(&remaining) {
                        std::cmp::Ordering::Less => Progress::Message { remaining: remaining.saturating_sub(len) },
                        std::cmp::Ordering::Equal => Progress::Complete,
                        // More after the message in the same frame.
                        std::cmp::Ordering::Greater => Progress::PassThrough,
                    };
                }
                // Data after the end we reported is not read; PassThrough stays.
                done @ (Progress::Complete | Progress::PassThrough) => return done,
            };
            if data.is_empty() {
                // A prefix announcing an empty message ends it at once.
                return match progress {
                    Progress::Message { remaining: 0 } => Progress::Complete,
                    other => other,
                };
            }
        }
    }
}

/// A request body that ends once its one gRPC message has arrived.
#[derive(Debug)]
pub struct UnaryRequestBody {
    inner: Body,
    progress: Progress,
}

impl UnaryRequestBody {
    /// Wraps a request body.
    pub fn new(inner: Body) -> Self {
        Self { inner, progress: Progress::start() }
    }
}

impl HttpBody for UnaryRequestBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.progress == Progress::Complete {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.progress = match frame.data_ref() {
                Some(data) => self.progress.advance(data.chunk()),
                None => Progress::PassThrough,
            };
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.progress == Progress::Complete || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.progress == Progress::Complete { SizeHint::with_exact(0) } else { self.inner.size_hint() }
    }
}

/// Wraps a unary gRPC service so that each request's body is a
/// [`UnaryRequestBody`]. Use it only for services whose every method is
/// unary: a streaming method would see its request end after one message.
#[derive(Debug, Clone)]
pub struct AnswerOnMessage<S> {
    inner: S,
}

impl<S> AnswerOnMessage<S> {
    /// Wraps a unary service.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for AnswerOnMessage<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for AnswerOnMessage<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.inner.call(request.map(|body| Body::new(UnaryRequestBody::new(body))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn after(frames: &[&[u8]]) -> Progress {
        frames.iter().fold(Progress::start(), |p, f| p.advance(f))
    }

    #[test]
    fn one_whole_message_completes_however_it_is_split() {
        let whole = prefixed(b"csr bytes");
        assert_eq!(after(&[&whole]), Progress::Complete);
        for cut in 1..whole.len() {
            let (a, b) = whole.split_at(cut);
            assert_eq!(
                after(&[a]),
                if cut < PREFIX_BYTES {
                    Progress::Prefix {
                        prefix: {
                            let mut p = [0; 5];
                            p[..cut].copy_from_slice(a);
                            p
                        },
                        have: cut,
                    }
                } else {
                    Progress::Message { remaining: (whole.len() - cut) as u64 }
                },
                "cut at {cut}"
            );
            assert_eq!(after(&[a, b]), Progress::Complete, "cut at {cut}");
        }
        // An empty frame changes nothing; an empty message completes with its prefix.
        assert_eq!(after(&[&whole[..3], b"", &whole[3..]]), Progress::Complete);
        assert_eq!(after(&[&prefixed(b"")]), Progress::Complete);
    }

    #[test]
    fn anything_but_one_message_passes_through() {
        let mut two = prefixed(b"first");
        two.extend(prefixed(b"second"));
        assert_eq!(after(&[&two]), Progress::PassThrough);
        // A byte beyond the message in the same frame.
        let mut extra = prefixed(b"first");
        extra.push(0);
        assert_eq!(after(&[&extra]), Progress::PassThrough);
        // Once decided, later frames change nothing.
        assert_eq!(after(&[&extra, &prefixed(b"x")]), Progress::PassThrough);
        assert_eq!(after(&[&prefixed(b"x"), b"more"]), Progress::Complete);
    }

    #[test]
    fn a_large_announced_length_waits_for_its_bytes() {
        let announced = [0, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(after(&[&announced]), Progress::Message { remaining: u64::from(u32::MAX) });
        assert_eq!(after(&[&announced, &[0; 10]]), Progress::Message { remaining: u64::from(u32::MAX) - 10 });
    }
}
