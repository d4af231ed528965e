//! `auditgate health`: ask a running sidecar whether it is healthy.

use std::process::ExitCode;

/// `auditgate health`: one plain HTTP/1.1 GET (the admin listener speaks plain HTTP on
/// loopback), so a container image needs no curl for its HEALTHCHECK. `Ok(status)` is the
/// answer's status code.
pub fn health_check(url: &str, timeout: std::time::Duration) -> Result<u16, String> {
    use std::io::{Read as _, Write as _};
    use std::net::ToSocketAddrs as _;
    let uri: http::Uri = url
        .parse()
        .map_err(|error| format!("{url:?} is not a URL ({error})"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs (the admin listener has no TLS)".into());
    }
    let host = uri.host().ok_or("the URL names no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let address = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host}: {error}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .map_err(|error| format!("cannot connect to {address}: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| error.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: auditgate-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("cannot send the request: {error}"))?;
    // The status line is all that is needed: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(count) => read += count,
            Err(error) => return Err(format!("no answer: {error}")),
        }
    }
    let line = std::str::from_utf8(&head[..read]).unwrap_or_default();
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| "the answer is not HTTP".to_string())
}

/// `auditgate health`: exit 0 when `url` answers 2xx within `timeout`, 1 otherwise.
pub fn health(url: &str, timeout: &str) -> anyhow::Result<ExitCode> {
    let timeout = match crate::base::units::parse_duration(timeout) {
        Ok(timeout) => timeout,
        Err(message) => {
            eprintln!("auditgate health: --timeout: {message}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    match health_check(url, timeout) {
        Ok(status) if (200..300).contains(&status) => Ok(ExitCode::SUCCESS),
        Ok(status) => {
            eprintln!("auditgate health: {url} answered {status}");
            Ok(ExitCode::FAILURE)
        }
        Err(message) => {
            eprintln!("auditgate health: {message}");
            Ok(ExitCode::FAILURE)
        }
    }
}
