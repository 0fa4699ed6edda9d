//! Prometheus metrics for every service, through `prometheus-client`.
//!
//! A service declares each metric once, in one struct built by a [`Registry`]: the name as
//! it is scraped (`indaba_<name>_<unit>[_total]`), its help sentence and, for a labelled
//! metric, the label and every value it can take (labels are bounded enums, never a user
//! id). Recording is an atomic add on a handle the struct keeps; rendering happens per
//! scrape, in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::MetricType;

pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// The `Content-Type` of [`Registry::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The metrics of one service (or one gateway instance).
#[derive(Debug, Default)]
pub struct Registry(prometheus_client::registry::Registry);

impl Registry {
    /// A counter, named as scraped (ending in `_total`).
    pub fn counter(&mut self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.register(name, help, MetricType::Counter, c.clone());
        c
    }

    /// A gauge.
    pub fn gauge(&mut self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.register(name, help, MetricType::Gauge, g.clone());
        g
    }

    /// One counter per value of `label`, in the order of `values`. Every value is
    /// exported from the start (at zero), so each series exists before its first event.
    pub fn counters<const N: usize>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: [&'static str; N],
    ) -> [Counter; N] {
        let family = self.counter_family(name, help);
        values.map(|v| family.get_or_create_owned(&[(label, v)]))
    }

    /// One counter per value of `label`, for values only known at run time (a route
    /// table); like [`Registry::counters`] otherwise.
    pub fn counter_list(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = &'static str>,
    ) -> Vec<Counter> {
        let family = self.counter_family(name, help);
        values
            .into_iter()
            .map(|v| family.get_or_create_owned(&[(label, v)]))
            .collect()
    }

    /// A histogram with these bucket upper bounds (`+Inf` is added).
    pub fn histogram(&mut self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let h = Histogram::new(buckets.iter().copied());
        self.register(name, help, MetricType::Histogram, h.clone());
        h
    }

    /// The Prometheus text exposition of every metric registered.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.0);
        out
    }

    fn counter_family(
        &mut self,
        name: &str,
        help: &str,
    ) -> Family<[(&'static str, &'static str); 1], Counter> {
        let family = Family::default();
        self.register(name, help, MetricType::Counter, family.clone());
        family
    }

    /// prometheus-client adds `_total` to counters and a full stop to help texts: both are
    /// taken off here, so a metric is declared with the name and sentence scrapers see.
    fn register(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        metric: impl prometheus_client::registry::Metric,
    ) {
        let name = match kind {
            MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        self.0
            .register(name, help.strip_suffix('.').unwrap_or(help), metric);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names_help_and_every_label_value_as_declared() {
        let mut r = Registry::default();
        let jobs = r.counter("indaba_jobs_total", "Jobs received.");
        let [a, _b] = r.counters(
            "indaba_outcomes_total",
            "By outcome.",
            "outcome",
            ["a", "b"],
        );
        let open = r.gauge("indaba_open", "Open things.");
        let latency = r.histogram("indaba_latency_seconds", "Latency.", &[0.0005, 1.0]);
        jobs.inc();
        a.inc_by(2);
        open.set(-1);
        latency.observe(0.5);
        let text = r.render();
        for line in [
            "# HELP indaba_jobs_total Jobs received.\n# TYPE indaba_jobs_total counter\nindaba_jobs_total 1\n",
            "# HELP indaba_outcomes_total By outcome.\n",
            "indaba_outcomes_total{outcome=\"a\"} 2\n",
            "indaba_outcomes_total{outcome=\"b\"} 0\n",
            "# TYPE indaba_open gauge\nindaba_open -1\n",
            "indaba_latency_seconds_bucket{le=\"0.0005\"} 0\n",
            "indaba_latency_seconds_bucket{le=\"1\"} 1\n",
            "indaba_latency_seconds_bucket{le=\"+Inf\"} 1\n",
            "indaba_latency_seconds_sum 0.5\n",
            "indaba_latency_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }
}
