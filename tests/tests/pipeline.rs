//! Upload, aggregate, collect end to end: duet-leader and duet-helper as separate processes on
//! loopback, the client SDK uploading, the collector SDK collecting; each collected result is
//! compared with the aggregate computed in the clear.

use duet_client::collect::Collector;
use duet_client::simulate::{clear_aggregate, random_measurement};
use duet_client::upload::Client;
use duet_common::messages::BatchMode;
use duet_common::vdaf::{AggregateResult, Measurement};
use duet_tests::{all_vdafs, past_hour, Deployment, LeaderOptions};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn every_prio3_variant_in_both_batch_modes() {
    let d = Deployment::start(LeaderOptions { max_job_size: 16 });
    let time = past_hour();
    let mut rng = rand::rng();
    for vdaf in all_vdafs() {
        // Time-interval: every report of the hour, in one batch.
        let task = d.create_task(vdaf.clone(), BatchMode::TimeInterval, 20, None, None).await;
        let measurements: Vec<Measurement> = (0..45).map(|_| random_measurement(&vdaf, &mut rng)).collect();
        let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
        let items: Vec<_> = measurements.iter().map(|m| (m.clone(), time + 7)).collect();
        let outcome = client.upload(&items).await.unwrap();
        assert_eq!((outcome.accepted, outcome.rejected.len()), (45, 0));
        let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
        let query = collector.query(Some((time, 3600))).unwrap();
        let result = collector.collect(query, TIMEOUT).await.unwrap();
        assert_eq!(result.report_count, 45, "{vdaf}");
        assert_eq!(result.result, clear_aggregate(&vdaf, &measurements), "{vdaf}");
        assert_eq!(result.interval_seconds, (time, time + 3600));

        // Leader-selected: batches of 20 to 25 reports; 60 reports make two full batches and a
        // last one of 10, which is released once nothing is left to fill it.
        let task = d.create_task(vdaf.clone(), BatchMode::LeaderSelected, 10, Some(25), None).await;
        let measurements: Vec<Measurement> = (0..60).map(|_| random_measurement(&vdaf, &mut rng)).collect();
        let client = Client::new(task.credentials.task.clone(), d.http.clone()).unwrap();
        let items: Vec<_> = measurements.iter().map(|m| (m.clone(), time + 60)).collect();
        assert_eq!(client.upload(&items).await.unwrap().accepted, 60);
        let collector = Collector::new(&task.credentials, d.http.clone()).unwrap();
        let mut counts = Vec::new();
        let mut total: Option<AggregateResult> = None;
        for _ in 0..3 {
            let r = collector.collect(collector.query(None).unwrap(), TIMEOUT).await.unwrap();
            counts.push(r.report_count);
            total = Some(match (total, r.result) {
                (None, x) => x,
                (Some(AggregateResult::Scalar(a)), AggregateResult::Scalar(b)) => AggregateResult::Scalar(a + b),
                (Some(AggregateResult::Vector(a)), AggregateResult::Vector(b)) => {
                    AggregateResult::Vector(a.iter().zip(&b).map(|(x, y)| x + y).collect())
                }
                other => panic!("mixed results {other:?}"),
            });
        }
        counts.sort();
        assert_eq!(counts, vec![10, 25, 25], "{vdaf}");
        assert_eq!(total.unwrap(), clear_aggregate(&vdaf, &measurements), "{vdaf}");
        // Every batch is taken: a fourth collection finds nothing ready.
        let err = collector.collect(collector.query(None).unwrap(), Duration::from_secs(3)).await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
    }
}
