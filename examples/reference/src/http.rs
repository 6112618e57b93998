//! A minimal HTTP GET to a port of 127.0.0.1, for waits and probes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs `path` from `127.0.0.1:port` and returns the status code. Only ever the loopback
/// address: containers are reached through the host port Docker publishes, never through their
/// private network address.
pub async fn http_get_local(port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match tokio::time::timeout(timeout, get(address, path)).await {
        Ok(result) => result,
        Err(_) => Err(format!("GET {address}{path}: no answer within {timeout:?}")),
    }
}

async fn get(address: SocketAddr, path: &str) -> Result<u16, String> {
    if !path.starts_with('/') || path.contains(['\r', '\n', ' ']) {
        return Err(format!("invalid path {path:?}"));
    }
    let fail = |e: std::io::Error| format!("GET {address}{path}: {e}");
    let mut stream = TcpStream::connect(address).await.map_err(fail)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(fail)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
        let n = stream.read(&mut buf).await.map_err(fail)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    let line = text.lines().next().unwrap_or_default();
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/") => {
            code.parse().map_err(|_| format!("GET {address}{path}: bad status line {line:?}"))
        }
        _ => Err(format!("GET {address}{path}: no HTTP answer ({line:?})")),
    }
}
