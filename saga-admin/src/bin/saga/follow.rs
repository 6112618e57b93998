//! Following an Operation's log to its end: the Server-Sent Events of
//! `GET /api/v1/operations/{id}/log/stream`, read with `eventsource-stream`.

use std::io::Write as _;
use std::time::Duration;

use eventsource_stream::{EventStreamError, Eventsource as _};
use futures::StreamExt as _;
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::Method;
use saga_admin::api::{EndEvent, LogEvent};

use crate::client::{root_cause, CliError, Client};

/// How many times a stream cut short is resumed before giving up.
const RESUMES: u32 = 5;

/// Prints the Operation's log lines as they come, until the `end` event, which it returns.
/// A stream cut short is resumed (with `Last-Event-ID`) a few times.
pub(crate) async fn follow(client: &Client, id: &str) -> Result<EndEvent, CliError> {
    let url = client.url(&["api", "v1", "operations", id, "log", "stream"], &[]);
    // The id of the last line printed: a resumed stream starts after it.
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
        let mut events = response.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(EventStreamError::Transport(e)) if cut < RESUMES => {
                    eprintln!("saga: the log stream broke ({}); resuming", root_cause(&e));
                    break;
                }
                Err(EventStreamError::Transport(e)) => {
                    return Err(CliError::Reach { url: url.to_string(), cause: root_cause(&e) })
                }
                // Not UTF-8, or not an event stream: the server's answer is wrong.
                Err(e) => {
                    return Err(CliError::Answer { url: url.to_string(), cause: e.to_string() })
                }
            };
            // As an EventSource does, the last id seen stays the event's until another comes.
            if !event.id.is_empty() {
                last_id = Some(event.id.clone());
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
        cut += 1;
        if cut > RESUMES {
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
    use eventsource_stream::{Event, Eventsource as _};
    use futures::StreamExt as _;

    /// What the CLI relies on from the crate: events cut anywhere (even inside a character),
    /// comments skipped, CRLF line ends, and the last id kept.
    #[tokio::test]
    async fn reads_events_cut_anywhere() {
        let text = ": keep-alive\n\nevent: line\nid: 3\ndata: {\"a\":\"é\"}\n\nevent: end\r\ndata: {}\r\n\r\n";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let chunks =
                vec![Ok::<_, std::io::Error>(bytes[..cut].to_vec()), Ok(bytes[cut..].to_vec())];
            let events: Vec<Event> = futures::stream::iter(chunks)
                .eventsource()
                .map(|e| e.expect("an event"))
                .collect()
                .await;
            assert_eq!(events.len(), 2, "cut at {cut}");
            assert_eq!(events[0].event, "line");
            assert_eq!(events[0].id, "3");
            assert_eq!(events[0].data, "{\"a\":\"é\"}");
            assert_eq!(events[1].event, "end");
            assert_eq!(events[1].id, "3", "cut at {cut}");
        }
    }
}
