//! Prometheus metrics of this process, exposed at `/metrics` in the text format.
//!
//! Labels are bounded: the route is axum's matched pattern (`/api/v1/projects/{name}`),
//! never the raw path, so a scan of random URLs cannot grow the label set.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Requests for deployments (one atomic add each: the proxy's path stays lean).
    pub site_requests: Counter,
    /// Hostnames in the route table.
    pub routes: Gauge,
    /// Time to rebuild the route table from the domains table.
    pub route_reload: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("scalemesh");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route",
            http_duration.clone(),
        );
        let site_requests = Counter::default();
        registry.register(
            "site_requests",
            "Requests for deployments' hostnames",
            site_requests.clone(),
        );
        let routes = Gauge::default();
        registry.register("routes", "Hostnames in the route table", routes.clone());
        let route_reload = latency_histogram();
        registry.register(
            "route_reload_duration_seconds",
            "Time to rebuild the route table from the domains table",
            route_reload.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            site_requests,
            routes,
            route_reload,
        }
    }
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
