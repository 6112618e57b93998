//! Turning AWS SDK errors into [`StepError`]s: transient (worth a retry) or permanent.

use std::error::Error as StdError;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use saga_core::{ErrorKind, StepError};

/// AWS error codes that mean "try again later": throttling, capacity, internal failures.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
    "ProvisionedThroughputExceededException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestExpired",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "Unavailable",
    "InsufficientInstanceCapacity",
    "InsufficientVolumeCapacity",
];

/// Classifies an AWS SDK error from `action` (the API call, e.g. `AttachVolume`) as a
/// [`StepError`].
///
/// - Throttling codes, HTTP 429 and 5xx answers, timeouts, connection (dispatch) failures and
///   unreadable responses are **transient**: the engine retries the step.
/// - Everything else the service answered (validation errors, `*.NotFound`, `IncorrectState`,
///   `InvalidTarget`, authorization failures) is **permanent**, and so is a request that could not
///   be built or a connector error the caller caused (`is_user`).
///
/// The message names the action, the AWS error code, the service's message and the HTTP status.
///
/// ```
/// use aws_sdk_ec2::error::SdkError;
/// use aws_sdk_ec2::operation::attach_volume::AttachVolumeError;
/// use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
/// use saga_steps_aws::classify_sdk_error;
///
/// let error: SdkError<AttachVolumeError, HttpResponse> = SdkError::timeout_error("no answer in 30 s");
/// let step_error = classify_sdk_error("AttachVolume", &error);
/// assert!(step_error.is_transient());
/// assert!(step_error.message().starts_with("AttachVolume: timed out"));
/// ```
pub fn classify_sdk_error<E>(action: &str, error: &SdkError<E, HttpResponse>) -> StepError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match error {
        SdkError::ConstructionFailure(_) => StepError::permanent(format!(
            "{action}: the request could not be built: {}",
            DisplayErrorContext(error)
        )),
        SdkError::TimeoutError(_) => {
            StepError::transient(format!("{action}: timed out: {}", DisplayErrorContext(error)))
        }
        SdkError::DispatchFailure(failure) => {
            let text = format!("{action}: request not sent: {}", DisplayErrorContext(error));
            if failure.is_user() {
                StepError::permanent(text)
            } else {
                StepError::transient(text)
            }
        }
        SdkError::ResponseError(response) => StepError::transient(format!(
            "{action}: unreadable response (HTTP {}): {}",
            response.raw().status().as_u16(),
            DisplayErrorContext(error)
        )),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code();
            let message = service.err().message().unwrap_or("no message");
            let text =
                format!("{action}: {}: {message} (HTTP {status})", code.unwrap_or("no code"));
            match kind_of(code, Some(status)) {
                ErrorKind::Transient => StepError::transient(text),
                ErrorKind::Permanent => StepError::permanent(text),
            }
        }
        // `SdkError` is non-exhaustive: an error of a kind this crate does not know is not retried.
        _ => StepError::permanent(format!("{action}: {}", DisplayErrorContext(error))),
    }
}

/// Whether an AWS error with this code and HTTP status is worth retrying.
pub(crate) fn kind_of(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    let transient_code = code.is_some_and(|c| TRANSIENT_CODES.contains(&c));
    let transient_status = status.is_some_and(|s| s == 429 || (500..600).contains(&s));
    if transient_code || transient_status {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    }
}

/// The AWS error code of an SDK error, if the service answered with one.
pub(crate) fn code_of<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> Option<&str> {
    match error {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_ec2::operation::attach_volume::AttachVolumeError;
    use aws_sdk_elasticloadbalancingv2::operation::register_targets::RegisterTargetsError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn response(status: u16) -> HttpResponse {
        let status = StatusCode::try_from(status).expect("a valid status code");
        HttpResponse::new(status, SdkBody::empty())
    }

    fn service(
        code: &str,
        message: &str,
        status: u16,
    ) -> SdkError<AttachVolumeError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(AttachVolumeError::generic(meta), response(status))
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        for (code, status) in [
            ("Throttling", 400),
            ("RequestLimitExceeded", 503),
            ("ThrottlingException", 400),
            ("InternalError", 500),
            ("ServiceUnavailable", 503),
            ("SomethingNew", 502),
            ("SomethingNew", 429),
        ] {
            let e = classify_sdk_error("AttachVolume", &service(code, "slow down", status));
            assert!(e.is_transient(), "{code} {status}: {e}");
            assert!(e.message().contains(code), "{e}");
            assert!(e.message().contains(&format!("HTTP {status}")), "{e}");
        }
    }

    #[test]
    fn validation_not_found_and_invalid_state_are_permanent() {
        for code in [
            "InvalidParameterValue",
            "ValidationError",
            "InvalidVolume.NotFound",
            "InvalidInstanceID.NotFound",
            "IncorrectState",
            "VolumeInUse",
            "UnauthorizedOperation",
        ] {
            let e = classify_sdk_error("AttachVolume", &service(code, "no", 400));
            assert!(!e.is_transient(), "{code}: {e}");
            assert_eq!(e.message(), format!("AttachVolume: {code}: no (HTTP 400)"));
        }
        let meta = ErrorMetadata::builder().code("TargetGroupNotFound").message("gone").build();
        let elb: SdkError<RegisterTargetsError, HttpResponse> =
            SdkError::service_error(RegisterTargetsError::generic(meta), response(400));
        let e = classify_sdk_error("RegisterTargets", &elb);
        assert!(!e.is_transient());
        assert!(e.message().contains("TargetGroupNotFound"), "{e}");
        assert_eq!(code_of(&elb), Some("TargetGroupNotFound"));
    }

    #[test]
    fn transport_failures_are_transient_and_build_failures_permanent() {
        let timeout: SdkError<AttachVolumeError, HttpResponse> =
            SdkError::timeout_error("operation timed out");
        assert!(classify_sdk_error("AttachVolume", &timeout).is_transient());

        let io: SdkError<AttachVolumeError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let e = classify_sdk_error("AttachVolume", &io);
        assert!(e.is_transient());
        assert!(e.message().contains("connection refused"), "{e}");

        let connect_timeout: SdkError<AttachVolumeError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::timeout("connect timeout".into()));
        assert!(classify_sdk_error("AttachVolume", &connect_timeout).is_transient());

        let user: SdkError<AttachVolumeError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::user("bad endpoint".into()));
        assert!(!classify_sdk_error("AttachVolume", &user).is_transient());

        let unreadable: SdkError<AttachVolumeError, HttpResponse> =
            SdkError::response_error("truncated body", response(200));
        assert!(classify_sdk_error("AttachVolume", &unreadable).is_transient());

        let construction: SdkError<AttachVolumeError, HttpResponse> =
            SdkError::construction_failure("missing volume id");
        let e = classify_sdk_error("AttachVolume", &construction);
        assert!(!e.is_transient());
        assert_eq!(code_of(&construction), None);
    }

    #[test]
    fn kind_of_uses_code_then_status() {
        assert_eq!(kind_of(Some("Throttling"), Some(400)), ErrorKind::Transient);
        assert_eq!(kind_of(None, Some(503)), ErrorKind::Transient);
        assert_eq!(kind_of(None, Some(404)), ErrorKind::Permanent);
        assert_eq!(kind_of(Some("InvalidTarget"), None), ErrorKind::Permanent);
        assert_eq!(kind_of(None, None), ErrorKind::Permanent);
    }
}
