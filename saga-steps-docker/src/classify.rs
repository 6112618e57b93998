//! Which Docker errors are worth retrying.

use std::io;

use bollard::errors::Error as DockerError;
use saga_core::{ErrorKind, StepError};

/// Message fragments that mean the network or a server is down for now: worth retrying.
const TRANSIENT_MARKERS: &[&str] = &[
    "connection refused",
    "connection reset",
    "connection aborted",
    "broken pipe",
    "no route to host",
    "network is unreachable",
    "host is unreachable",
    "timeout",
    "timed out",
    "deadline exceeded",
    "temporarily unavailable",
    "temporary failure",
    "too many requests",
    "toomanyrequests",
    "unexpected eof",
    "unexpected http status: 5",
    "500 internal server error",
    "502 bad gateway",
    "503 service unavailable",
    "504 gateway timeout",
    "tls handshake",
];

/// Message fragments that mean retrying cannot help: something is missing, invalid or refused.
const PERMANENT_MARKERS: &[&str] = &[
    "not found",
    "manifest unknown",
    "no such",
    "does not exist",
    "invalid",
    "unauthorized",
    "denied",
    "conflict",
    "already in use",
    "is not running",
];

/// Whether a Docker error is worth retrying.
///
/// Transient: the Docker Engine or a registry cannot be reached (connection refused or reset, a
/// missing socket while the daemon restarts), a request timeout, a 5xx answer (unless its message
/// says something is missing or invalid), 408 and 429. Permanent: every other 4xx answer (a
/// missing image or container, a name conflict, invalid parameters), and errors of the client
/// itself (a body that does not parse, a bad URI). An error the engine reports inside a stream
/// (a pull that failed half-way) is judged by its message.
///
/// ```
/// use bollard::errors::Error;
/// use saga_core::ErrorKind;
/// use saga_steps_docker::classify;
///
/// let missing = Error::DockerResponseServerError {
///     status_code: 404,
///     message: "No such container: web".into(),
/// };
/// assert_eq!(classify(&missing), ErrorKind::Permanent);
/// assert_eq!(classify(&Error::RequestTimeoutError), ErrorKind::Transient);
/// ```
pub fn classify(error: &DockerError) -> ErrorKind {
    use ErrorKind::{Permanent, Transient};
    match error {
        DockerError::DockerResponseServerError { status_code, message } => match *status_code {
            408 | 429 => Transient,
            500..=599 => match classify_message(message) {
                Some(Permanent) if !is_transient_message(message) => Permanent,
                _ => Transient,
            },
            _ => Permanent,
        },
        DockerError::RequestTimeoutError => Transient,
        DockerError::IOError { err } => classify_io(err),
        DockerError::HyperResponseError { .. } | DockerError::HyperLegacyError { .. } => Transient,
        DockerError::SocketNotFoundError(_) => Transient,
        DockerError::DockerStreamError { error } => {
            classify_message(error).unwrap_or(ErrorKind::Permanent)
        }
        _ => classify_message(&error.to_string()).unwrap_or(Permanent),
    }
}

/// A step error for a failed Docker call: `what` was being done, then the Docker message; transient
/// or permanent as [`classify`] says.
///
/// ```
/// use bollard::errors::Error;
/// use saga_steps_docker::docker_error;
///
/// let e = docker_error(
///     "start container web",
///     Error::DockerResponseServerError { status_code: 404, message: "No such container: web".into() },
/// );
/// assert!(!e.is_transient());
/// assert!(e.message().contains("No such container: web"));
/// ```
pub fn docker_error(what: &str, error: DockerError) -> StepError {
    let message = format!("{what}: {}", describe(&error));
    match classify(&error) {
        ErrorKind::Transient => StepError::transient(message),
        ErrorKind::Permanent => StepError::permanent(message),
    }
}

/// The Docker error in words: its message, with the status code when the engine answered one.
pub(crate) fn describe(error: &DockerError) -> String {
    match error {
        DockerError::DockerResponseServerError { status_code, message } => {
            format!("{} (status {status_code})", message.trim())
        }
        DockerError::DockerStreamError { error } => error.trim().to_owned(),
        other => other.to_string(),
    }
}

/// The status code the engine answered, if it answered.
pub(crate) fn status_code(error: &DockerError) -> Option<u16> {
    match error {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn classify_io(error: &io::Error) -> ErrorKind {
    match error.kind() {
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::Unsupported => {
            ErrorKind::Permanent
        }
        _ => ErrorKind::Transient,
    }
}

fn is_transient_message(message: &str) -> bool {
    let lower = message.to_lowercase();
    TRANSIENT_MARKERS.iter().any(|m| lower.contains(m))
}

/// Judges a message alone: transient markers win (a registry that is down is named in a
/// "not found"-free message), then permanent markers; `None` when neither appears.
pub(crate) fn classify_message(message: &str) -> Option<ErrorKind> {
    let lower = message.to_lowercase();
    if TRANSIENT_MARKERS.iter().any(|m| lower.contains(m)) {
        Some(ErrorKind::Transient)
    } else if PERMANENT_MARKERS.iter().any(|m| lower.contains(m)) {
        Some(ErrorKind::Permanent)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError { status_code, message: message.into() }
    }

    fn stream(message: &str) -> DockerError {
        DockerError::DockerStreamError { error: message.into() }
    }

    #[test]
    fn network_failures_and_timeouts_are_transient() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::TimedOut,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::NotFound,
        ] {
            let e = DockerError::IOError { err: io::Error::new(kind, "boom") };
            assert_eq!(classify(&e), ErrorKind::Transient, "{kind:?}");
        }
        assert_eq!(classify(&DockerError::RequestTimeoutError), ErrorKind::Transient);
        assert_eq!(
            classify(&DockerError::SocketNotFoundError("/var/run/docker.sock".into())),
            ErrorKind::Transient
        );
    }

    #[test]
    fn server_errors_and_throttling_are_transient() {
        // What Docker 20.10 answers when a registry is down or broken.
        let down =
            r#"Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused"#;
        assert_eq!(classify(&server(500, down)), ErrorKind::Transient);
        let broken = "received unexpected HTTP status: 500 Internal Server Error";
        assert_eq!(classify(&server(500, broken)), ErrorKind::Transient);
        assert_eq!(classify(&server(503, "service unavailable")), ErrorKind::Transient);
        assert_eq!(classify(&server(502, "")), ErrorKind::Transient);
        assert_eq!(classify(&server(429, "toomanyrequests")), ErrorKind::Transient);
        assert_eq!(classify(&server(408, "request timeout")), ErrorKind::Transient);
        assert_eq!(classify(&stream("read tcp: connection reset by peer")), ErrorKind::Transient);
        assert_eq!(classify(&stream("net/http: TLS handshake timeout")), ErrorKind::Transient);
    }

    #[test]
    fn missing_conflicting_and_invalid_are_permanent() {
        let missing =
            "manifest for 127.0.0.1:5000/a/b:1 not found: manifest unknown: manifest unknown";
        assert_eq!(classify(&server(404, missing)), ErrorKind::Permanent);
        // A 500 whose message says the thing is missing is not worth retrying either.
        assert_eq!(classify(&server(500, missing)), ErrorKind::Permanent);
        assert_eq!(classify(&stream(missing)), ErrorKind::Permanent);
        assert_eq!(classify(&server(404, "No such container: web")), ErrorKind::Permanent);
        let conflict =
            r#"Conflict. The container name "/web" is already in use by container "abc""#;
        assert_eq!(classify(&server(409, conflict)), ErrorKind::Permanent);
        assert_eq!(classify(&server(400, "invalid reference format")), ErrorKind::Permanent);
        assert_eq!(classify(&server(500, "invalid reference format")), ErrorKind::Permanent);
        assert_eq!(classify(&server(401, "unauthorized")), ErrorKind::Permanent);
        assert_eq!(classify(&stream("something nobody expected")), ErrorKind::Permanent);
        let json = serde_json_error();
        assert_eq!(classify(&json), ErrorKind::Permanent);
    }

    fn serde_json_error() -> DockerError {
        DockerError::JsonDataError { message: "expected value".into(), column: 1 }
    }

    #[test]
    fn the_step_error_carries_the_docker_message() {
        let e = docker_error("pull a/b:1", server(404, "manifest unknown"));
        assert_eq!(e.message(), "pull a/b:1: manifest unknown (status 404)");
        assert!(!e.is_transient());
        let e = docker_error("stop web", DockerError::RequestTimeoutError);
        assert!(e.is_transient());
        assert!(e.message().starts_with("stop web: "), "{}", e.message());
        assert_eq!(status_code(&server(409, "x")), Some(409));
        assert_eq!(status_code(&DockerError::RequestTimeoutError), None);
    }
}
