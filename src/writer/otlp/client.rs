//! One OTLP/HTTP request at a time to one endpoint, over one kept-alive HTTP/1.1 connection
//! (plain TCP, or TLS checked by the output's client configuration), and what the answer means
//! for the batch.
//!
//! The OTLP specification retries 429, 502, 503 and 504 only; this client also retries every
//! other 5xx, 408, a timeout and a connection failure, because an entry the collector never took
//! must not be given up on. Any other 4xx is the collector refusing the request for good.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message as _;

use crate::writer::otlp::config::OtlpConfig;

/// Most bytes of an answer that are read (an OTLP answer is a few bytes to a short message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What the collector did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Taken (2xx). A collector may still report records it dropped (OTLP partial success).
    Accepted {
        rejected_records: i64,
        message: String,
    },
    /// Not taken this time: retry after a back-off (or the collector's Retry-After).
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Refused for good. `content` when the refusal is about what was sent (400, 413, 422), so
    /// a smaller batch may pass; otherwise it is about the request itself (a missing or wrong
    /// credential, a wrong path), and every batch would be refused alike.
    Rejected {
        status: u16,
        content: bool,
        message: String,
    },
}

/// The connection to one endpoint, opened on first use and again after any failure.
pub struct Client {
    config: OtlpConfig,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(config: OtlpConfig) -> Client {
        Client {
            config,
            sender: None,
        }
    }

    /// POSTs one gzipped `ExportLogsServiceRequest`, waiting at most the output's `timeout`
    /// (connecting included).
    pub async fn send(&mut self, body: Bytes) -> Answer {
        let timeout = self.config.timeout;
        match tokio::time::timeout(timeout, self.attempt(body)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                // The connection may be half-used; the next request gets a fresh one.
                self.sender = None;
                Answer::Unavailable {
                    reason,
                    retry_after: None,
                }
            }
            Err(_) => {
                self.sender = None;
                Answer::Unavailable {
                    reason: format!("no answer within {timeout:?}"),
                    retry_after: None,
                }
            }
        }
    }

    async fn attempt(&mut self, body: Bytes) -> Result<Answer, String> {
        let reusable = match self.sender.as_mut() {
            Some(sender) if !sender.is_closed() => sender.ready().await.is_ok(),
            _ => false,
        };
        if !reusable {
            self.sender = Some(self.connect().await?);
        }
        let request = self.request(body)?;
        let sender = self.sender.as_mut().ok_or("no connection")?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("the request failed: {error}"))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read to the end, so the connection can carry the next request.
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|error| format!("cannot read the answer: {error}"))?;
        Ok(classify(status.as_u16(), &answer, retry_after))
    }

    fn request(&self, body: Bytes) -> Result<http::Request<Full<Bytes>>, String> {
        let uri = &self.config.endpoint;
        let target = uri.path_and_query().map_or("/", |target| target.as_str());
        let authority = uri.authority().map_or("", |authority| authority.as_str());
        let mut request = http::Request::post(target)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header(http::header::CONTENT_ENCODING, "gzip")
            .header(
                http::header::USER_AGENT,
                concat!("auditgate/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        request
            .body(Full::new(body))
            .map_err(|error| format!("cannot build the request: {error}"))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        crate::net::http1::connect(&self.config.endpoint, self.config.tls.as_ref()).await
    }
}

/// What a status and answer body mean for the batch.
fn classify(status: u16, answer: &[u8], retry_after: Option<Duration>) -> Answer {
    match status {
        200..=299 => {
            // An empty or undecodable body is a full success; only a decoded partial success
            // says otherwise.
            let partial = ExportLogsServiceResponse::decode(answer)
                .ok()
                .and_then(|response| response.partial_success);
            Answer::Accepted {
                rejected_records: partial
                    .as_ref()
                    .map_or(0, |partial| partial.rejected_log_records.max(0)),
                message: partial.map_or_else(String::new, |partial| {
                    shorten(partial.error_message.as_bytes())
                }),
            }
        }
        408 | 429 | 500..=599 => Answer::Unavailable {
            reason: format!("answered {status}: {}", shorten(answer)),
            retry_after,
        },
        _ => Answer::Rejected {
            status,
            content: matches!(status, 400 | 413 | 422),
            message: shorten(answer),
        },
    }
}

/// A collector's message for a log line: printable characters only, at most 200 of them. (An
/// OTLP error body is a protobuf `google.rpc.Status`, whose message is readable this way.)
fn shorten(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;

    #[test]
    fn answers_are_retried_refused_or_taken_by_status() {
        let taken = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 2,
                error_message: "too old\n".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            classify(200, &taken, None),
            Answer::Accepted {
                rejected_records: 2,
                message: "too old".into()
            }
        );
        assert_eq!(
            classify(200, b"", None),
            Answer::Accepted {
                rejected_records: 0,
                message: String::new()
            }
        );
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(
                    classify(status, b"", Some(Duration::from_secs(3))),
                    Answer::Unavailable { retry_after: Some(wait), .. } if wait == Duration::from_secs(3)
                ),
                "{status} is retried"
            );
        }
        for (status, content) in [
            (400, true),
            (413, true),
            (422, true),
            (401, false),
            (403, false),
            (404, false),
            (301, false),
        ] {
            assert!(
                matches!(classify(status, b"no", None), Answer::Rejected { content: c, .. } if c == content),
                "{status}"
            );
        }
    }
}
