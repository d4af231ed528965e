//! The bodies on both sides of the proxy: what is sent to the app (streamed, or buffered when a
//! rule reads it) and what is sent to the client (teed into the exchange's capture, and finishing
//! the exchange when it ends).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::policy::rules::Decision;

use super::capture::Capture;
use super::exchange::{Completion, Exchange};
use super::pool::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body sent to the app: the client's stream as is, or — when a rule reads it — buffered
/// up to the capture limit (and then the rest streamed after the buffered part).
pub enum RequestBody {
    Streamed(Incoming),
    Buffered(Full<Bytes>),
    Prefixed {
        prefix: Option<Bytes>,
        rest: Incoming,
    },
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Streamed(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map_err(|error| ClientBodyError(error).into()),
            RequestBody::Buffered(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            RequestBody::Prefixed { prefix, rest } => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest)
                    .poll_frame(cx)
                    .map_err(|error| ClientBodyError(error).into()),
            },
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streamed(incoming) => incoming.is_end_stream(),
            RequestBody::Buffered(full) => full.is_end_stream(),
            RequestBody::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streamed(incoming) => incoming.size_hint(),
            RequestBody::Buffered(full) => full.size_hint(),
            RequestBody::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map(|bytes| bytes.len() as u64).unwrap_or(0);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The client's request body broke while it was being forwarded: bad chunked framing (a bare LF,
/// a chunk size past 2^64), or the client went away mid-body. Kept as its own type so the proxy
/// can tell this failure, which is the client's, from the app's (400, not 502).
#[derive(Debug, thiserror::Error)]
#[error("the request body from the client is broken: {0}")]
pub struct ClientBodyError(#[source] hyper::Error);

/// The [`ClientBodyError`] behind an upstream client error, if that is what it was.
pub(super) fn client_body_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ClientBodyError> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(found) = cause.downcast_ref::<ClientBodyError>() {
            return Some(found);
        }
        current = cause.source();
    }
    None
}

enum ResponseInner {
    Upstream(Incoming),
    Full(Full<Bytes>),
}

/// The body sent to the client. When the exchange is audited it carries the exchange and
/// finishes its entry on the last frame, on an error, or when dropped early (client gone).
pub struct ResponseBody {
    inner: ResponseInner,
    exchange: Option<Box<Exchange>>,
    /// The connection the app's response came on: back to the pool when the body has ended,
    /// closed when it did not.
    connection: Option<Lease<RequestBody>>,
}

impl ResponseBody {
    /// The app's response body, teed into the exchange's capture on its way to the client.
    pub(super) fn upstream(
        incoming: Incoming,
        exchange: Option<Box<Exchange>>,
        connection: Option<Lease<RequestBody>>,
    ) -> ResponseBody {
        ResponseBody {
            inner: ResponseInner::Upstream(incoming),
            exchange,
            connection,
        }
    }

    pub(super) fn full(bytes: impl Into<Bytes>, exchange: Option<Box<Exchange>>) -> ResponseBody {
        ResponseBody {
            inner: ResponseInner::Full(Full::new(bytes.into())),
            exchange,
            connection: None,
        }
    }

    fn finish(&mut self, completion: Completion) {
        if let Some(connection) = self.connection.take() {
            // Only a response read to its end leaves the connection in step for another request.
            if matches!(completion, Completion::Complete) {
                connection.release();
            }
        }
        if let Some(exchange) = self.exchange.take() {
            exchange.finish(completion);
        }
    }

    /// Whether a rule (not the `[unmatched]` fallback) decided this exchange's entry.
    pub fn rule_matched(&self) -> bool {
        self.exchange
            .as_ref()
            .is_some_and(|exchange| matches!(exchange.decision, Decision::Rule(_)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            ResponseInner::Upstream(incoming) => {
                Pin::new(incoming).poll_frame(cx).map_err(BoxError::from)
            }
            ResponseInner::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(exchange), Some(data)) = (this.exchange.as_mut(), frame.data_ref()) {
                    exchange.response_capture.push(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finish(Completion::UpstreamBodyError(error.to_string()));
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.finish(Completion::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ResponseInner::Upstream(incoming) => incoming.is_end_stream(),
            ResponseInner::Full(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseInner::Upstream(incoming) => incoming.size_hint(),
            ResponseInner::Full(full) => full.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper does not poll a body it already knows is empty (HEAD, 204, 304, Content-Length: 0),
        // so "ended" is judged here too.
        let completion = if self.is_end_stream() {
            Completion::Complete
        } else {
            Completion::ClientGone
        };
        self.finish(completion);
    }
}

/// Reads the request body up to the capture limit. A body that fits is forwarded whole (with its
/// length); a larger one is forwarded as what was read followed by the rest of the stream, and is
/// not parsed.
pub(super) async fn buffer_request_body(
    mut incoming: Incoming,
    limit: usize,
    headers: &HeaderMap,
) -> Result<(RequestBody, Capture), hyper::Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Ok((
            RequestBody::Streamed(incoming),
            Capture::off("was larger than max_body_capture"),
        ));
    }
    let mut buffer = BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() > limit {
                return Ok((
                    RequestBody::Prefixed {
                        prefix: Some(buffer.freeze()),
                        rest: incoming,
                    },
                    Capture::off("was larger than max_body_capture"),
                ));
            }
        }
    }
    let bytes = buffer.freeze();
    let mut capture = Capture::on(limit);
    capture.push(&bytes);
    if bytes.is_empty() {
        return Ok((RequestBody::Empty, capture));
    }
    Ok((RequestBody::Buffered(Full::new(bytes)), capture))
}
