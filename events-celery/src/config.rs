//! Configuration of the Celery backend: broker, task names, routing, time limits.

use std::collections::HashMap;
use std::time::Duration;

use crate::broker::BrokerUrl;
use crate::codec::{Compression, DEFAULT_TASK_PREFIX, DeliveryMode, EncodeOptions, KwargsRepr};
use crate::error::CeleryError;

/// Where one event's messages go.
///
/// ```
/// use events_celery::Route;
///
/// // Celery's way: straight to a queue through the default exchange.
/// let route = Route::queue("default");
/// // Through an exchange, with a routing key (RabbitMQ; on Redis the queue is used).
/// let routed = Route::queue("billing").via_exchange("events", "billing.invoice");
/// # let _ = (route, routed);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    queue: String,
    exchange: String,
    routing_key: String,
    priority: Option<u8>,
    delivery_mode: Option<DeliveryMode>,
    compression: Option<Option<Compression>>,
}

impl Route {
    /// Straight to `queue` through the default exchange (`""`, routing key = queue).
    pub fn queue(queue: impl Into<String>) -> Self {
        let queue = queue.into();
        Self {
            routing_key: queue.clone(),
            exchange: String::new(),
            queue,
            priority: None,
            delivery_mode: None,
            compression: None,
        }
    }

    /// Through `exchange` with `routing_key` (on RabbitMQ; Redis pushes to the queue).
    pub fn via_exchange(
        mut self,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        self.exchange = exchange.into();
        self.routing_key = routing_key.into();
        self
    }

    /// A default priority (0–9) for this event's messages.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Persistent or transient messages for this event, over the configuration's default
    /// ([`CeleryConfig::delivery_mode`]).
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = Some(mode);
        self
    }

    /// Compress this event's messages with `compression` (`None`: send them uncompressed),
    /// over the configuration's default ([`CeleryConfig::compression`]).
    pub fn compression(mut self, compression: Option<Compression>) -> Self {
        self.compression = Some(compression);
        self
    }

    /// The queue.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }
}

/// How the Celery backend publishes: the broker, task names, routing and limits.
///
/// ```
/// use std::time::Duration;
/// use events_celery::{CeleryConfig, Route};
///
/// let config = CeleryConfig::new("amqp://guest:guest@127.0.0.1:5672//")?
///     .default_queue("default")
///     .route("orders.order_placed", Route::queue("orders"))
///     .publish_timeout(Duration::from_secs(5));
/// assert_eq!(config.route_for("orders.order_placed").queue_name(), "orders");
/// assert_eq!(config.route_for("anything.else").queue_name(), "default");
/// # Ok::<(), events_celery::CeleryError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CeleryConfig {
    broker: BrokerUrl,
    task_prefix: String,
    default_route: Route,
    routes: HashMap<String, Route>,
    publish_timeout: Duration,
    queue_max_priority: Option<u8>,
    kwargs_repr: KwargsRepr,
    delivery_mode: DeliveryMode,
    compression: Option<Compression>,
}

/// The environment variables [`CeleryConfig::from_env`] (and so
/// [`WorkerConfig::from_env`](crate::WorkerConfig::from_env)) reads.
pub mod env {
    /// The broker URL (Celery's own name for it). Required.
    pub const BROKER_URL: &str = "CELERY_BROKER_URL";
    /// The default queue (default `celery`).
    pub const DEFAULT_QUEUE: &str = "EVENTS_CELERY_DEFAULT_QUEUE";
    /// The task-name prefix (default `domain_events.`).
    pub const TASK_PREFIX: &str = "EVENTS_CELERY_TASK_PREFIX";
    /// Per-event queues: `event=queue,event=queue`.
    pub const ROUTES: &str = "EVENTS_CELERY_ROUTES";
    /// The publish time limit in milliseconds (default 10000).
    pub const PUBLISH_TIMEOUT_MS: &str = "EVENTS_CELERY_PUBLISH_TIMEOUT_MS";
    /// `x-max-priority` for declared queues (Celery's `task_queue_max_priority`).
    pub const QUEUE_MAX_PRIORITY: &str = "EVENTS_CELERY_QUEUE_MAX_PRIORITY";
    /// `redacted` to keep payloads out of the `kwargsrepr` header.
    pub const KWARGSREPR: &str = "EVENTS_CELERY_KWARGSREPR";
    /// `persistent` (default) or `transient` (Celery's `task_default_delivery_mode`).
    pub const DELIVERY_MODE: &str = "EVENTS_CELERY_DELIVERY_MODE";
    /// A kombu compression method (`zlib`, `bzip2`, `lzma`, `zstd`, `brotli` or their aliases
    /// and content types) to compress every message with, or `none` (the default).
    pub const COMPRESSION: &str = "EVENTS_CELERY_COMPRESSION";
}

impl CeleryConfig {
    /// Celery's defaults on the given broker: queue `celery`, task names
    /// `domain_events.<event>`, a 10 s publish time limit.
    pub fn new(broker_url: &str) -> Result<Self, CeleryError> {
        Ok(Self {
            broker: BrokerUrl::parse(broker_url)?,
            task_prefix: DEFAULT_TASK_PREFIX.to_owned(),
            default_route: Route::queue("celery"),
            routes: HashMap::new(),
            publish_timeout: Duration::from_secs(10),
            queue_max_priority: None,
            kwargs_repr: KwargsRepr::Python,
            delivery_mode: DeliveryMode::Persistent,
            compression: None,
        })
    }

    /// From the environment variables in [`env`](mod@env): the broker from
    /// `CELERY_BROKER_URL` (required), the rest from `EVENTS_CELERY_*` over the defaults of
    /// [`new`](Self::new). [`WorkerConfig::from_celery`](crate::WorkerConfig::from_celery)
    /// gives a worker the same settings.
    ///
    /// ```no_run
    /// use events_celery::{CeleryBackend, CeleryConfig};
    ///
    /// let config = CeleryConfig::from_env()?;
    /// let backend = CeleryBackend::new(config)?;
    /// # Ok::<(), events_celery::CeleryError>(())
    /// ```
    pub fn from_env() -> Result<Self, CeleryError> {
        Self::from_vars(None, |name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), with this broker URL instead of `CELERY_BROKER_URL`
    /// (which is then not read).
    ///
    /// ```
    /// use events_celery::{BrokerKind, CeleryConfig};
    ///
    /// // The URL from your own settings; queue, routes, timeouts… still from the environment.
    /// let config = CeleryConfig::from_env_with_broker("redis://127.0.0.1:6379/0")?;
    /// assert_eq!(config.broker().kind(), BrokerKind::Redis);
    /// # Ok::<(), events_celery::CeleryError>(())
    /// ```
    pub fn from_env_with_broker(broker_url: &str) -> Result<Self, CeleryError> {
        Self::from_vars(Some(broker_url), |name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables (tests read a map).
    fn from_vars(
        broker_url: Option<&str>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CeleryError> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let url = match broker_url {
            Some(url) => url.to_owned(),
            None => var(env::BROKER_URL).ok_or_else(|| {
                CeleryError::Config(format!(
                    "no broker URL: set {} (e.g. amqp://guest:guest@127.0.0.1:5672//) or pass \
                     the URL itself",
                    env::BROKER_URL
                ))
            })?,
        };
        let mut config = Self::new(&url)?;
        if let Some(queue) = var(env::DEFAULT_QUEUE) {
            config = config.default_queue(queue.trim());
        }
        // Read as it is: an empty prefix is a valid choice (task names = event names).
        if let Some(prefix) = lookup(env::TASK_PREFIX) {
            config = config.task_prefix(prefix);
        }
        if let Some(routes) = var(env::ROUTES) {
            for pair in routes.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let Some((event, queue)) = pair.split_once('=') else {
                    return Err(CeleryError::Config(format!(
                        "{}: `{pair}` is not `event=queue`",
                        env::ROUTES
                    )));
                };
                config = config.route(event.trim(), Route::queue(queue.trim()));
            }
        }
        if let Some(ms) = var(env::PUBLISH_TIMEOUT_MS) {
            let ms: u64 = ms.trim().parse().map_err(|_| {
                CeleryError::Config(format!(
                    "{}: `{ms}` is not a number of milliseconds",
                    env::PUBLISH_TIMEOUT_MS
                ))
            })?;
            config = config.publish_timeout(Duration::from_millis(ms));
        }
        if let Some(max) = var(env::QUEUE_MAX_PRIORITY) {
            let max: u8 = max.trim().parse().map_err(|_| {
                CeleryError::Config(format!(
                    "{}: `{max}` is not a number from 1 to 255",
                    env::QUEUE_MAX_PRIORITY
                ))
            })?;
            config = config.queue_max_priority(max);
        }
        if let Some(mode) = var(env::KWARGSREPR) {
            config = config.kwargs_repr(match mode.trim().to_ascii_lowercase().as_str() {
                "redacted" => KwargsRepr::Redacted,
                "python" => KwargsRepr::Python,
                other => {
                    return Err(CeleryError::Config(format!(
                        "{}: `{other}` is not `python` or `redacted`",
                        env::KWARGSREPR
                    )));
                }
            });
        }
        if let Some(mode) = var(env::DELIVERY_MODE) {
            let mode = mode
                .parse()
                .map_err(|e| CeleryError::Config(format!("{}: {e}", env::DELIVERY_MODE)))?;
            config = config.delivery_mode(mode);
        }
        if let Some(name) = var(env::COMPRESSION) {
            let compression = if name.trim().eq_ignore_ascii_case("none") {
                None
            } else {
                let method: Compression = name
                    .parse()
                    .map_err(|e| CeleryError::Config(format!("{}: {e}", env::COMPRESSION)))?;
                method
                    .ensure_enabled()
                    .map_err(|e| CeleryError::Config(format!("{}: {e}", env::COMPRESSION)))?;
                Some(method)
            };
            config = config.compression(compression);
        }
        Ok(config)
    }

    /// The task-name prefix (`domain_events.` by default).
    pub fn task_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.task_prefix = prefix.into();
        self
    }

    /// The queue for events without a route (`celery` by default, as in Celery).
    pub fn default_queue(mut self, queue: impl Into<String>) -> Self {
        self.default_route = Route::queue(queue);
        self
    }

    /// Routes one event's messages.
    pub fn route(mut self, event: impl Into<String>, route: Route) -> Self {
        self.routes.insert(event.into(), route);
        self
    }

    /// How long a publish may take, connecting included, before it fails (10 s by default).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Declares queues with `x-max-priority` (Celery's `task_queue_max_priority`); must match
    /// what the Python side declares.
    pub fn queue_max_priority(mut self, max: u8) -> Self {
        self.queue_max_priority = Some(max);
        self
    }

    /// What goes into the `kwargsrepr` header ([`KwargsRepr::Redacted`] keeps payloads out of
    /// broker contents and worker logs).
    pub fn kwargs_repr(mut self, repr: KwargsRepr) -> Self {
        self.kwargs_repr = repr;
        self
    }

    /// Persistent (the default, as Celery's `task_default_delivery_mode`) or transient
    /// messages; a [`Route::delivery_mode`] overrides it per event. See [`DeliveryMode`] for
    /// what transient gives up.
    pub fn delivery_mode(mut self, mode: DeliveryMode) -> Self {
        self.delivery_mode = mode;
        self
    }

    /// Compress every message's body as Python's `task_compression` setting does (kombu's
    /// `compression` header); `None`, the default, sends bodies as they are. A
    /// [`Route::compression`] overrides it per event. A method whose cargo feature is off
    /// makes publishing fail with an error naming the feature.
    pub fn compression(mut self, compression: Option<Compression>) -> Self {
        self.compression = compression;
        self
    }

    /// The broker.
    pub fn broker(&self) -> &BrokerUrl {
        &self.broker
    }

    /// The task-name prefix.
    pub fn prefix(&self) -> &str {
        &self.task_prefix
    }

    /// The route of an event.
    pub fn route_for(&self, event: &str) -> &Route {
        self.routes.get(event).unwrap_or(&self.default_route)
    }

    /// The publish time limit.
    pub fn timeout(&self) -> Duration {
        self.publish_timeout
    }

    pub(crate) fn max_priority(&self) -> Option<u8> {
        self.queue_max_priority
    }

    /// The queue of events without a route.
    pub(crate) fn default_queue_name(&self) -> &str {
        self.default_route.queue_name()
    }

    /// The queues of the configured routes (not the default one), in no order.
    pub(crate) fn routed_queues(&self) -> impl Iterator<Item = &str> {
        self.routes.values().map(Route::queue_name)
    }

    /// The encoding options for an event's messages under this configuration.
    pub fn encode_options(&self, event: &str) -> EncodeOptions {
        let route = self.route_for(event);
        let mut options = EncodeOptions::new()
            .task_prefix(self.task_prefix.clone())
            .routing(route.exchange.clone(), route.routing_key.clone())
            .kwargs_repr(self.kwargs_repr.clone())
            .delivery_mode(route.delivery_mode.unwrap_or(self.delivery_mode))
            .compression(route.compression.unwrap_or(self.compression));
        if let Some(priority) = route.priority {
            options = options.priority(priority);
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<CeleryConfig, CeleryError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CeleryConfig::from_vars(None, |name| vars.get(name).cloned())
    }

    #[test]
    fn delivery_mode_defaults_to_persistent_and_routes_override_it() {
        let config = CeleryConfig::new("amqp://localhost//").unwrap().route(
            "metrics.sampled",
            Route::queue("metrics").delivery_mode(DeliveryMode::Transient),
        );
        let mode = |event: &str| {
            let options = config.encode_options(event);
            let message =
                crate::codec::TaskMessage::from_payload(event, serde_json::json!({}), &options)
                    .unwrap();
            message.properties.delivery_mode
        };
        assert_eq!(mode("orders.placed"), Some(2));
        assert_eq!(mode("metrics.sampled"), Some(1));
        let transient = config.delivery_mode(DeliveryMode::Transient);
        assert_eq!(
            transient.encode_options("orders.placed"),
            EncodeOptions::new()
                .routing("", "celery")
                .delivery_mode(DeliveryMode::Transient)
        );
    }

    #[test]
    #[cfg(all(feature = "bzip2", feature = "lzma", feature = "zlib"))]
    fn compression_from_config_routes_and_environment() {
        let config = CeleryConfig::new("amqp://localhost//")
            .unwrap()
            .compression(Some(Compression::Bzip2))
            .route("small", Route::queue("small").compression(None))
            .route(
                "logs",
                Route::queue("logs").compression(Some(Compression::Lzma)),
            );
        let compression = |event: &str| {
            let options = config.encode_options(event);
            let message =
                crate::codec::TaskMessage::from_payload(event, serde_json::json!({}), &options)
                    .unwrap();
            message.properties.compression
        };
        assert_eq!(compression("orders.placed"), Some(Compression::Bzip2));
        assert_eq!(compression("small"), None);
        assert_eq!(compression("logs"), Some(Compression::Lzma));
        let url = (env::BROKER_URL, "redis://127.0.0.1:6379/3");
        for (value, expected) in [
            ("gzip", Some(Compression::Zlib)),
            ("application/x-bz2", Some(Compression::Bzip2)),
            ("XZ", Some(Compression::Lzma)),
            ("none", None),
        ] {
            let config = from(&[url, (env::COMPRESSION, value)]).unwrap();
            assert_eq!(config.compression, expected, "{value}");
        }
        let err = from(&[url, (env::COMPRESSION, "snappy")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("EVENTS_CELERY_COMPRESSION") && err.contains("`snappy`"),
            "{err}"
        );
        if !Compression::Brotli.is_enabled() {
            let err = from(&[url, (env::COMPRESSION, "brotli")])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("EVENTS_CELERY_COMPRESSION") && err.contains("feature `brotli`"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_given_broker_url_replaces_the_variable_and_the_rest_is_still_read() {
        let vars: HashMap<&str, &str> = [
            (env::BROKER_URL, "amqp://guest:guest@127.0.0.1:5672//"),
            (env::TASK_PREFIX, ""),
            (env::DEFAULT_QUEUE, "events"),
            (env::ROUTES, "billing.invoice_due=billing"),
            (env::QUEUE_MAX_PRIORITY, "10"),
        ]
        .into();
        let lookup = |name: &str| vars.get(name).map(|v| (*v).to_owned());
        let config = CeleryConfig::from_vars(Some("redis://127.0.0.1:6379/5"), lookup).unwrap();
        assert_eq!(config.broker().to_string(), "redis://127.0.0.1:6379/5");
        // An empty prefix is taken as it is (task names = event names).
        assert_eq!(config.prefix(), "");
        assert_eq!(config.route_for("anything").queue_name(), "events");

        // The worker derived from it consumes both queues, with the same prefix and priority.
        let worker = crate::WorkerConfig::from_celery(&config);
        assert_eq!(worker.broker().to_string(), "redis://127.0.0.1:6379/5");
        assert_eq!(worker.queue_names(), ["events", "billing"]);
        assert_eq!(worker.task_prefix, "");
        assert_eq!(worker.queue_max_priority, Some(10));
        assert_eq!(worker.publish_timeout, config.timeout());
    }

    #[test]
    fn environment_variables_are_read_and_bad_values_named() {
        let config = from(&[
            (env::BROKER_URL, "redis://127.0.0.1:6379/3"),
            (env::DEFAULT_QUEUE, "default"),
            (env::DELIVERY_MODE, "Transient"),
            (env::PUBLISH_TIMEOUT_MS, "2500"),
        ])
        .unwrap();
        assert_eq!(config.route_for("anything").queue_name(), "default");
        assert_eq!(config.timeout(), Duration::from_millis(2500));
        assert_eq!(config.delivery_mode, DeliveryMode::Transient);

        let err = from(&[
            (env::BROKER_URL, "redis://127.0.0.1:6379/3"),
            (env::DELIVERY_MODE, "durable"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("EVENTS_CELERY_DELIVERY_MODE") && err.contains("`durable`"),
            "{err}"
        );
        let err = from(&[]).unwrap_err().to_string();
        assert!(err.contains("CELERY_BROKER_URL"), "{err}");
    }
}
