//! The leader's own gauges on `/metrics`, read from its database at each scrape: aggregation jobs
//! by state, and the work waiting on the helper (duet-server's metrics module shows what both
//! roles share).

use crate::store::{LeaderJobState, Store};
use metrics::gauge;

/// Refreshes the leader's gauges from its store.
pub struct LeaderGauges(pub Store);

#[async_trait::async_trait]
impl duet_server::metrics::RoleGauges for LeaderGauges {
    async fn refresh(&self) {
        match self.0.aggregation_job_counts().await {
            Ok(counts) => {
                // A state with no job has no row, yet must read 0 rather than its last count.
                for state in LeaderJobState::ALL {
                    if !counts.iter().any(|(s, _)| s == state) {
                        gauge!("duet_aggregation_jobs", "state" => state.db()).set(0.0);
                    }
                }
                for (state, n) in counts {
                    gauge!("duet_aggregation_jobs", "state" => state.db()).set(n as f64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading job counts for /metrics failed"),
        }
        match self.0.leader_backlog().await {
            Ok(b) => {
                gauge!("duet_jobs_waiting_on_helper", "kind" => "aggregation").set(b.aggregation_jobs_waiting as f64);
                gauge!("duet_jobs_waiting_on_helper", "kind" => "collection").set(b.collection_jobs_waiting as f64);
                let now = self.0.now_seconds();
                let age = b.oldest_unaggregated_upload_seconds.map_or(0, |t| (now - t).max(0));
                gauge!("duet_oldest_unaggregated_report_age_seconds").set(age as f64);
            }
            Err(e) => tracing::warn!(error = %e, "reading the backlog for /metrics failed"),
        }
    }
}
