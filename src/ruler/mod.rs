//! Ruler: evaluates LogQL alerting and recording rules per tenant, sends alerts to
//! Alertmanager and recorded series to Prometheus, and serves the rule APIs.
//!
//! Owns rule files (`rulefmt`, `store`), the alert state machine (`alerting`),
//! recording (`recording`), scheduling and reloads (`manager`), one evaluation
//! (`group`), delivery (`notifier`, `remote_write`), templates, metrics, the HTTP
//! handlers (`api`) and the offline checker behind `lode rules check` (`check`). It does
//! not own running LogQL: it asks a [`RuleQuerier`], which [`EngineQuerier`] implements
//! over the server's query engine and unit tests implement with controlled answers.

pub mod alerting;
pub mod api;
pub mod check;
pub mod config;
pub mod duration;
pub mod group;
pub mod manager;
pub mod metrics;
pub mod notifier;
pub mod querier;
pub mod recording;
pub mod remote_write;
pub mod rulefmt;
pub mod store;
pub mod template;

use lode_push::LabelSet;

use crate::TenantId;

pub use check::{check_files, CheckFailure, CheckSummary};
pub use config::RulerConfig;
pub use manager::Ruler;
pub use querier::EngineQuerier;

/// One series of an instant query's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: LabelSet,
    pub value: f64,
}

/// Why a rule's query failed; the message is shown as the rule's `lastError`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    pub message: String,
}

impl QueryError {
    pub fn new(message: impl Into<String>) -> QueryError {
        QueryError {
            message: message.into(),
        }
    }
}

/// How the ruler runs LogQL. The server implements it over its query engine: an
/// instant query at `ts_ns` (a `[5m]` range covers `(ts-5m, ts]`), a scalar result
/// returned as one label-less sample, a log query or any other failure as an error.
#[async_trait::async_trait]
pub trait RuleQuerier: Send + Sync {
    async fn instant(
        &self,
        tenant: &TenantId,
        query: &str,
        ts_ns: i64,
    ) -> Result<Vec<Sample>, QueryError>;
}

/// Why the ruler could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum RulerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("ruler background task failed: {0}")]
    Task(String),
}
