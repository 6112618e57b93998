//! An HTTP GET to a port of 127.0.0.1, for waits and probes, with hyper-util's client (already
//! in the build: the AWS SDK and bollard use it).

use std::error::Error as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `path` from `127.0.0.1:port` and returns the status code. Only ever the loopback
/// address: containers are reached through the host port Docker publishes, never through their
/// private network address. Each call makes a connection of its own (none is kept for the next:
/// a probe must see each replica as a new client does), and gives up after `timeout`, connecting
/// included. The error says what failed, with its causes.
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
    let uri: http::Uri = format!("http://{address}{path}")
        .parse()
        .map_err(|e| format!("GET {address}{path}: invalid path {path:?}: {e}"))?;
    let client =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http::<String>();
    let response = client.get(uri).await.map_err(|e| {
        // The client's own message is only its kind ("client error (Connect)"): the causes
        // say what happened ("Connection refused").
        let mut text = format!("GET {address}{path}: {e}");
        let mut source = e.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    })?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    /// A server on a port of 127.0.0.1 that answers every request with `answer` (or, with
    /// `None`, accepts and never answers).
    async fn server(answer: Option<&'static str>) -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                match answer {
                    Some(answer) => {
                        let _ = stream.write_all(answer.as_bytes()).await;
                    }
                    None => open.push(stream),
                }
            }
        });
        port
    }

    #[tokio::test]
    async fn the_status_a_timeout_and_a_refusal() {
        let second = Duration::from_secs(5);
        let ok = server(Some("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(http_get_local(ok, "/", second).await, Ok(204));
        let missing = server(Some("HTTP/1.0 404 Not Found\r\nContent-Length: 2\r\n\r\nno")).await;
        assert_eq!(http_get_local(missing, "/x?y=1", second).await, Ok(404));

        let silent = server(None).await;
        let error = http_get_local(silent, "/", Duration::from_millis(200)).await;
        assert_eq!(error, Err(format!("GET 127.0.0.1:{silent}/: no answer within 200ms")));

        // A port nobody listens on (bound, then closed).
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let port = closed.local_addr().expect("local address").port();
        drop(closed);
        let error = http_get_local(port, "/", second).await.expect_err("refused");
        assert!(error.starts_with(&format!("GET 127.0.0.1:{port}/: ")), "{error}");
        assert!(error.to_lowercase().contains("refused"), "{error}");

        let error = http_get_local(ok, "no-slash", second).await.expect_err("a bad path");
        assert!(error.contains("invalid path"), "{error}");
    }
}
