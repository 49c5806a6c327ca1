//! An OTLP receiver for the tests, built from the official protobuf definitions
//! (`opentelemetry-proto`): the generated tonic gRPC services (traces, metrics) on one
//! port and an HTTP/protobuf endpoint (`POST /v1/traces`, `/v1/metrics`, decoded with
//! prost) on another, both on loopback. It keeps every request it receives, tagged with
//! the transport it came by, and answers like a collector.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{metric::Data, number_data_point},
    trace::v1::Span,
};

/// How a request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

#[derive(Default)]
struct Store {
    traces: Vec<(Transport, ExportTraceServiceRequest)>,
    metrics: Vec<(Transport, ExportMetricsServiceRequest)>,
}

type Shared = Arc<Mutex<Store>>;

struct Traces(Shared);
struct Metrics(Shared);

/// An export request, kept in its list of the [`Store`].
trait Keep: prost::Message + Default {
    fn keep(self, store: &mut Store, via: Transport);
}

impl Keep for ExportTraceServiceRequest {
    fn keep(self, store: &mut Store, via: Transport) {
        store.traces.push((via, self));
    }
}

impl Keep for ExportMetricsServiceRequest {
    fn keep(self, store: &mut Store, via: Transport) {
        store.metrics.push((via, self));
    }
}

/// The gRPC `export` of `$service`: keep the request, answer full success.
macro_rules! grpc_export {
    ($service:ident for $server:ident: $request:ty => $response:ty) => {
        #[tonic::async_trait]
        impl $service for $server {
            async fn export(
                &self,
                request: tonic::Request<$request>,
            ) -> Result<tonic::Response<$response>, tonic::Status> {
                let store = &mut self.0.lock().unwrap();
                request.into_inner().keep(store, Transport::Grpc);
                Ok(tonic::Response::new(<$response>::default()))
            }
        }
    };
}

grpc_export!(TraceService for Traces: ExportTraceServiceRequest => ExportTraceServiceResponse);
grpc_export!(MetricsService for Metrics: ExportMetricsServiceRequest => ExportMetricsServiceResponse);

/// `POST /v1/...`: an HTTP/protobuf `Request`, kept, answered with full success.
async fn http_export<Request: Keep, Response: prost::Message + Default>(
    State(store): State<Shared>,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    match Request::decode(body) {
        Ok(req) => {
            req.keep(&mut store.lock().unwrap(), Transport::HttpProtobuf);
            (StatusCode::OK, Response::default().encode_to_vec())
        }
        Err(_) => (StatusCode::BAD_REQUEST, Vec::new()),
    }
}

/// A running receiver; dropping it stops both servers.
pub struct Receiver {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    store: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

/// One received span with its resource.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub transport: Transport,
    pub resource: Vec<KeyValue>,
    pub span: Span,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<Value> {
        attr(&self.span.attributes, key)
    }

    pub fn resource_attr(&self, key: &str) -> Option<Value> {
        attr(&self.resource, key)
    }

    /// The attributes as (key, value) pairs, sorted by key.
    pub fn attrs(&self) -> Vec<(String, Value)> {
        let mut out: Vec<_> = self
            .span
            .attributes
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), Value::of(kv.value.as_ref()?)?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// An attribute value, as the tests compare them.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl Value {
    fn of(v: &AnyValue) -> Option<Self> {
        Some(match v.value.as_ref()? {
            any_value::Value::StringValue(s) => Value::Str(s.clone()),
            any_value::Value::IntValue(i) => Value::Int(*i),
            any_value::Value::DoubleValue(d) => Value::Double(*d),
            any_value::Value::BoolValue(b) => Value::Bool(*b),
            _ => return None,
        })
    }

    pub fn str(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| Value::of(kv.value.as_ref()?))
}

/// One data point of a received metric.
#[derive(Clone, Debug)]
pub struct Point {
    pub transport: Transport,
    pub name: String,
    pub unit: String,
    pub attributes: Vec<(String, Value)>,
    /// Sum or gauge value; for a histogram, its count.
    pub value: f64,
    /// Histograms only.
    pub sum: Option<f64>,
}

impl Point {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

impl Receiver {
    /// Starts both servers on ephemeral loopback ports.
    pub fn start() -> Self {
        Self::start_on(0, 0)
    }

    /// Starts both servers on the given loopback ports (0: any).
    pub fn start_on(grpc_port: u16, http_port: u16) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let store: Shared = Arc::default();
        let (grpc, http) = runtime.block_on(async {
            let grpc = tokio::net::TcpListener::bind(("127.0.0.1", grpc_port)).await;
            let http = tokio::net::TcpListener::bind(("127.0.0.1", http_port)).await;
            (
                grpc.expect("bind the gRPC receiver"),
                http.expect("bind the HTTP receiver"),
            )
        });
        let grpc_addr = grpc.local_addr().expect("gRPC address");
        let http_addr = http.local_addr().expect("HTTP address");
        let svc_store = Arc::clone(&store);
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Traces(Arc::clone(&svc_store))))
                .add_service(MetricsServiceServer::new(Metrics(svc_store)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc))
                .await
                .expect("gRPC receiver");
        });
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                post(http_export::<ExportTraceServiceRequest, ExportTraceServiceResponse>),
            )
            .route(
                "/v1/metrics",
                post(http_export::<ExportMetricsServiceRequest, ExportMetricsServiceResponse>),
            )
            .with_state(Arc::clone(&store));
        runtime.spawn(async move { axum::serve(http, app).await.expect("HTTP receiver") });
        Receiver {
            grpc_addr,
            http_addr,
            store,
            runtime: Some(runtime),
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let store = self.store.lock().unwrap();
        let mut out = Vec::new();
        for (transport, req) in &store.traces {
            for rs in &req.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(ReceivedSpan {
                            transport: *transport,
                            resource: resource.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every metric data point received so far, oldest request first.
    pub fn points(&self) -> Vec<Point> {
        let store = self.store.lock().unwrap();
        let mut out = Vec::new();
        for (transport, req) in &store.metrics {
            for rm in &req.resource_metrics {
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        let attrs = |kvs: &[KeyValue]| {
                            kvs.iter()
                                .filter_map(|kv| {
                                    Some((kv.key.clone(), Value::of(kv.value.as_ref()?)?))
                                })
                                .collect::<Vec<_>>()
                        };
                        let number = |v: &Option<number_data_point::Value>| match v {
                            Some(number_data_point::Value::AsInt(i)) => *i as f64,
                            Some(number_data_point::Value::AsDouble(d)) => *d,
                            None => f64::NAN,
                        };
                        let mut push = |attributes, value, sum| {
                            out.push(Point {
                                transport: *transport,
                                name: m.name.clone(),
                                unit: m.unit.clone(),
                                attributes,
                                value,
                                sum,
                            })
                        };
                        match &m.data {
                            Some(Data::Sum(s)) => s
                                .data_points
                                .iter()
                                .for_each(|p| push(attrs(&p.attributes), number(&p.value), None)),
                            Some(Data::Gauge(g)) => g
                                .data_points
                                .iter()
                                .for_each(|p| push(attrs(&p.attributes), number(&p.value), None)),
                            Some(Data::Histogram(h)) => h
                                .data_points
                                .iter()
                                .for_each(|p| push(attrs(&p.attributes), p.count as f64, p.sum)),
                            _ => {}
                        }
                    }
                }
            }
        }
        out
    }

    /// The newest point of metric `name` whose attributes include `with`.
    pub fn latest(&self, name: &str, with: &[(&str, Value)]) -> Option<Point> {
        self.points()
            .into_iter()
            .rev()
            .find(|p| p.name == name && with.iter().all(|(k, v)| p.attr(k) == Some(v)))
    }

    /// Waits until a span matches `pred`.
    pub fn wait_for_span(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| pred(s)) {
                return s;
            }
            if Instant::now() > deadline {
                let names: Vec<_> = self
                    .spans()
                    .iter()
                    .map(|s| (s.span.name.clone(), s.attrs()))
                    .collect();
                panic!("no {what} span within {timeout:?}; received: {names:#?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `count` spans match `pred` (more than `count` is an error).
    pub fn wait_for_spans(
        &self,
        what: &str,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let found: Vec<_> = self.spans().into_iter().filter(|s| pred(s)).collect();
            assert!(
                found.len() <= count,
                "{} {what} spans, expected {count}: {found:#?}",
                found.len()
            );
            if found.len() == count {
                return found;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} of {count} {what} spans within {timeout:?}: {found:#?}",
                    found.len()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the newest point of `name` with attributes `with` satisfies `pred`.
    pub fn wait_for_point(
        &self,
        name: &str,
        with: &[(&str, Value)],
        timeout: Duration,
        pred: impl Fn(&Point) -> bool,
    ) -> Point {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.latest(name, with).filter(|p| pred(p)) {
                return p;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {name} {with:?} as expected within {timeout:?}; newest: {:?}",
                    self.latest(name, with)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Requests received so far, per transport: (trace requests, metric requests).
    pub fn requests(&self, transport: Transport) -> (usize, usize) {
        let store = self.store.lock().unwrap();
        (
            store.traces.iter().filter(|(t, _)| *t == transport).count(),
            store
                .metrics
                .iter()
                .filter(|(t, _)| *t == transport)
                .count(),
        )
    }

    /// Resource attributes of the first span or metric request, by key.
    pub fn resource(&self) -> HashMap<String, Value> {
        let store = self.store.lock().unwrap();
        let attrs = store
            .traces
            .first()
            .and_then(|(_, r)| r.resource_spans.first()?.resource.clone())
            .or_else(|| {
                store
                    .metrics
                    .first()
                    .and_then(|(_, r)| r.resource_metrics.first()?.resource.clone())
            })
            .map(|r| r.attributes)
            .unwrap_or_default();
        attrs
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), Value::of(kv.value.as_ref()?)?)))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
