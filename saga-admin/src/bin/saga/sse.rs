//! A reader of a Server-Sent Events stream, and following an Operation's log to its end.

use std::io::Write as _;
use std::time::Duration;

use futures::StreamExt as _;
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::Method;
use saga_admin::api::{EndEvent, LogEvent};

use crate::client::{root_cause, CliError, Client};

/// One event of the stream.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub(crate) event: String,
    pub(crate) data: String,
    pub(crate) id: Option<String>,
}

/// Splits a byte stream into events (lines may arrive cut anywhere, even inside a character).
#[derive(Debug, Default)]
pub(crate) struct Parser {
    pending: Vec<u8>,
    current: SseEvent,
    has_data: bool,
}

impl Parser {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.has_data || !self.current.event.is_empty() {
                    events.push(std::mem::take(&mut self.current));
                }
                self.current = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.current.event = value.to_owned(),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                "id" => self.current.id = Some(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

/// Prints the Operation's log lines as they come, until the `end` event, which it returns.
/// A stream cut short is resumed (with `Last-Event-ID`) a few times.
pub(crate) async fn follow(client: &Client, id: &str) -> Result<EndEvent, CliError> {
    let url = client.url(&["api", "v1", "operations", id, "log", "stream"], &[]);
    let mut last_id: Option<String> = None;
    let mut cut = 0;
    loop {
        let mut request = client
            .request(Method::GET, &url)
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Some(last) = last_id.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
            request = request.header("Last-Event-ID", last);
        }
        let response = client.send(&url, request).await?;
        let mut body = response.bytes_stream();
        let mut parser = Parser::default();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) if cut < 5 => {
                    eprintln!("saga: the log stream broke ({}); resuming", root_cause(&e));
                    break;
                }
                Err(e) => {
                    return Err(CliError::Reach { url: url.to_string(), cause: root_cause(&e) })
                }
            };
            for event in parser.push(&chunk) {
                if event.id.is_some() {
                    last_id = event.id.clone();
                }
                match event.event.as_str() {
                    "line" => {
                        let line: LogEvent = decode(&url, &event.data)?;
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{}", line.text).map_err(CliError::Output)?;
                        out.flush().map_err(CliError::Output)?;
                    }
                    "missed" => eprintln!("saga: the stream skipped lines: {}", event.data),
                    "end" => return decode(&url, &event.data),
                    _ => {}
                }
            }
        }
        cut += 1;
        if cut > 5 {
            return Err(CliError::Answer {
                url: url.to_string(),
                cause: "the log stream ended before the operation's outcome".to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn decode<T: serde::de::DeserializeOwned>(url: &reqwest::Url, data: &str) -> Result<T, CliError> {
    serde_json::from_str(data)
        .map_err(|e| CliError::Answer { url: url.to_string(), cause: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_cut_anywhere() {
        let text = ": keep-alive\n\nevent: line\nid: 3\ndata: {\"a\":\"é\"}\n\nevent: end\r\ndata: {}\r\n\r\n";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut parser = Parser::default();
            let mut events = parser.push(&bytes[..cut]);
            events.extend(parser.push(&bytes[cut..]));
            assert_eq!(events.len(), 2, "cut at {cut}");
            assert_eq!(events[0].event, "line");
            assert_eq!(events[0].id.as_deref(), Some("3"));
            assert_eq!(events[0].data, "{\"a\":\"é\"}");
            assert_eq!(events[1].event, "end");
        }
    }
}
