//! `duet bench` runs end to end on a small number of reports, on both backends: real servers,
//! a collection whose result the bench checks against the aggregate in the clear, and every
//! figure present. Speed is not asserted here (a timed test on a shared machine would be
//! flaky); the figures are for people, from `duet bench` itself.

use duet_cli::process::sibling_binary;

/// How many databases the bench may have left behind.
async fn bench_databases() -> i64 {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(&duet_tests::postgres_admin_url()).await.unwrap();
    sqlx::query("SELECT COUNT(*) FROM pg_database WHERE datname LIKE 'duet_bench_%'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get::<i64, _>(0)
}

#[tokio::test]
async fn bench_runs_and_reports_every_figure() {
    let before = bench_databases().await;
    let out = std::process::Command::new(sibling_binary("duet").unwrap())
        .args(["bench", "--reports", "400", "--reports-per-request", "100", "--vdaf", "count", "--json"])
        .args(["--backend", "sqlite", "--backend", "postgres", "--postgres", &duet_tests::postgres_admin_url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let figures: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = figures.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{figures:#}");
    for (run, backend) in runs.iter().zip(["sqlite", "postgres"]) {
        assert_eq!(run["backend"], backend);
        assert_eq!(run["vdaf"], "Prio3Count");
        assert_eq!(run["reports"], 400);
        for field in [
            "upload_reports_per_second",
            "aggregation_reports_per_second",
            "floor_single_core",
            "floor_single_core_before",
            "floor_single_core_after",
            "floor_ratio",
        ] {
            assert!(run[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {run:#}");
        }
        let f = |field: &str| run[field].as_f64().unwrap();
        // The floor is the mean of the measurements around the run, and the ratio is taken to it.
        let floor = (f("floor_single_core_before") + f("floor_single_core_after")) / 2.0;
        assert!((f("floor_single_core") - floor).abs() < 1e-6 * floor, "{run:#}");
        let ratio = f("aggregation_reports_per_second") / (floor * f("cores"));
        assert!((f("floor_ratio") - ratio).abs() < 1e-6 * ratio, "{run:#}");
        assert!(run["collection_seconds"].as_f64().is_some_and(|v| v >= 0.0), "{run:#}");
        assert!(run["leader_peak_rss_mib"].as_f64().is_some_and(|v| v > 1.0), "{run:#}");
        assert!(run["helper_peak_anon_mib"].as_f64().is_some_and(|v| v > 0.0), "{run:#}");
    }
    assert!(stderr.contains("postgres, Prio3Count, 400 reports"), "{stderr}");
    assert_eq!(bench_databases().await, before, "the bench drops the PostgreSQL databases it made");
}
