//! Outbound HTTP/1.1 connections that carry several requests (signed heads to a URL target,
//! batches to an OTLP collector): TCP, TLS for an `https` URL, and hyper's handshake.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Opens an HTTP/1.1 connection to the host and port of `uri` (443 or 80 when it names none),
/// over TLS checked by `tls` when its scheme is https. A task of its own drives the connection
/// until the returned sender is dropped or the server closes it.
pub async fn connect(
    uri: &http::Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let host = uri.host().ok_or("the URL names no host")?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|error| format!("cannot connect to {host}:{port}: {error}"))?;
    let _ = tcp.set_nodelay(true);
    if !https {
        return handshake(tcp).await;
    }
    let tls = tls.ok_or("no TLS configuration for an https URL")?;
    let name = ServerName::try_from(bare_host.to_string())
        .map_err(|_| format!("`{host}` is not a TLS server name"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|error| format!("TLS handshake with {host}:{port} failed: {error}"))?;
    handshake(stream).await
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
