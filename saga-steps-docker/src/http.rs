//! A minimal HTTP/1.0 GET for health probes: the status code, nothing else.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of the answer read to find the status line.
const MAX_HEAD: usize = 8 * 1024;

/// Sends `GET path` to `address` (`host:port`) and returns the status code, all within `timeout`.
pub(crate) async fn http_get_status(
    address: &str,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    match tokio::time::timeout(timeout, get(address, path)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn get(address: &str, path: &str) -> Result<u16, String> {
    let path = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
    if path.contains(['\r', '\n', ' ']) {
        return Err(format!("invalid path {path:?}"));
    }
    let mut stream = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nUser-Agent: saga-steps-docker\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&head[..end]);
        }
        if head.len() >= MAX_HEAD {
            return Err("no status line in the first 8 KiB".into());
        }
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return parse_status_line(&head);
        }
        head.extend_from_slice(&buf[..n]);
    }
}

fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => {
            code.parse().map_err(|_| format!("bad status line {line:?}"))
        }
        _ if line.is_empty() => Err("the connection closed without an answer".into()),
        _ => Err(format!("bad status line {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn serve_once(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(answer).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn reads_the_status_code() {
        let address = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(http_get_status(&address, "/health", Duration::from_secs(5)).await, Ok(204));
        let address = serve_once(b"HTTP/1.0 503 Service Unavailable\r\nX: y\r\n\r\nbody").await;
        assert_eq!(http_get_status(&address, "health", Duration::from_secs(5)).await, Ok(503));
    }

    #[tokio::test]
    async fn garbage_closed_and_refused_are_errors() {
        let address = serve_once(b"SSH-2.0-OpenSSH\r\n").await;
        assert!(http_get_status(&address, "/", Duration::from_secs(5)).await.is_err());
        let address = serve_once(b"").await;
        let e = http_get_status(&address, "/", Duration::from_secs(5)).await;
        assert!(e.is_err(), "{e:?}");
        // A port nothing listens on: bind one, then drop the listener.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = closed.local_addr().expect("address").to_string();
        drop(closed);
        assert!(http_get_status(&address, "/", Duration::from_secs(5)).await.is_err());
        assert!(http_get_status(&address, "/a b", Duration::from_secs(5)).await.is_err());
    }
}
