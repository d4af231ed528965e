//! A body captured for the rules that read it, bounded by `max_body_capture`, and parsed once
//! when the entry is finished.

use std::io::Read;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use serde_json::Value;

/// A body captured for `*.body:` values, bounded by `max_body_capture`.
#[derive(Default)]
pub(super) struct Capture {
    pub(super) active: bool,
    limit: usize,
    bytes: BytesMut,
    overflow: bool,
    /// Why the body is not available, when it is not.
    unavailable: Option<&'static str>,
}

impl Capture {
    pub(super) fn off(reason: &'static str) -> Capture {
        Capture {
            unavailable: Some(reason),
            ..Capture::default()
        }
    }

    pub(super) fn on(limit: usize) -> Capture {
        Capture {
            active: true,
            limit,
            ..Capture::default()
        }
    }

    pub(super) fn push(&mut self, data: &Bytes) {
        if !self.active || self.overflow {
            return;
        }
        if self.bytes.len() + data.len() > self.limit {
            self.overflow = true;
            self.bytes = BytesMut::new();
        } else {
            self.bytes.extend_from_slice(data);
        }
    }

    /// The captured bytes as sent, when the whole body was captured without a content coding
    /// (a method-override form field is read from them); otherwise why not.
    pub(super) fn readable_bytes(&self, headers: &HeaderMap) -> Result<&[u8], &'static str> {
        if let Some(reason) = self.unavailable {
            return Err(reason);
        }
        if self.overflow {
            return Err("was larger than max_body_capture");
        }
        let coded = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| {
                !value.trim().is_empty() && !value.trim().eq_ignore_ascii_case("identity")
            });
        if coded {
            return Err("has a content coding");
        }
        Ok(&self.bytes)
    }

    /// Parses the captured bytes as JSON, decoding gzip/deflate first; anything else is reported
    /// as not captured rather than mis-parsed.
    pub(super) fn parse(&self, encoding: Option<&str>, limit: usize) -> Result<Value, String> {
        if let Some(reason) = self.unavailable {
            return Err(reason.to_string());
        }
        if self.overflow {
            return Err("was larger than max_body_capture".to_string());
        }
        let decoded;
        let bytes: &[u8] = match encoding.map(|e| e.trim().to_ascii_lowercase()) {
            None => &self.bytes,
            Some(encoding) if encoding.is_empty() || encoding == "identity" => &self.bytes,
            Some(encoding)
                if encoding == "gzip" || encoding == "x-gzip" || encoding == "deflate" =>
            {
                let mut out = Vec::new();
                let reader: Box<dyn Read> = if encoding == "deflate" {
                    Box::new(flate2::read::ZlibDecoder::new(&self.bytes[..]))
                } else {
                    Box::new(flate2::read::MultiGzDecoder::new(&self.bytes[..]))
                };
                // Bounded: a small compressed body must not inflate past the capture limit.
                let read = reader.take(limit as u64 + 1).read_to_end(&mut out);
                match read {
                    Ok(_) if out.len() <= limit => {}
                    Ok(_) => {
                        return Err("was larger than max_body_capture once decompressed".to_string())
                    }
                    Err(_) => return Err(format!("is not valid {encoding}")),
                }
                decoded = out;
                &decoded
            }
            Some(encoding) => return Err(format!("is {encoding}-encoded, which is not decoded")),
        };
        if bytes.is_empty() {
            return Err("is empty".to_string());
        }
        serde_json::from_slice(bytes).map_err(|_| "is not JSON".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_parses_gzip_and_refuses_unknown_encodings() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(br#"{"id": 7}"#).expect("compresses");
        let gz = Bytes::from(encoder.finish().expect("finishes"));
        let mut capture = Capture::on(1024);
        capture.push(&gz);
        assert_eq!(
            capture.parse(Some("gzip"), 1024),
            Ok(serde_json::json!({"id": 7}))
        );
        assert!(capture
            .parse(Some("br"), 1024)
            .expect_err("not decoded")
            .contains("br"));
        assert!(capture
            .parse(None, 1024)
            .expect_err("binary")
            .contains("not JSON"));

        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b' '; 1 << 20]).expect("compresses");
        let mut capture = Capture::on(64 * 1024);
        capture.push(&Bytes::from(bomb.finish().expect("finishes")));
        assert!(capture.parse(Some("gzip"), 64 * 1024).is_err());
    }

    #[test]
    fn capture_overflow_is_reported() {
        let mut capture = Capture::on(4);
        capture.push(&Bytes::from_static(b"{\"a\""));
        capture.push(&Bytes::from_static(b":1}"));
        assert_eq!(
            capture.parse(None, 4),
            Err("was larger than max_body_capture".to_string())
        );
    }
}
