//! Unit tests of the command line: parsing, inputs and outputs.
use super::*;
use duet_client::collect::time_interval_query;
use duet_common::dp::DpConfig;
use duet_common::messages::Query;
use duet_common::time::{Duration as DapDuration, Interval, Time, TimePrecision};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("duet").chain(args.iter().copied()))
}

fn create_args(extra: &[&str]) -> CreateArgs {
    try_create_args(extra).unwrap()
}

/// `duet task create` with fixed endpoints, tokens and sizes, and `extra`.
fn try_create_args(extra: &[&str]) -> Result<CreateArgs, clap::Error> {
    let mut args = vec![
        "task",
        "create",
        "--leader",
        "https://leader.example/dap",
        "--helper",
        "https://helper.example/dap/",
        "--leader-admin-token",
        "l-admin",
        "--helper-admin-token",
        "h-admin",
        "--min-batch-size",
        "10",
        "--time-precision",
        "3600",
        "--collector-credentials",
        "/tmp/creds.json",
    ];
    args.extend_from_slice(extra);
    match parse(&args)?.command {
        Command::Task(TaskCommand::Create(a)) => Ok(*a),
        other => panic!("{other:?}"),
    }
}

#[test]
fn task_create_builds_checked_parameters() {
    let args = create_args(&["--vdaf", "histogram", "--length", "16", "--batch-mode", "time-interval"]);
    let p = task_parameters(&args, TaskId::from_bytes([1; 32])).unwrap();
    assert_eq!(p.leader_endpoint, "https://leader.example/dap/");
    assert_eq!(p.helper_endpoint, "https://helper.example/dap/");
    assert_eq!(p.vdaf, VdafConfig::Prio3Histogram { length: 16, chunk_length: 4 });
    assert_eq!((p.batch_mode, p.min_batch_size, p.time_precision), (BatchMode::TimeInterval, 10, 3600));
    assert_eq!(p.task_info, "duet");
    assert_eq!(p.dp, None);

    let noisy = ["--vdaf", "histogram", "--length", "4", "--batch-mode", "time-interval", "--dp-epsilon", "0.5"];
    let p = task_parameters(&create_args(&[&noisy[..], &["--dp-budget", "3"]].concat()), TaskId::random()).unwrap();
    assert_eq!(p.dp, Some(DpConfig::laplace("0.5", Some("3"))));
    // Count and Sum take noise too, and zCDP is chosen by giving rho.
    let count = ["--vdaf", "count", "--batch-mode", "time-interval", "--dp-epsilon", "1"];
    assert_eq!(task_parameters(&create_args(&count), TaskId::random()).unwrap().dp, Some(DpConfig::laplace("1", None)));
    let sum = ["--vdaf", "sum", "--max-measurement", "100", "--batch-mode", "time-interval", "--dp-rho", "0.1"];
    let p = task_parameters(&create_args(&[&sum[..], &["--dp-budget", "0.5"]].concat()), TaskId::random()).unwrap();
    assert_eq!(p.dp, Some(DpConfig::gaussian("0.1", Some("0.5"))));
    // A budget below one collection, and a bad parameter, are refused before any request.
    let small = create_args(&[&noisy[..], &["--dp-budget", "0.1"]].concat());
    let err = task_parameters(&small, TaskId::random()).unwrap_err().message;
    assert!(err.contains("the budget is smaller than one collection's epsilon"), "{err}");
    let bad = create_args(&[&sum[..6], &["--dp-rho", "0"]].concat());
    assert!(task_parameters(&bad, TaskId::random()).unwrap_err().message.contains("rho"));
    // One mechanism at a time, and no budget without one.
    assert!(try_create_args(&[&count[..], &["--dp-rho", "0.1"]].concat()).is_err());
    assert!(try_create_args(&["--vdaf", "count", "--batch-mode", "time-interval", "--dp-budget", "1"]).is_err());

    let args = create_args(&[
        "--vdaf",
        "sumvec",
        "--length",
        "10",
        "--max-measurement",
        "255",
        "--batch-mode",
        "leader-selected",
        "--max-batch-size",
        "20",
        "--task-start",
        "3600",
        "--task-end",
        "7200",
    ]);
    let p = task_parameters(&args, TaskId::from_bytes([1; 32])).unwrap();
    // 10 entries of 8 bits: chunks of floor(sqrt(80)) = 8.
    assert_eq!(p.vdaf, VdafConfig::Prio3SumVec { length: 10, max_measurement: 255, chunk_length: 8 });
    assert_eq!(p.task_interval_seconds, Some((3600, 7200)));

    let bad = |extra: &[&str]| task_parameters(&create_args(extra), TaskId::random()).unwrap_err();
    assert!(bad(&["--vdaf", "sum", "--batch-mode", "time-interval"]).message.contains("--max-measurement"));
    assert!(bad(&["--vdaf", "count", "--length", "3", "--batch-mode", "time-interval"]).message.contains("--length"));
    assert!(bad(&["--vdaf", "count", "--batch-mode", "time-interval", "--max-batch-size", "20"])
        .message
        .contains("leader-selected"));
    assert!(bad(&["--vdaf", "count", "--batch-mode", "leader-selected", "--max-batch-size", "5"])
        .message
        .contains("at least"));
    let unaligned =
        bad(&["--vdaf", "count", "--batch-mode", "time-interval", "--task-start", "1", "--task-end", "3600"]);
    assert_eq!(unaligned.code, 1);
    assert!(unaligned.message.contains("aligned"), "{}", unaligned.message);
    let short = bad(&["--vdaf", "count", "--batch-mode", "time-interval", "--report-expiry-age", "600"]);
    assert!(
        short.message.contains("--report-expiry-age 600 is shorter than --time-precision 3600"),
        "{}",
        short.message
    );
    let fine = ["--vdaf", "count", "--batch-mode", "time-interval", "--report-expiry-age", "86400"];
    assert_eq!(create_args(&fine).report_expiry_age, Some(86400));
    assert!(task_parameters(&create_args(&fine), TaskId::random()).is_ok());
}

#[test]
fn usage_errors_and_flag_pairs() {
    // An interval needs both ends; upload needs some measurements.
    assert!(parse(&["collect", "--credentials", "c.json", "--interval-start", "0"]).is_err());
    assert!(parse(&["upload", "--task", "t.json"]).is_err());
    let cli = parse(&["upload", "--task", "t.json", "--measurement", "1,2,3", "--measurement", "4"]).unwrap();
    let Command::Upload(args) = cli.command else { panic!() };
    assert_eq!(args.measurement, ["1,2,3", "4"]);
    assert_eq!(args.reports_per_request, 1000);
    let cli = parse(&[
        "collect",
        "--credentials",
        "c.json",
        "--interval-start",
        "3600",
        "--interval-duration",
        "7200",
        "--json",
    ])
    .unwrap();
    let Command::Collect(args) = cli.command else { panic!() };
    assert_eq!(args.interval_start.zip(args.interval_duration), Some((3600, 7200)));
    assert!(args.json);
    assert_eq!(args.timeout, 300);
}

#[test]
fn collect_interval_conversion_refuses_unaligned_intervals() {
    let p = TimePrecision::from_seconds(600).unwrap();
    assert_eq!(
        time_interval_query(1_800_000_000, 1200, p).unwrap(),
        Query::time_interval(Interval::new(Time::from_units(3_000_000), DapDuration::from_units(2)))
    );
    let err: CliError = time_interval_query(1_800_000_300, 1200, p).unwrap_err().into();
    assert_eq!(err.code, 1);
    assert!(err.message.contains("multiples of the task's time precision (600 s)"), "{}", err.message);
}

#[test]
fn exit_codes_follow_the_error_kind() {
    let code = |e: ClientError| CliError::from(e).code;
    assert_eq!(code(ClientError::Timeout { timeout: Duration::from_secs(1), job: None }), 3);
    assert_eq!(code(ClientError::Query("x".into())), 1);
    assert_eq!(code(ClientError::Status { context: "x".into(), status: 400, problem: None }), 2);
    assert_eq!(code(ClientError::Protocol("x".into())), 2);
}

#[test]
fn measurement_files_skip_comments_and_blanks() {
    let dir = std::env::temp_dir().join(format!("duet-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("m.txt");
    std::fs::write(&file, "# header\n1\n\n 0 \n1\n").unwrap();
    let file_arg = file.to_str().unwrap();
    // Measurements come either from the command line or from a file, not both.
    assert!(parse(&["upload", "--task", "t.json", "--measurements-file", file_arg, "--measurement", "1"]).is_err());
    let cli = parse(&["upload", "--task", "t.json", "--measurements-file", file_arg]).unwrap();
    let Command::Upload(args) = cli.command else { panic!() };
    let texts = measurement_texts(&args).unwrap();
    assert_eq!(texts, ["1", "0", "1"]);
    let ms = parse_measurements(&VdafConfig::Prio3Count, &texts).unwrap();
    assert_eq!(ms, [Measurement::Count(true), Measurement::Count(false), Measurement::Count(true)]);
    let err = parse_measurements(&VdafConfig::Prio3Count, &["1".into(), "7".into()]).unwrap_err();
    assert_eq!(err.code, 1);
    assert!(err.message.starts_with("measurement 2:"), "{}", err.message);

    // The credentials file is created owner-only and never over an existing file.
    let secret = dir.join("creds.json");
    let _ = std::fs::remove_file(&secret);
    drop(create_secret_file(&secret).unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(create_secret_file(&secret).unwrap_err().code, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keygen_prints_a_usable_key_pair() {
    let cli = parse(&["keygen", "--id", "5", "--kem", "p256", "--aead", "chacha20-poly1305"]).unwrap();
    let Command::Keygen(args) = cli.command else { panic!() };
    let json = keygen_json(&args).unwrap();
    let config = duet_common::task::hpke_config_from_b64(json["hpke_config"].as_str().unwrap()).unwrap();
    let sk = duet_common::hpke::HpkePrivateKey::from_base64(json["hpke_private_key"].as_str().unwrap()).unwrap();
    // The private key belongs to the printed configuration.
    let kp = HpkeKeypair::new(config, sk).unwrap();
    assert_eq!(kp.config().kem_id, duet_common::hpke::kem::P256_HKDF_SHA256);
    assert_eq!(kp.config().aead_id, duet_common::hpke::aead::CHACHA20_POLY1305);
    assert_eq!(kp.config().id, HpkeConfigId(5));
    assert!(parse(&["keygen", "--kem", "rsa"]).is_err());
}

#[test]
fn key_tables_name_the_algorithms() {
    let key = duet_common::keys::HpkeKeyInfo {
        id: 7,
        kem_id: 0x0010,
        kdf_id: 1,
        aead_id: 3,
        state: "retired".into(),
        created_at_seconds: 0,
        state_changed_at_seconds: 1_700_000_000,
        hpke_config: String::new(),
    };
    let table = key_table(&[key]);
    let row = table.lines().nth(1).unwrap();
    assert_eq!(row, "  7  retired   p256              hkdf-sha256  chacha20-poly1305  2023-11-14T22:13:20Z");
    assert_eq!(algorithm_name::<Kem>(0x9999, |v| v.id().0), "0x9999");
    let cli = parse(&["hpke-keys", "delete", "--aggregator", "http://a/", "--admin-token", "t", "3", "--force"]);
    assert!(matches!(cli.unwrap().command, Command::HpkeKeys(HpkeKeysCommand::Delete { id: 3, force: true, .. })));
}
