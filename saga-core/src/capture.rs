//! Capturing the `tracing` events that steps emit into their Operation's log.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, LazyLock, RwLock, Weak};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::id::OperationId;
use crate::oplog::{LogLevel, LogSink, LogSource};

/// The name of the span the engine opens around every `execute` and `compensate`.
pub(crate) const STEP_SPAN: &str = "saga_step";

/// The sinks of the Operations running in this process, by id.
static SINKS: LazyLock<RwLock<HashMap<OperationId, Weak<LogSink>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// Routes captured events of `operation` to `sink` until the returned guard is dropped.
pub(crate) fn register(operation: OperationId, sink: &Arc<LogSink>) -> Registration {
    let mut sinks = SINKS.write().unwrap_or_else(|p| p.into_inner());
    sinks.insert(operation, Arc::downgrade(sink));
    Registration { operation }
}

/// Removes a sink from the routing table when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    operation: OperationId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sinks = SINKS.write().unwrap_or_else(|p| p.into_inner());
        sinks.remove(&self.operation);
    }
}

/// A `tracing-subscriber` layer that copies every event emitted inside a step's `execute` or
/// `compensate` into that Operation's log, attributed to the Operation and the step.
///
/// Add it to the subscriber of the process that runs the executor; events outside steps pass by
/// untouched, and the layer filters nothing for the other layers.
///
/// ```
/// use tracing_subscriber::prelude::*;
/// let subscriber = tracing_subscriber::registry().with(saga_core::log::OperationLogLayer::new());
/// let _guard = tracing::subscriber::set_default(subscriber);
/// ```
#[derive(Clone, Debug, Default)]
pub struct OperationLogLayer {
    _private: (),
}

impl OperationLogLayer {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }
}

/// What the layer remembers of a step span.
struct StepSpan {
    operation: OperationId,
    step: String,
}

#[derive(Default)]
struct SpanFields {
    operation: Option<String>,
    step: Option<String>,
}

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        let text = text.trim_matches('"').to_owned();
        match field.name() {
            "operation" => self.operation = Some(text),
            "step" => self.step = Some(text),
            _ => {}
        }
    }
}

/// Formats an event as `message key=value ...`.
#[derive(Default)]
struct EventText {
    message: String,
    fields: String,
}

impl Visit for EventText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

impl<S> Layer<S> for OperationLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != STEP_SPAN {
            return;
        }
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        let (Some(operation), Some(step)) = (fields.operation, fields.step) else { return };
        let Ok(operation) = operation.parse::<OperationId>() else { return };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(StepSpan { operation, step });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else { return };
        for span in scope {
            let extensions = span.extensions();
            let Some(step) = extensions.get::<StepSpan>() else { continue };
            let sink = {
                let sinks = SINKS.read().unwrap_or_else(|p| p.into_inner());
                sinks.get(&step.operation).and_then(Weak::upgrade)
            };
            if let Some(sink) = sink {
                let mut text = EventText::default();
                event.record(&mut text);
                text.message.push_str(&text.fields);
                sink.push(
                    level(event.metadata().level()),
                    LogSource::Step,
                    Some(step.step.clone()),
                    text.message,
                );
            }
            return;
        }
    }
}

fn level(level: &Level) -> LogLevel {
    match *level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        _ => LogLevel::Debug,
    }
}
