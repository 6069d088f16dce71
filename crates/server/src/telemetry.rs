//! Logs, traces and metrics set-up (see docs/observability.md).
//!
//! - **Logs**: JSON lines by default (text for people at a terminal), filtered by `RUST_LOG`
//!   (default `info`). Each JSON line carries the fields of the spans it happened in (request
//!   id, caller, operation id, …) and, inside a trace, its `trace_id` and `span_id`. Nothing
//!   logged carries a credential: secrets live in types that do not print them, and the Klarna
//!   client never logs headers.
//! - **Traces**: OpenTelemetry, always on in the process, so that the W3C trace context of a
//!   request reaches Klarna and the logs whether or not spans are exported. Spans are
//!   exported over OTLP (gRPC, or HTTP with protobuf) in batches only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the SDK
//!   reads the other standard variables itself (`OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`,
//!   `OTEL_BSP_*`). An export failure is logged once per outage, and the end of the outage
//!   once; [`Telemetry::shutdown`] flushes what is pending.
//! - **Metrics**: a Prometheus recorder rendering histograms, whose upkeep runs on a timer.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{FilterExt, Targets, filter_fn};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use refund_gateway_domain::{OperationStore, TraceParent};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::LogFormat;

/// The service name spans carry when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const SERVICE_NAME: &str = "refund-gateway";

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` names a protocol the gateway does not speak.
    #[error(
        "{variable}={value:?} is not supported: use \"grpc\" or \"http/protobuf\" (or unset it)"
    )]
    UnsupportedProtocol {
        /// The variable read.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// The OTLP exporter could not be built (e.g. an endpoint that is not a URL).
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
}

/// The installed telemetry: keep it until the process ends, then call
/// [`Telemetry::shutdown`] to flush the spans not exported yet.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Installs the global log subscriber (with the OpenTelemetry layer) and the W3C trace
    /// context propagator. Call once, from `main`, inside the Tokio runtime (the gRPC exporter
    /// needs it). A second installation in one process is refused by `tracing` and leaves the
    /// first in place.
    pub fn install(format: LogFormat) -> Result<Self, TelemetryError> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let exporter = exporter_from_env(&|name| std::env::var(name).ok())?;
        let exporting = exporter.is_some();
        let mut builder = SdkTracerProvider::builder().with_resource(resource());
        if let Some(exporter) = exporter {
            builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).build());
        }
        // Without an exporter the provider still makes spans (and their ids), for the trace
        // context sent to Klarna and written in logs and audit events; it drops them at the end.
        let provider = builder.build();
        let otel = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            // Nothing here reads OpenTelemetry's own current context: a span's parent is the
            // current `tracing` span, and the trace context sent to Klarna and written in logs
            // is read from the span itself. Activating the context on every enter and exit
            // cost about 1% of the instructions per refund.
            .with_context_activation(false);
        // Spans are the gateway's own, at INFO whatever RUST_LOG says: quieter logs must not
        // cut the trace. Without an exporter the layer sees no event: it would attach each one
        // to its span as a span event, for a span that is then dropped.
        let otel = if exporting {
            otel.with_filter(own_spans()).boxed()
        } else {
            // Nor does it see the Klarna attempt spans: their context would only reach the
            // request sent to Klarna, and an untraced attempt sends its RPC's instead.
            otel.with_filter(own_spans().and(filter_fn(|meta| {
                meta.is_span() && meta.target() != refund_gateway_klarna::ATTEMPT_SPAN_TARGET
            })))
            .boxed()
        };
        let logs = log_layer(format).with_filter(log_filter());
        let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![otel, logs.boxed()];
        if tracing_subscriber::registry()
            .with(layers)
            .try_init()
            .is_ok()
        {
            // The JSON formatter reads span ids through the dispatcher it is part of.
            let _ = DISPATCH.set(tracing::dispatcher::get_default(
                tracing::Dispatch::downgrade,
            ));
        }
        if exporting {
            SPANS_EXPORTED.store(true, Ordering::Relaxed);
            tracing::info!("exporting traces over OTLP");
        }
        Ok(Self {
            provider,
            exporting,
        })
    }

    /// True when spans are exported.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports the spans still pending and stops the exporter (waiting at most a few seconds
    /// for the collector).
    pub async fn shutdown(self) {
        let provider = self.provider;
        // The batch processor's shutdown blocks until its thread has exported.
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        if self.exporting
            && let Ok(Err(e)) = flushed
        {
            tracing::warn!(error = %e, "traces not all exported at shutdown");
        }
    }
}

/// The W3C `traceparent` of the current span: what an operation keeps of the request that
/// created it, for the reconciler's span to link to. `None` outside a trace.
pub fn current_traceparent() -> Option<TraceParent> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let context = span.span_context();
    if !context.is_valid() {
        return None;
    }
    TraceParent::parse(&format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    ))
}

/// The remote span context `traceparent` names, to link a span to.
pub fn linked_context(traceparent: &TraceParent) -> opentelemetry::trace::SpanContext {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let flags = if traceparent.sampled() {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_hex(traceparent.trace_id()).unwrap_or(TraceId::INVALID),
        SpanId::from_hex(traceparent.span_id()).unwrap_or(SpanId::INVALID),
        flags,
        true,
        TraceState::default(),
    )
}

/// The OpenTelemetry trace id of the current span, `None` outside a trace.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// The crates whose spans and events become OpenTelemetry spans (and span events).
fn own_spans() -> Targets {
    Targets::new()
        .with_target("refund_gateway", tracing::Level::INFO)
        .with_target("refund_gateway_klarna", tracing::Level::INFO)
        .with_target("refund_gateway_store", tracing::Level::INFO)
}

/// `RUST_LOG`, default `info`, read once at start.
fn log_filter() -> EnvFilter {
    let directives = log_directives(&std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default());
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The log filter's directives for `RUST_LOG` (`wanted`), default `info`, with two
/// exceptions unless `wanted` names them:
/// - The OpenTelemetry crates' own diagnostics are off: they would log every failed export
///   (the gateway logs an outage once instead, see [`OutageLogging`]).
/// - The Klarna attempt spans are off: they are for traces, and no line about an attempt is
///   logged inside one (the call's own line, its resends and its failure are logged outside
///   it, with the method, path, status and correlation id; the rate limiter's Redis outage
///   lines, which can be, are about the account). Out of the logs, and out of the trace when
///   spans are not exported, an attempt makes no span at all; making one cost about 3% of
///   a refund's instructions (callgrind: 419,000 -> 408,000 at 64 concurrent).
fn log_directives(wanted: &str) -> String {
    let mut directives = if wanted.trim().is_empty() {
        "info".to_owned()
    } else {
        wanted.to_owned()
    };
    if !wanted.contains("opentelemetry") {
        directives.push_str(",opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off");
    }
    if !wanted.contains(refund_gateway_klarna::ATTEMPT_SPAN_TARGET) {
        directives.push(',');
        directives.push_str(refund_gateway_klarna::ATTEMPT_SPAN_TARGET);
        directives.push_str("=off");
    }
    directives
}

fn log_layer(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync> {
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => layer
            .fmt_fields(SpanFieldsJson)
            .event_format(JsonLines)
            .boxed(),
        LogFormat::Text => layer
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    }
}

/// The resource every span carries: the SDK's (from `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES`), named [`SERVICE_NAME`] when those do not name it, with the
/// gateway's version.
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let mut builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if !named {
        builder = builder.with_service_name(SERVICE_NAME);
    }
    builder.build()
}

/// The OTLP exporter the environment asks for, `None` when no endpoint is set (or
/// `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
fn exporter_from_env(
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<OutageLogging<opentelemetry_otlp::SpanExporter>>, TelemetryError> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or(set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    if endpoint.is_none() || disabled {
        return Ok(None);
    }
    let (variable, protocol) = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
        Some(p) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            set("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "grpc".to_owned()),
        ),
    };
    // The builders read the endpoint, headers, timeout and compression variables themselves.
    let exporter = match protocol.trim() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        _ => {
            return Err(TelemetryError::UnsupportedProtocol {
                variable,
                value: protocol,
            });
        }
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(Some(OutageLogging {
        inner: exporter,
        failing: Arc::default(),
    }))
}

/// An exporter that logs the first failed export of an outage (at WARN) and the first
/// success after it (at INFO), and nothing in between: a collector that is down must not
/// flood the logs, one line per batch.
#[derive(Debug)]
struct OutageLogging<E> {
    inner: E,
    failing: Arc<AtomicBool>,
}

impl<E: SpanExporter> SpanExporter for OutageLogging<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        let export = self.inner.export(batch);
        let failing = self.failing.clone();
        async move {
            let result = export.await;
            match &result {
                Err(e) if !failing.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(error = %e, spans, "trace export failing; spans are dropped until the collector answers (logged once per outage)");
                }
                Ok(()) if failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!("trace export recovered");
                }
                _ => {}
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Set once, by [`Telemetry::install`], when spans are exported.
static SPANS_EXPORTED: AtomicBool = AtomicBool::new(false);

/// True when this process exports spans. A span that only tells a trace its timing (a store
/// write's, say) is made only then: unexported, it would cost every request a span (about
/// 2% of a refund's instructions each) that nothing reads.
pub fn spans_exported() -> bool {
    SPANS_EXPORTED.load(Ordering::Relaxed)
}

/// The installed dispatcher, for the JSON formatter's trace ids (set once installed).
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

/// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
/// fields, then the fields of every span the event is in (the innermost wins a name both
/// have), `span` (the innermost span's name), and `trace_id` and `span_id` of that span.
///
/// Written as text, never as a `serde_json::Value`: the spans' fields are already JSON
/// members ([`SpanFieldsJson`]), and parsing them back into maps, once per span per line,
/// cost more than the rest of the line.
#[derive(Debug, Clone, Copy)]
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        // Every member, lowest precedence first: the line's own, the spans' fields from the
        // outermost, the event's fields, then the innermost span's name and trace context.
        let mut members = JsonMembers::from_scratch();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        members.text_member("timestamp", &now);
        members.text_member("level", event.metadata().level().as_str());
        members.text_member("target", event.metadata().target());
        // The spans, innermost first, for the trace context below.
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    members.out.extend_from_slice(fields.as_bytes());
                }
                spans.push((span.id(), span.name()));
            }
        }
        spans.reverse();
        event.record(&mut members);
        if let Some((_, name)) = spans.first() {
            members.text_member("span", name);
            // The innermost traced span's (an untraced Klarna attempt's is its RPC's). Read
            // after the spans' extensions are released: the lookup locks them.
            if let Some(dispatch) = DISPATCH.get().and_then(WeakDispatch::upgrade)
                && let Some(context) = spans.iter().find_map(|(id, _)| {
                    let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
                    let context = cx.span().span_context().clone();
                    context.is_valid().then_some(context)
                })
            {
                members.member("trace_id", &format_args!("{}", context.trace_id()));
                members.member("span_id", &format_args!("{}", context.span_id()));
            }
        }
        let text = std::str::from_utf8(&members.out).map_err(|_| std::fmt::Error)?;
        let parsed = split_members(text);
        writer.write_char('{')?;
        let mut first = true;
        for (i, (key, value)) in parsed.iter().enumerate() {
            if parsed[i + 1..].iter().any(|(later, _)| later == key) {
                continue;
            }
            if !first {
                writer.write_char(',')?;
            }
            first = false;
            writer.write_str(key)?;
            writer.write_char(':')?;
            writer.write_str(value)?;
        }
        drop(parsed);
        members.into_scratch();
        writer.write_str("}\n")
    }
}

/// The members of `text`, written by [`JsonMembers`] (`"key":value,` each), as (key, value)
/// JSON texts, in order. Stops at anything else: only [`JsonMembers`] writes it.
fn split_members(text: &str) -> Vec<(&str, &str)> {
    /// The length of the JSON string at the start of `text` (quotes included).
    fn string_len(text: &[u8]) -> Option<usize> {
        let mut i = 1;
        while let Some(found) = memchr::memchr2(b'"', b'\\', text.get(i..)?) {
            let at = i + found;
            if text[at] == b'"' {
                return Some(at + 1);
            }
            // An escape: the next byte is part of it.
            i = at + 2;
        }
        None
    }
    let bytes = text.as_bytes();
    let mut members = Vec::with_capacity(24);
    let mut at = 0;
    while bytes.get(at) == Some(&b'"') {
        let Some(key_len) = string_len(&bytes[at..]) else {
            break;
        };
        let key_end = at + key_len;
        if bytes.get(key_end) != Some(&b':') {
            break;
        }
        let value_start = key_end + 1;
        let value_end = if bytes.get(value_start) == Some(&b'"') {
            match string_len(&bytes[value_start..]) {
                Some(len) => value_start + len,
                None => break,
            }
        } else {
            match memchr::memchr(b',', &bytes[value_start..]) {
                Some(len) => value_start + len,
                None => break,
            }
        };
        if bytes.get(value_end) != Some(&b',') {
            break;
        }
        // Every boundary is an ASCII byte: the slices are on character boundaries.
        members.push((&text[at..key_end], &text[value_start..value_end]));
        at = value_end + 1;
    }
    members
}

/// A span's fields as JSON members, each followed by a comma (`"k":v,"k2":v2,`), appended as
/// they are recorded: [`JsonLines`] wraps them in braces when an event is written, and a
/// member recorded later wins. tracing-subscriber's `JsonFields` parses and re-serializes the
/// whole object on every record, for every span, whether or not an event is ever logged in
/// it; appending makes a span's bookkeeping a few small writes.
#[derive(Debug, Clone, Copy)]
struct SpanFieldsJson;

impl<'writer> FormatFields<'writer> for SpanFieldsJson {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut members = JsonMembers::from_scratch();
        fields.record(&mut members);
        let written =
            writer.write_str(std::str::from_utf8(&members.out).map_err(|_| std::fmt::Error)?);
        members.into_scratch();
        written
    }

    fn add_fields(
        &self,
        current: &mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut members = JsonMembers::from_scratch();
        fields.record(&mut members);
        current
            .fields
            .push_str(std::str::from_utf8(&members.out).map_err(|_| std::fmt::Error)?);
        members.into_scratch();
        Ok(())
    }
}

/// Writes each field as a JSON member followed by a comma, serialized straight into one
/// buffer (UTF-8: serde_json writes nothing else).
#[derive(Default)]
struct JsonMembers {
    out: Vec<u8>,
}

thread_local! {
    /// The buffer [`JsonMembers`] borrows, one per thread: a log line or a span's fields are
    /// assembled in it, then copied where they go. A fresh buffer grew by doubling, about ten
    /// reallocations per refund's worth of lines and spans.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl JsonMembers {
    /// A buffer of at most this many bytes goes back to [`SCRATCH`]: an exceptionally long
    /// line must not stay allocated on its thread.
    const SCRATCH_KEPT: usize = 16 * 1024;

    /// Members written into this thread's scratch buffer, taken (so a field whose formatting
    /// logs gets a fresh one): give it back with [`JsonMembers::into_scratch`].
    fn from_scratch() -> Self {
        let mut out = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
        out.clear();
        Self { out }
    }

    /// Returns the buffer to this thread's scratch.
    fn into_scratch(self) {
        if self.out.capacity() <= Self::SCRATCH_KEPT {
            // Only fails while the thread is exiting; the buffer is then dropped.
            let _ = SCRATCH.try_with(|scratch| scratch.set(self.out));
        }
    }

    fn member<T: serde::Serialize + ?Sized>(&mut self, name: &str, value: &T) {
        let mark = self.out.len();
        self.string(name);
        self.out.push(b':');
        if serde_json::to_writer(&mut self.out, value).is_ok() {
            self.out.push(b',');
        } else {
            // Serializing text, an integer or a boolean cannot fail; should it, the member
            // is left out whole rather than breaking the line.
            self.out.truncate(mark);
        }
    }

    /// A member whose value is text: [`JsonMembers::string`] for both halves.
    fn text_member(&mut self, name: &str, value: &str) {
        self.string(name);
        self.out.push(b':');
        self.string(value);
        self.out.push(b',');
    }

    /// `text` as a JSON string. Field names and most values need no escape: those are copied
    /// as they are, after one pass that looks for what JSON escapes (`"`, `\`, control
    /// characters; written without an early exit, so that it runs on whole vectors), which
    /// costs a fraction of escaping byte by byte; the rest go through serde_json.
    fn string(&mut self, text: &str) {
        let plain = !text.bytes().fold(false, |seen, b| {
            seen | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if plain {
            self.out.reserve(text.len() + 2);
            self.out.push(b'"');
            self.out.extend_from_slice(text.as_bytes());
            self.out.push(b'"');
        } else {
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut self.out, text);
        }
    }
}

impl tracing::field::Visit for JsonMembers {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.text_member(field.name(), value);
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.member(field.name(), &value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.member(field.name(), &value);
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.member(field.name(), &value);
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        // A non-finite float becomes null.
        self.member(field.name(), &serde_json::Value::from(value));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        // Escaped as it is formatted: no intermediate string.
        self.member(field.name(), &format_args!("{value:?}"));
    }
}

/// Bucket bounds of every histogram of durations, in seconds: from a millisecond (a replayed
/// answer) to a minute (a call waiting out Klarna's retries). Histograms, unlike summaries,
/// add up across replicas.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Bucket bounds of the store's commit latency: a group commit takes from tens of
/// microseconds (no fsync) to tens of milliseconds (a busy disk).
const COMMIT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Bucket bounds of the store's batch sizes (writes per commit).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often the recorder's upkeep runs: it drains the histograms' samples, which otherwise
/// pile up between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use, rendering histograms. `None`
/// when another recorder was installed first (then `/metrics` says so).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    use metrics_exporter_prometheus::Matcher;
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("store_commit_duration_seconds".into()),
                    &COMMIT_BUCKETS,
                )
                .ok()?
                .set_buckets_for_metric(Matcher::Full("store_batch_size".into()), &BATCH_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Runs the recorder's upkeep every [`UPKEEP_INTERVAL`] until `stop`.
pub async fn metrics_upkeep(mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(handle) = metrics_handle() else {
        return;
    };
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Refreshes the operators' gauges of operations needing attention every
/// [`UPKEEP_INTERVAL`] until `stop`: `operations_pending`,
/// `operations_pending_oldest_age_seconds` (0 when none is pending), `operations_requires_review`
/// and `operations_in_flight`. Counted in the store, so every replica shows the same numbers.
pub async fn attention_gauges(
    store: Arc<dyn OperationStore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = time::OffsetDateTime::now_utc();
        match store.attention(now).await {
            Ok(summary) => {
                let oldest = summary
                    .oldest_pending_since
                    .map_or(0.0, |since| (now - since).as_seconds_f64().max(0.0));
                metrics::gauge!("operations_pending").set(summary.pending as f64);
                metrics::gauge!("operations_pending_oldest_age_seconds").set(oldest);
                metrics::gauge!("operations_requires_review").set(summary.requires_review as f64);
                metrics::gauge!("operations_in_flight").set(summary.in_flight as f64);
            }
            // The gauges keep their last values; the store's health shows on /readyz.
            Err(e) => tracing::debug!(error = %e, "attention gauges not refreshed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klarna_attempt_spans_are_left_out_of_the_logs_unless_asked_for() {
        let off = format!("{}=off", refund_gateway_klarna::ATTEMPT_SPAN_TARGET);
        let asked = format!("warn,{}=debug", refund_gateway_klarna::ATTEMPT_SPAN_TARGET);
        for (rust_log, attempts_off) in [("", true), ("debug", true), (asked.as_str(), false)] {
            let directives = log_directives(rust_log);
            // Parsed as written: an unparsable filter would fall back to plain `info`.
            let parsed = EnvFilter::try_new(&directives)
                .unwrap_or_else(|e| panic!("{directives}: {e}"))
                .to_string();
            let directives: Vec<&str> = parsed.split(',').collect();
            assert_eq!(directives.contains(&off.as_str()), attempts_off, "{parsed}");
            assert!(directives.contains(&"opentelemetry=off"), "{parsed}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    /// A writer that keeps what the log layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_span_and_event_fields() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = Registry::default().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(SpanFieldsJson)
                .event_format(JsonLines)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!(
                "rpc",
                caller = "pos, \"east\"",
                shared = "outer",
                count = 1_u64,
                later = tracing::field::Empty,
            );
            let _outer = outer.enter();
            outer.record("later", "a\\b\nc");
            let inner = tracing::info_span!("call", shared = "inner", ok = true);
            let _inner = inner.enter();
            tracing::info!(amount = -5_i64, level_of = ?Some("x"), "done: {}", "ünïcode,\"q\"");
        });
        let bytes = captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: serde_json::Value =
            serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], module_path!());
        assert!(line["timestamp"].is_string());
        assert_eq!(line["message"], "done: ünïcode,\"q\"");
        assert_eq!(line["caller"], "pos, \"east\"");
        assert_eq!(line["later"], "a\\b\nc");
        assert_eq!(line["count"], 1);
        assert_eq!(line["shared"], "inner", "the innermost span wins");
        assert_eq!(line["ok"], true);
        assert_eq!(line["amount"], -5);
        assert_eq!(line["level_of"], "Some(\"x\")");
        assert_eq!(line["span"], "call");
        // Each key once.
        let keys = text.matches("\"shared\":").count();
        assert_eq!(keys, 1, "{text}");
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        let cases = [
            "",
            "plain text, with spaces: 0-9",
            "quote \" inside",
            "back\\slash",
            "new\nline, tab\t, bell\u{7}, nul\u{0}, unit separator\u{1f}",
            "delete \u{7f} and ünïcode ✓ stay",
            "\"",
        ];
        for case in cases {
            let mut members = JsonMembers::default();
            members.string(case);
            let written = String::from_utf8(members.out).unwrap_or_else(|e| panic!("{e}"));
            let expected = serde_json::to_string(case).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(written, expected, "{case:?}");
        }
    }

    #[test]
    fn split_members_stops_at_anything_else() {
        assert_eq!(
            split_members(r#""a":"x,\"y","b":1,"c":null,"#),
            vec![
                (r#""a""#, r#""x,\"y""#),
                (r#""b""#, "1"),
                (r#""c""#, "null")
            ]
        );
        assert_eq!(split_members(r#""a":1,"b":"open"#), vec![(r#""a""#, "1")]);
        assert_eq!(split_members(r#""a":1"#), vec![]);
        assert_eq!(split_members("garbage"), vec![]);
        // An escaped backslash right before the closing quote; an escape cut off at the end.
        assert_eq!(
            split_members(r#""a":"x\\","b\"":2,"#),
            vec![(r#""a""#, r#""x\\""#), (r#""b\"""#, "2")]
        );
        assert_eq!(split_members(r#""a":1,"b":"x\"#), vec![(r#""a""#, "1")]);
    }

    #[tokio::test]
    async fn no_endpoint_no_exporter() {
        assert!(matches!(exporter_from_env(&env(&[])), Ok(None)));
        assert!(matches!(
            exporter_from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            Ok(None)
        ));
        assert!(matches!(
            exporter_from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ])),
            Ok(None)
        ));
        assert!(matches!(
            exporter_from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ])),
            Ok(None)
        ));
    }

    #[tokio::test]
    async fn protocols() {
        for protocol in ["grpc", "http/protobuf"] {
            let built = exporter_from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ]));
            assert!(matches!(built, Ok(Some(_))), "{protocol}: {built:?}");
        }
        let refused = exporter_from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ]));
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"http/json\"")),
            "{refused:?}"
        );
    }
}
