//! The few S3 requests the archive makes (PutObject, ListObjectsV2, GetObject and HeadObject), signed with AWS Signature V4 by `rusty-s3` and sent over hyper, one
//! connection per request (plain TCP, or TLS checked by [`crate::net::tls`]).
//!
//! Requests are presigned URLs (the signature in the query string) whose signed headers
//! include every header sent with a meaning (Object Lock, Content-MD5), so a proxy or server
//! cannot strip the retention from an upload and still have it accepted. Every upload carries
//! `Content-MD5`: the server refuses a body that arrived damaged, and S3 requires it for uploads
//! with Object Lock retention.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rusty_s3::{Bucket, S3Action, UrlStyle};
use tokio::net::TcpStream;

use crate::archive::config::{BucketConfig, ObjectLock};

/// How long a presigned request stays valid: long enough for a slow upload to start.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The largest answer read: a listing page of 1000 keys, or one archive object.
const MAX_ANSWER_BYTES: usize = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the bucket answered {status}{}", describe_error(.code, .message))]
    Status {
        status: u16,
        code: Option<String>,
        message: Option<String>,
    },
    #[error("unreadable answer: {0}")]
    Answer(String),
}

impl S3Error {
    /// Whether the object (or bucket) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, S3Error::Status { status: 404, .. })
    }
}

fn describe_error(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(code), Some(message)) => format!(" {code}: {message}"),
        (Some(code), None) => format!(" {code}"),
        (None, Some(message)) => format!(": {message}"),
        (None, None) => String::new(),
    }
}

/// One listing: the keys of objects and the common prefixes ("folders" under a delimiter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub keys: Vec<String>,
    pub prefixes: Vec<String>,
}

/// A bucket to talk to.
#[derive(Clone)]
pub struct S3Client {
    bucket: Bucket,
    credentials: Option<rusty_s3::Credentials>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl S3Client {
    pub fn new(config: &BucketConfig) -> Result<S3Client, S3Error> {
        let style = if config.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            config.endpoint.clone(),
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|error| S3Error::Connect(format!("invalid bucket address: {error}")))?;
        let credentials = config
            .credentials
            .as_ref()
            .map(|keys| match &keys.session_token {
                Some(token) => rusty_s3::Credentials::new_with_token(
                    keys.access_key_id.clone(),
                    keys.secret_access_key.clone(),
                    token.clone(),
                ),
                None => rusty_s3::Credentials::new(
                    keys.access_key_id.clone(),
                    keys.secret_access_key.clone(),
                ),
            });
        let tls = match (&config.tls, config.endpoint.scheme()) {
            (Some(tls), _) => Some(tls.clone()),
            (None, "https") => Some(
                crate::net::tls::client_config(
                    None,
                    crate::net::tls::Verification::Full,
                    &[b"http/1.1"],
                )
                .map_err(|error| S3Error::Connect(error.to_string()))?,
            ),
            _ => None,
        };
        Ok(S3Client {
            bucket,
            credentials,
            tls,
            timeout: config.timeout,
        })
    }

    /// Uploads an object, with Object Lock retention until `now + days` when `lock` is given.
    pub async fn put_object(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
        lock: Option<&ObjectLock>,
    ) -> Result<(), S3Error> {
        let md5 = base64::engine::general_purpose::STANDARD
            .encode(<md5::Md5 as md5::Digest>::digest(&body));
        let retain_until = lock.map(|lock| {
            let until = chrono::Utc::now() + chrono::Duration::days(lock.days as i64);
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        });
        let mut action = self.bucket.put_object(self.credentials.as_ref(), key);
        let mut headers: Vec<(&str, String)> = vec![
            ("content-md5", md5),
            ("content-type", content_type.to_string()),
        ];
        if let (Some(lock), Some(until)) = (lock, retain_until) {
            headers.push(("x-amz-object-lock-mode", lock.mode.header_value().into()));
            headers.push(("x-amz-object-lock-retain-until-date", until));
        }
        for (name, value) in &headers {
            action.headers_mut().insert(*name, value.clone());
        }
        let url = action.sign(SIGNATURE_LIFETIME);
        self.send(http::Method::PUT, url, &headers, body).await?;
        Ok(())
    }

    /// Every key under `prefix` (all pages), or with a `delimiter` the keys directly under it
    /// and the common prefixes below.
    pub async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, S3Error> {
        let mut listing = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(self.credentials.as_ref());
            action.with_prefix(prefix.to_string());
            if let Some(delimiter) = delimiter {
                action.with_delimiter(delimiter.to_string());
            }
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let url = action.sign(SIGNATURE_LIFETIME);
            let answer = self.send(http::Method::GET, url, &[], Vec::new()).await?;
            let text = String::from_utf8(answer.to_vec())
                .map_err(|_| S3Error::Answer("a listing that is not UTF-8".into()))?;
            let page =
                rusty_s3::actions::ListObjectsV2::parse_response(&text).map_err(|error| {
                    S3Error::Answer(format!("a listing that does not parse: {error}"))
                })?;
            // Keys come URL-encoded (the request asks for encoding-type=url), so any byte in a
            // key survives the XML.
            for content in page.contents {
                listing.keys.push(decode_key(&content.key));
            }
            for common in page.common_prefixes {
                listing.prefixes.push(decode_key(&common.prefix));
            }
            match page.next_continuation_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(listing),
            }
        }
    }

    /// The whole body of an object.
    pub async fn get_object(&self, key: &str) -> Result<Bytes, S3Error> {
        let action = self.bucket.get_object(self.credentials.as_ref(), key);
        let url = action.sign(SIGNATURE_LIFETIME);
        self.send(http::Method::GET, url, &[], Vec::new()).await
    }

    /// The Object Lock retention of an object as the bucket reports it in HeadObject's
    /// answer: (mode, retain until), or `None` when the object has none.
    pub async fn object_retention(&self, key: &str) -> Result<Option<(String, String)>, S3Error> {
        let action = self.bucket.head_object(self.credentials.as_ref(), key);
        let url = action.sign(SIGNATURE_LIFETIME);
        let (headers, _) = self.send_for_headers(http::Method::HEAD, url).await?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        Ok(header("x-amz-object-lock-mode").zip(header("x-amz-object-lock-retain-until-date")))
    }

    async fn send_for_headers(
        &self,
        method: http::Method,
        url: url::Url,
    ) -> Result<(http::HeaderMap, Bytes), S3Error> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, url, &[], Vec::new())).await {
            Ok(result) => result,
            Err(_) => Err(S3Error::Timeout(timeout)),
        }
    }

    async fn send(
        &self,
        method: http::Method,
        url: url::Url,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Bytes, S3Error> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(method, url, headers, body)).await {
            Ok(result) => result.map(|(_, body)| body),
            Err(_) => Err(S3Error::Timeout(timeout)),
        }
    }

    async fn exchange(
        &self,
        method: http::Method,
        url: url::Url,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(http::HeaderMap, Bytes), S3Error> {
        let host = url
            .host_str()
            .ok_or_else(|| S3Error::Connect("the URL names no host".into()))?
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| S3Error::Connect("the URL names no port".into()))?;
        // The Host header is signed as rusty-s3 wrote it: the port only when it is not the
        // scheme's default.
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(target)
            .header(http::header::HOST, host_header)
            .header(http::header::USER_AGENT, "auditgate")
            .header(http::header::CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| S3Error::Connect(format!("cannot build the request: {error}")))?;
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tcp = TcpStream::connect((bare_host.as_str(), port))
            .await
            .map_err(|error| {
                S3Error::Connect(format!("cannot connect to {host}:{port}: {error}"))
            })?;
        let _ = tcp.set_nodelay(true);
        let response = if url.scheme() == "https" {
            let tls = self
                .tls
                .clone()
                .ok_or_else(|| S3Error::Connect("no TLS configuration".into()))?;
            let name = rustls::pki_types::ServerName::try_from(bare_host.clone())
                .map_err(|_| S3Error::Connect(format!("`{host}` is not a TLS server name")))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|error| {
                    S3Error::Connect(format!("TLS handshake with {host}:{port} failed: {error}"))
                })?;
            send_on(TokioIo::new(stream), request).await?
        } else {
            send_on(TokioIo::new(tcp), request).await?
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|error| S3Error::Answer(format!("cannot read the answer: {error}")))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(S3Error::Status {
                status: status.as_u16(),
                code: xml_text(&text, "Code"),
                message: xml_text(&text, "Message"),
            });
        }
        Ok((headers, body))
    }
}

async fn send_on<T>(
    io: T,
    request: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, S3Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| S3Error::Connect(format!("HTTP handshake failed: {error}")))?;
    tokio::spawn(async move {
        // Ends when the answer has been read and the sender dropped.
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|error| S3Error::Connect(format!("the request failed: {error}")))
}

/// A key from a listing made with `encoding-type=url`.
fn decode_key(key: &str) -> String {
    percent_encoding::percent_decode_str(&key.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The text of the first `<name>` element, unescaped; enough for error codes and retention
/// answers, whose values are plain words and dates.
fn xml_text(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    let value = text[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some(value.chars().take(300).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_name_their_code_and_message() {
        let body = "<?xml version=\"1.0\"?><Error><Code>InvalidRequest</Code><Message>Bucket is missing Object Lock Configuration &amp; more</Message></Error>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("InvalidRequest"));
        let error = S3Error::Status {
            status: 400,
            code: xml_text(body, "Code"),
            message: xml_text(body, "Message"),
        };
        assert_eq!(
            error.to_string(),
            "the bucket answered 400 InvalidRequest: Bucket is missing Object Lock Configuration & more"
        );
        assert_eq!(decode_key("a%2Fb+c"), "a/b c");
    }
}
