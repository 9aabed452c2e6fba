//! The one place that names a metric.
//!
//! RED metrics for the public port, labelled by route template (never the raw path, so label
//! cardinality stays bounded), an in-flight gauge, connection counts, build info, store
//! operations, and process metrics read from `/proc` at scrape time. Rendered by the admin
//! port's `/metrics` in the Prometheus text format; counters carry `_total` and durations are in
//! seconds, as Prometheus' conventions (and `promtool check metrics`) ask.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;

use prometheus_client::collector::Collector;
use std::fmt::Write as _;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Labels of one request: route template, not path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: RouteLabel,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    method: &'static str,
    route: RouteLabel,
}

/// A route template as a label value, shared: recording a request copies no text.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RouteLabel(Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

/// A request method as a metric label. Methods outside the standard nine share `other`, so
/// clients cannot mint labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodLabel(usize);

impl MethodLabel {
    const NAMES: [&'static str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "other",
    ];

    pub fn of(method: &Method) -> Self {
        Self(match *method {
            Method::GET => 0,
            Method::HEAD => 1,
            Method::POST => 2,
            Method::PUT => 3,
            Method::DELETE => 4,
            Method::PATCH => 5,
            Method::OPTIONS => 6,
            Method::TRACE => 7,
            _ => 8,
        })
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self.0]
    }
}

/// One route's request series, looked up in the families once per method and then kept:
/// recording a request then hashes no labels. `200` gets its own counter slot since nearly
/// every request ends there; other statuses go through the family.
#[derive(Debug)]
pub struct RouteSeries {
    route: Arc<str>,
    durations: [OnceLock<Histogram>; MethodLabel::NAMES.len()],
    ok: [OnceLock<Counter>; MethodLabel::NAMES.len()],
}

impl RouteSeries {
    /// The route template (or `unmatched`), as metrics and logs name it.
    pub fn route(&self) -> &str {
        &self.route
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// Every metric the service records, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram>,
    in_flight: Gauge,
    connections_open: Gauge,
    websockets_open: Gauge,
    connections_rejected: Counter,
    bodies_waiting: Gauge,
    store_operations: Family<StoreLabels, Counter>,
    store_errors: Family<StoreLabels, Counter>,
    store_full: Family<StoreLabels, Counter>,
    admin_refused: Family<RefusalLabels, Counter>,
    store_unavailable: Family<RefusalLabels, Counter>,
    store_up: Gauge,
    /// Each route template's series, made the first time a request matched it. Only templates
    /// the router holds (and `unmatched`) are ever here, so this stays as short as the route
    /// list, and a look along it costs less than hashing the template would.
    routes: RwLock<Vec<Arc<RouteSeries>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered on the public port, by method, route template and status",
            requests.clone(),
        );
        let durations = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to ~13 s: a hello answer sits in the first buckets, /delay in the last.
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register_with_unit(
            "http_request_duration",
            "Time from request head received to response head sent, by method and route template",
            Unit::Seconds,
            durations.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled on the public port",
            in_flight.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "http_connections_open",
            "Connections open on the public port",
            connections_open.clone(),
        );
        let websockets_open = Gauge::default();
        registry.register(
            "websockets_open",
            "WebSockets open on /ws/echo",
            websockets_open.clone(),
        );
        let connections_rejected = Counter::default();
        registry.register(
            "http_connections_rejected",
            "Connections closed at once because the connection limit was reached",
            connections_rejected.clone(),
        );
        let bodies_waiting = Gauge::default();
        registry.register(
            "http_request_bodies_waiting",
            "Requests with a body waiting for room in the body budget (--body-budget)",
            bodies_waiting.clone(),
        );
        let store_operations = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_operations",
            "Calls to the shared-state store, by operation",
            store_operations.clone(),
        );
        let store_errors = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Store calls that failed (unreachable or timed out), by operation",
            store_errors.clone(),
        );
        let store_full = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_full",
            "Writes the store refused for want of room (the memory store's budget, Redis's maxmemory), by operation",
            store_full.clone(),
        );
        let store_unavailable = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "store_unavailable",
            "Store calls the store could not serve, by the reason a client is told (\"connection refused\", \"sentinels disagree\", \"not confirmed by a replica\"...)",
            store_unavailable.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the shared-state store answers, 0 while it does not (or before its first answer)",
            store_up.clone(),
        );
        let admin_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "admin_requests_refused",
            "Admin port requests refused for want of a credential, by reason",
            admin_refused.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: crate::VERSION,
                commit: crate::COMMIT,
            })
            .set(1);
        registry.register(
            "hello_world_build_info",
            "Always 1; the labels say which build is running",
            build_info,
        );
        registry.register_collector(Box::new(ProcessCollector::new()));
        Self {
            registry,
            requests,
            durations,
            in_flight,
            connections_open,
            websockets_open,
            connections_rejected,
            bodies_waiting,
            store_operations,
            store_errors,
            store_full,
            admin_refused,
            store_unavailable,
            routes: RwLock::default(),
            store_up,
        }
    }

    /// The series of one route template (never a raw path: callers pass the template that
    /// matched, or `unmatched`); they appear in `/metrics` once a request used them.
    pub fn route_series(&self, template: &str) -> Arc<RouteSeries> {
        let find = |routes: &[Arc<RouteSeries>]| {
            routes
                .iter()
                .find(|series| &*series.route == template)
                .cloned()
        };
        let known = find(
            &self
                .routes
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        if let Some(series) = known {
            return series;
        }
        let mut routes = self
            .routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(series) = find(&routes) {
            return series;
        }
        let series = Arc::new(RouteSeries {
            route: Arc::from(template),
            durations: Default::default(),
            ok: Default::default(),
        });
        routes.push(series.clone());
        series
    }

    /// Records one answered request.
    pub fn record_request(
        &self,
        series: &RouteSeries,
        method: MethodLabel,
        status: u16,
        elapsed: Duration,
    ) {
        let request_labels = || RequestLabels {
            method: method.as_str(),
            route: RouteLabel(series.route.clone()),
            status,
        };
        if status == 200 {
            series.ok[method.0]
                .get_or_init(|| self.requests.get_or_create(&request_labels()).clone())
                .inc();
        } else {
            self.requests.get_or_create(&request_labels()).inc();
        }
        series.durations[method.0]
            .get_or_init(|| {
                self.durations
                    .get_or_create(&DurationLabels {
                        method: method.as_str(),
                        route: RouteLabel(series.route.clone()),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts an open WebSocket until the guard drops.
    pub fn websocket_opened(&self) -> InFlight {
        self.websockets_open.inc();
        InFlight(self.websockets_open.clone())
    }

    /// Counts an open connection until the guard drops.
    pub fn connection_opened(&self) -> InFlight {
        self.connections_open.inc();
        InFlight(self.connections_open.clone())
    }

    /// Counts a request waiting for room in the body budget until the guard drops.
    pub fn body_waiting(&self) -> InFlight {
        self.bodies_waiting.inc();
        InFlight(self.bodies_waiting.clone())
    }

    pub fn connection_rejected(&self) {
        self.connections_rejected.inc();
    }

    /// Records one store call, whether it failed, and whether the store refused it as full.
    pub fn record_store_operation(&self, operation: &'static str, failed: bool, full: bool) {
        let labels = StoreLabels { operation };
        self.store_operations.get_or_create(&labels).inc();
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
        if full {
            self.store_full.get_or_create(&labels).inc();
        }
    }

    /// Counts one store call that could not be served, by its reason: one of the store's fixed
    /// few words (`StoreError::unavailable_reason`), never a message from outside.
    pub fn record_store_unavailable(&self, reason: &'static str) {
        self.store_unavailable
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// Whether the store answers, as this replica last found it.
    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// Counts one admin request refused; `reason` is one of the admin port's fixed few.
    pub fn admin_request_refused(&self, reason: &'static str) {
        self.admin_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// Shows the refusal series of `reason` at 0 before any refusal, so an alert on its rate
    /// has a series from the start.
    pub fn admin_refusal_reason(&self, reason: &'static str) {
        drop(self.admin_refused.get_or_create(&RefusalLabels { reason }));
    }

    /// Every metric in the Prometheus text format (version 0.0.4), which every scraper and
    /// `promtool check metrics` read.
    pub fn render(&self) -> String {
        let mut open_metrics = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry)
            .expect("writing to a String cannot fail");
        to_prometheus_text(&open_metrics)
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Turns the client library's OpenMetrics text into the Prometheus text format: a counter
/// family is named with its `_total` suffix in `# HELP`/`# TYPE` (OpenMetrics names the family
/// without it, which the Prometheus format reads as samples with no help), and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines go.
fn to_prometheus_text(open_metrics: &str) -> String {
    let mut text = String::with_capacity(open_metrics.len());
    let mut lines = open_metrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            let counter_type = format!("# TYPE {name} counter");
            if lines.peek() == Some(&counter_type.as_str()) {
                lines.next();
                let help = &rest[name.len()..];
                let _ = writeln!(text, "# HELP {name}_total{help}");
                let _ = writeln!(text, "# TYPE {name}_total counter");
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Decrements its gauge when dropped, so early returns and panics cannot leak a count.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `process_*` metrics as the Prometheus client libraries of other languages name them,
/// read from `/proc/self` at scrape time (Linux only; elsewhere they are simply absent).
#[derive(Debug)]
struct ProcessCollector {
    start_time_seconds: f64,
    ticks_per_second: f64,
    page_size: f64,
}

impl ProcessCollector {
    fn new() -> Self {
        let start_time_seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        // Linux fixes USER_HZ at 100 and the page size at 4 KiB on the platforms we ship.
        Self {
            start_time_seconds,
            ticks_per_second: 100.0,
            page_size: 4096.0,
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge =
            |encoder: &mut DescriptorEncoder, name, help, unit: Option<&Unit>, value: f64| {
                let metric = ConstGauge::new(value);
                let metric_encoder =
                    encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
                metric.encode(metric_encoder)
            };
        gauge(
            &mut encoder,
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            self.start_time_seconds,
        )?;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces) start at index 0 = state.
            let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let field = |index: usize| fields.get(index).and_then(|f| f.parse::<f64>().ok());
            if let (Some(utime), Some(stime)) = (field(11), field(12)) {
                let cpu = ConstCounter::new((utime + stime) / self.ticks_per_second);
                let metric_encoder = encoder.encode_descriptor(
                    "process_cpu",
                    "User and system CPU time spent",
                    Some(&Unit::Seconds),
                    cpu.metric_type(),
                )?;
                cpu.encode(metric_encoder)?;
            }
            if let Some(vsize) = field(20) {
                gauge(
                    &mut encoder,
                    "process_virtual_memory",
                    "Virtual memory size",
                    Some(&Unit::Bytes),
                    vsize,
                )?;
            }
            if let Some(rss_pages) = field(21) {
                gauge(
                    &mut encoder,
                    "process_resident_memory",
                    "Resident memory size",
                    Some(&Unit::Bytes),
                    rss_pages * self.page_size,
                )?;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                None,
                fds.count() as f64,
            )?;
        }
        if let Some(max_fds) = max_open_files() {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Limit of open file descriptors",
                None,
                max_fds,
            )?;
        }
        Ok(())
    }
}

fn max_open_files() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_text_follows_prometheus_naming() {
        let metrics = Metrics::new();
        let root = metrics.route_series("/");
        metrics.record_request(
            &root,
            MethodLabel::of(&Method::GET),
            200,
            Duration::from_micros(150),
        );
        metrics.record_request(
            &root,
            MethodLabel::of(&Method::GET),
            200,
            Duration::from_micros(150),
        );
        metrics.record_request(
            &root,
            MethodLabel::of(&Method::POST),
            405,
            Duration::from_micros(90),
        );
        let other = Method::from_bytes(b"BREW").expect("a valid token");
        metrics.record_request(
            &root,
            MethodLabel::of(&other),
            501,
            Duration::from_micros(90),
        );
        metrics.record_store_operation("increment", true, false);
        metrics.record_store_operation("put", false, true);
        let text = metrics.render();
        assert!(
            text.contains("http_requests_total{method=\"GET\",route=\"/\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("http_requests_total{method=\"POST\",route=\"/\",status=\"405\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("http_requests_total{method=\"other\",route=\"/\",status=\"501\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("http_request_duration_seconds_count{method=\"GET\",route=\"/\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE http_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("store_errors_total{operation=\"increment\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("store_full_total{operation=\"put\"} 1"),
            "{text}"
        );
        assert!(text.contains("hello_world_build_info{"), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(
            text.contains("# TYPE http_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP http_requests_total HTTP requests"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    #[test]
    fn guards_give_back_what_they_took() {
        let metrics = Metrics::new();
        {
            let _one = metrics.in_flight();
            let _two = metrics.in_flight();
            assert!(metrics.render().contains("http_requests_in_flight 2"));
        }
        assert!(metrics.render().contains("http_requests_in_flight 0"));
    }
}
