//! `duet`: the command-line tool for people working with duet tasks. It makes HPKE key pairs,
//! provisions tasks on both aggregators, uploads measurements as a DAP client, and collects
//! aggregates as the collector.
//!
//! Exit codes: 0 success, 1 usage or input error, 2 server or protocol error (including reports
//! the leader rejected), 3 timeout.

use clap::{Parser, ValueEnum};
use duet_client::admin::{provision_task, AdminClient, NewTask};
use duet_client::collect::{Collector, CollectorOptions};
use duet_client::format::{render_json, render_text};
use duet_client::simulate::default_chunk_length;
use duet_client::upload::{Client, ClientOptions};
use duet_client::{http, timefmt, ClientError};
use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::dp::DpConfig;
use duet_common::hpke::HpkeKeypair;
use duet_common::messages::{BatchMode, HpkeConfigId, ReportError, TaskId};
use duet_common::task::{hpke_config_to_b64, CollectorCredentials, TaskParameters};
use duet_common::vdaf::{Measurement, VdafConfig};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

mod args;

use args::*;

/// A failure with the exit code it maps to.
#[derive(Debug)]
struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    fn usage(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }

    fn server(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = if e.is_timeout() {
            3
        } else if e.is_input_error() {
            1
        } else {
            2
        };
        Self { code, message: e.to_string() }
    }
}

type CliResult<T = ()> = Result<T, CliError>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            };
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duet: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duet: error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("warn,duet={level},duet_client={level}")));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn run(command: Command) -> CliResult {
    match command {
        Command::Keygen(args) => keygen(&args),
        Command::DatabaseKey => print_stdout(&format!("{}\n", duet_cli::process::database_key())),
        Command::Task(TaskCommand::Create(args)) => task_create(*args).await,
        Command::Upload(args) => upload(args).await,
        Command::Collect(args) => collect(args).await,
        Command::HpkeKeys(command) => hpke_keys(command).await,
        Command::Demo(args) => demo(args).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench(args).await,
        Command::InteropClient(args) => serve_interop(args, duet_cli::interop::client_router()).await,
        Command::InteropCollector(args) => serve_interop(args, duet_cli::interop::collector_router()).await,
    }
}

/// The CLI's HTTP client. `DUET_CA_FILE` names extra trust roots (PEM) for servers whose TLS
/// certificates the system does not know (a private CA, a test certificate).
fn http_client() -> CliResult<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = std::env::var_os("DUET_CA_FILE") {
        let pem = std::fs::read(&path)
            .map_err(|e| CliError::usage(format!("DUET_CA_FILE {}: {e}", Path::new(&path).display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| CliError::usage(format!("DUET_CA_FILE {}: {e}", Path::new(&path).display())))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        // Tokens must never follow a redirect to another host.
        .redirect(reqwest::redirect::Policy::none())
        // Within duet servers' idle deadline (60 s by default), so that no request goes out on
        // a connection the server is closing.
        .pool_idle_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .user_agent(concat!("duet/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CliError::server(format!("cannot set up HTTP: {e}")))
}

fn keygen_json(args: &KeygenArgs) -> CliResult<serde_json::Value> {
    let keypair =
        HpkeKeypair::generate(HpkeConfigId(args.id), args.suite.kem.id(), args.suite.kdf.id(), args.suite.aead.id())
            .map_err(|e| CliError::usage(e.to_string()))?;
    Ok(serde_json::json!({
        "hpke_config": hpke_config_to_b64(keypair.config()),
        "hpke_private_key": keypair.private_key().to_base64(),
    }))
}

fn keygen(args: &KeygenArgs) -> CliResult {
    let json = keygen_json(args)?;
    print_stdout(&format!("{json:#}\n"))
}

fn print_stdout(text: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| CliError::usage(format!("cannot write output: {e}")))
}

/// An endpoint as it goes into the task: a valid http(s) base URL, with the trailing slash
/// every duet endpoint has (the string is bound into HPKE associated data, so it must be one
/// canonical form that all parties share).
fn normalize_endpoint(which: &str, endpoint: &str) -> CliResult<String> {
    http::endpoint_base(endpoint).map(|u| u.to_string()).map_err(|e| CliError::usage(format!("--{which}: {e}")))
}

/// Bits needed to encode values up to `max`.
fn bits(max: u64) -> u64 {
    u64::from(64 - max.leading_zeros()).max(1)
}

fn vdaf_config(args: &CreateArgs) -> CliResult<VdafConfig> {
    let need = |value: Option<u64>, flag: &str| {
        value.ok_or_else(|| CliError::usage(format!("--vdaf {:?} needs --{flag}", args.vdaf).to_lowercase()))
    };
    let length = || need(args.length.map(u64::from), "length").map(|l| l as u32);
    let unused = |flags: &[(&str, bool)]| -> CliResult {
        match flags.iter().find(|(_, present)| *present) {
            Some((flag, _)) => {
                Err(CliError::usage(format!("--{flag} does not apply to --vdaf {:?}", args.vdaf).to_lowercase()))
            }
            None => Ok(()),
        }
    };
    let config = match args.vdaf {
        VdafKind::Count => {
            unused(&[
                ("max-measurement", args.max_measurement.is_some()),
                ("length", args.length.is_some()),
                ("chunk-length", args.chunk_length.is_some()),
                ("max-weight", args.max_weight.is_some()),
            ])?;
            VdafConfig::Prio3Count
        }
        VdafKind::Sum => {
            unused(&[
                ("length", args.length.is_some()),
                ("chunk-length", args.chunk_length.is_some()),
                ("max-weight", args.max_weight.is_some()),
            ])?;
            VdafConfig::Prio3Sum { max_measurement: need(args.max_measurement, "max-measurement")? }
        }
        VdafKind::Sumvec => {
            unused(&[("max-weight", args.max_weight.is_some())])?;
            let length = length()?;
            let max_measurement = need(args.max_measurement, "max-measurement")?;
            let chunk_length = args
                .chunk_length
                .unwrap_or_else(|| default_chunk_length(u64::from(length).saturating_mul(bits(max_measurement))));
            VdafConfig::Prio3SumVec { length, max_measurement, chunk_length }
        }
        VdafKind::Histogram => {
            unused(&[("max-measurement", args.max_measurement.is_some()), ("max-weight", args.max_weight.is_some())])?;
            let length = length()?;
            let chunk_length = args.chunk_length.unwrap_or_else(|| default_chunk_length(u64::from(length)));
            VdafConfig::Prio3Histogram { length, chunk_length }
        }
        VdafKind::Multihot => {
            unused(&[("max-measurement", args.max_measurement.is_some())])?;
            let length = length()?;
            let max_weight = need(args.max_weight, "max-weight")?;
            let chunk_length =
                args.chunk_length.unwrap_or_else(|| default_chunk_length(u64::from(length) + bits(max_weight)));
            VdafConfig::Prio3MultihotCountVec { length, chunk_length, max_weight }
        }
    };
    Ok(config)
}

/// The task parameters `duet task create` provisions, checked as far as they can be offline.
fn task_parameters(args: &CreateArgs, task_id: TaskId) -> CliResult<TaskParameters> {
    let batch_mode = match args.batch_mode {
        BatchModeArg::TimeInterval => BatchMode::TimeInterval,
        BatchModeArg::LeaderSelected => BatchMode::LeaderSelected,
    };
    match (batch_mode, args.max_batch_size) {
        (BatchMode::TimeInterval, Some(_)) => {
            return Err(CliError::usage("--max-batch-size applies only to --batch-mode leader-selected"))
        }
        (_, Some(max)) if max < args.min_batch_size => {
            return Err(CliError::usage("--max-batch-size must be at least --min-batch-size"))
        }
        _ => {}
    }
    if let Some(age) = args.report_expiry_age.filter(|age| *age < args.time_precision) {
        return Err(CliError::usage(format!(
            "--report-expiry-age {age} is shorter than --time-precision {}: every report would be too old before its time unit ends",
            args.time_precision
        )));
    }
    let params = TaskParameters {
        task_id,
        task_info: args.task_info.clone(),
        leader_endpoint: normalize_endpoint("leader", &args.leader)?,
        helper_endpoint: normalize_endpoint("helper", &args.helper)?,
        time_precision: args.time_precision,
        min_batch_size: args.min_batch_size,
        batch_mode,
        vdaf: vdaf_config(args)?,
        task_interval_seconds: args.task_start.zip(args.task_end),
        dp: match (&args.dp_epsilon, &args.dp_rho) {
            (Some(epsilon), _) => Some(DpConfig::laplace(epsilon, args.dp_budget.as_deref())),
            (None, Some(rho)) => Some(DpConfig::gaussian(rho, args.dp_budget.as_deref())),
            (None, None) => None,
        },
    };
    params.task_configuration().map_err(|e| CliError::usage(e.to_string()))?;
    Ok(params)
}

/// Creates `path` for secrets: readable by the owner only, and never over an existing file
/// (which may hold another task's credentials).
fn create_secret_file(path: &Path) -> CliResult<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| CliError::usage(format!("cannot create {}: {e}", path.display())))
}

async fn task_create(args: CreateArgs) -> CliResult {
    let params = task_parameters(&args, TaskId::random())?;
    let leader_admin = AuthenticationToken::new(args.leader_admin_token.trim())
        .map_err(|e| CliError::usage(format!("--leader-admin-token: {e}")))?;
    let helper_admin = AuthenticationToken::new(args.helper_admin_token.trim())
        .map_err(|e| CliError::usage(format!("--helper-admin-token: {e}")))?;
    let http = http_client()?;
    let leader = AdminClient::new(http.clone(), &params.leader_endpoint, leader_admin)?;
    let helper = AdminClient::new(http, &params.helper_endpoint, helper_admin)?;

    // Claim the credentials file before touching any server, so that a bad path cannot leave a
    // task provisioned without anyone able to collect from it.
    let path = &args.collector_credentials;
    let mut file = create_secret_file(path)?;
    let discard_file = || {
        let _ = std::fs::remove_file(path);
    };

    let NewTask { leader_request, helper_request, credentials } =
        NewTask::generate(params.clone(), args.max_batch_size).with_report_expiry_age(args.report_expiry_age);

    if let Err(e) = provision_task(&leader, &leader_request, &helper, &helper_request).await {
        discard_file();
        let code = if e.error.is_timeout() { 3 } else { 2 };
        return Err(CliError { code, message: e.to_string() });
    }

    let written = serde_json::to_vec_pretty(&credentials)
        .map_err(std::io::Error::other)
        .and_then(|json| file.write_all(&json).and_then(|_| file.write_all(b"\n")).and_then(|_| file.sync_all()));
    if let Err(e) = written {
        // Without the credentials nobody can collect: take the task back from both aggregators.
        discard_file();
        let _ = helper.delete_task(&params.task_id).await;
        let _ = leader.delete_task(&params.task_id).await;
        return Err(CliError::usage(format!(
            "cannot write {}: {e}; the task was deleted from the aggregators again",
            path.display()
        )));
    }

    let json = serde_json::to_string_pretty(&params).map_err(|e| CliError::usage(e.to_string()))?;
    print_stdout(&format!("{json}\n"))?;
    eprintln!(
        "Task {} created. The collector's credentials are in {} (keep that file secret: it holds the collector's token and private key).",
        params.task_id,
        path.display()
    );
    Ok(())
}

async fn serve_interop(args: InteropArgs, app: axum::Router) -> CliResult {
    let listen = format!("{}:{}", args.host, args.port);
    let listener =
        tokio::net::TcpListener::bind(&listen).await.map_err(|e| CliError::usage(format!("listen {listen}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| CliError::server(e.to_string()))?;
    // Runners and tests read this line to learn the port when listening on port 0.
    print_stdout(&format!("listening on {addr}\n"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CliError::server(e.to_string()))
}

async fn demo(args: DemoArgs) -> CliResult {
    let options = duet_cli::demo::DemoOptions {
        reports: args.reports,
        buckets: args.buckets,
        min_batch_size: args.min_batch_size,
        server_logs: args.server_logs,
    };
    let text = duet_cli::demo::run(&options).await.map_err(CliError::server)?;
    print_stdout(&text)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> CliResult<T> {
    let text =
        std::fs::read_to_string(path).map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| CliError::usage(format!("{} is not a {what} file: {e}", path.display())))
}

/// Measurement texts from the command line or a file, skipping blank and `#` lines.
fn measurement_texts(args: &UploadArgs) -> CliResult<Vec<String>> {
    let mut texts = args.measurement.clone();
    if let Some(path) = &args.measurements_file {
        let read_lines = |reader: &mut dyn BufRead| -> std::io::Result<Vec<String>> { reader.lines().collect() };
        let lines = if path.as_os_str() == "-" {
            read_lines(&mut std::io::stdin().lock())
        } else {
            std::fs::File::open(path).and_then(|f| read_lines(&mut std::io::BufReader::new(f)))
        }
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        texts.extend(lines.into_iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty() && !l.starts_with('#')));
    }
    Ok(texts)
}

fn parse_measurements(config: &VdafConfig, texts: &[String]) -> CliResult<Vec<Measurement>> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Measurement::parse(config, t).map_err(|e| CliError::usage(format!("measurement {}: {e}", i + 1))))
        .collect()
}

async fn upload(args: UploadArgs) -> CliResult {
    let task: TaskParameters = read_json(&args.task, "task parameters")?;
    let texts = measurement_texts(&args)?;
    if texts.is_empty() {
        return Err(CliError::usage("no measurements to upload"));
    }
    let measurements = parse_measurements(&task.vdaf, &texts)?;
    let time = args.time.unwrap_or_else(timefmt::now_seconds);
    let options = ClientOptions { reports_per_request: args.reports_per_request, ..ClientOptions::default() };
    let client = Client::with_options(task, http_client()?, options)?;
    let items: Vec<(Measurement, u64)> = measurements.into_iter().map(|m| (m, time)).collect();
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(items.len() as u64), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} uploading {bar:40} {pos}/{len} reports ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let outcome = client.upload_with_progress(&items, &|done| bar.set_position(done)).await;
    bar.finish_and_clear();
    let outcome = outcome?;
    let mut by_error: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (_, error) in &outcome.rejected {
        *by_error.entry(ReportError::name(*error)).or_default() += 1;
    }
    let text = if args.json {
        let json = serde_json::json!({
            "accepted": outcome.accepted,
            "rejected": outcome.rejected.len(),
            "rejected_by_error": by_error,
        });
        format!("{json:#}\n")
    } else {
        let mut text = format!("accepted: {}\nrejected: {}\n", outcome.accepted, outcome.rejected.len());
        for (name, count) in &by_error {
            text.push_str(&format!("  {name}: {count}\n"));
        }
        text
    };
    print_stdout(&text)?;
    if outcome.rejected.is_empty() {
        Ok(())
    } else {
        Err(CliError::server(format!("the leader rejected {} of {} reports", outcome.rejected.len(), items.len())))
    }
}

async fn collect(args: CollectArgs) -> CliResult {
    let credentials: CollectorCredentials = read_json(&args.credentials, "collector credentials")?;
    let token_scheme = match args.token_scheme {
        TokenSchemeArg::Bearer => TokenScheme::Bearer,
        TokenSchemeArg::DapAuthToken => TokenScheme::DapAuthToken,
    };
    let options = CollectorOptions { token_scheme, ..CollectorOptions::default() };
    let collector = Collector::with_options(&credentials, http_client()?, options)?;
    let query = collector.query(args.interval_start.zip(args.interval_duration))?;
    let spinner = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message("waiting for the result: the batch must be aggregated and reach min_batch_size");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let result = collector.collect(query, Duration::from_secs(args.timeout)).await;
    spinner.finish_and_clear();
    let mut result = result?;
    if args.clamp {
        result = result.clamped(&collector.task().vdaf);
    }
    let text = if args.json {
        let mut json = render_json(collector.task(), &result).map_err(|e| CliError::server(e.to_string()))?;
        json.push('\n');
        json
    } else {
        render_text(collector.task(), &result)
    };
    print_stdout(&text)
}

#[cfg(feature = "bench")]
async fn bench(args: BenchArgs) -> CliResult {
    use duet_cli::bench::{run, BenchBackend, BenchOptions};
    let defaults = BenchOptions::default();
    let mut backends: Vec<BenchBackend> = args
        .backends
        .iter()
        .map(|b| match b {
            BenchBackendArg::Sqlite => BenchBackend::Sqlite,
            BenchBackendArg::Postgres => BenchBackend::Postgres,
        })
        .collect();
    if backends.is_empty() {
        backends = defaults.backends.clone();
    }
    let mut vdafs: Vec<VdafConfig> = args
        .vdafs
        .iter()
        .map(|v| match v {
            BenchVdafArg::Count => VdafConfig::Prio3Count,
            BenchVdafArg::Histogram => VdafConfig::Prio3Histogram { length: 100, chunk_length: 10 },
        })
        .collect();
    if vdafs.is_empty() {
        vdafs = defaults.vdafs.clone();
    }
    let options = BenchOptions {
        reports: args.reports,
        backends,
        vdafs,
        postgres_url: args.postgres,
        reports_per_request: args.reports_per_request,
        upload_concurrency: args.upload_concurrency,
        leader_args: args.leader_args,
        helper_args: args.helper_args,
        server_logs: args.server_logs,
    };
    let (table, figures) = run(&options).await.map_err(CliError::server)?;
    if args.json {
        let text = serde_json::to_string_pretty(&figures).map_err(|e| CliError::server(e.to_string()))?;
        print_stdout(&format!("{text}\n"))
    } else {
        print_stdout(&format!("\n{table}"))
    }
}

/// The name of an algorithm ID as the CLI spells it, or its number.
fn algorithm_name<E: ValueEnum>(id: u16, of: impl Fn(&E) -> u16) -> String {
    E::value_variants()
        .iter()
        .find(|v| of(v) == id)
        .and_then(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
        .unwrap_or_else(|| format!("0x{id:04x}"))
}

fn key_table(keys: &[duet_common::keys::HpkeKeyInfo]) -> String {
    let mut out = format!("{:>3}  {:<8}  {:<16}  {:<11}  {:<17}  {}\n", "ID", "STATE", "KEM", "KDF", "AEAD", "SINCE");
    for k in keys {
        out.push_str(&format!(
            "{:>3}  {:<8}  {:<16}  {:<11}  {:<17}  {}\n",
            k.id,
            k.state,
            algorithm_name::<Kem>(k.kem_id, |v| v.id().0),
            algorithm_name::<Kdf>(k.kdf_id, |v| v.id().0),
            algorithm_name::<Aead>(k.aead_id, |v| v.id().0),
            timefmt::rfc3339(k.state_changed_at_seconds.max(0) as u64),
        ));
    }
    out
}

fn key_output(key: &duet_common::keys::HpkeKeyInfo, json: bool, what: &str) -> CliResult {
    if json {
        let text = serde_json::to_string_pretty(key).map_err(|e| CliError::server(e.to_string()))?;
        print_stdout(&format!("{text}\n"))
    } else {
        print_stdout(&format!("{what}\n{}", key_table(std::slice::from_ref(key))))
    }
}

async fn hpke_keys(command: HpkeKeysCommand) -> CliResult {
    let target = match &command {
        HpkeKeysCommand::List(t) => t,
        HpkeKeysCommand::Add { target, .. }
        | HpkeKeysCommand::Activate { target, .. }
        | HpkeKeysCommand::Retire { target, .. }
        | HpkeKeysCommand::Delete { target, .. } => target,
    };
    let token = AuthenticationToken::new(target.admin_token.trim())
        .map_err(|e| CliError::usage(format!("--admin-token: {e}")))?;
    let admin = AdminClient::new(http_client()?, &target.aggregator, token)?;
    let json = target.json;
    match command {
        HpkeKeysCommand::List(_) => {
            let list = admin.hpke_keys().await?;
            if json {
                let text = serde_json::to_string_pretty(&list).map_err(|e| CliError::server(e.to_string()))?;
                print_stdout(&format!("{text}\n"))
            } else {
                print_stdout(&key_table(&list.keys))
            }
        }
        HpkeKeysCommand::Add { id, suite, .. } => {
            let new = duet_common::keys::NewHpkeKey {
                id,
                kem_id: Some(suite.kem.id().0),
                kdf_id: Some(suite.kdf.id().0),
                aead_id: Some(suite.aead.id().0),
            };
            let key = admin.add_hpke_key(&new).await?;
            let next = format!(
                "added pending key {}: replicas accept it now; activate it with `duet hpke-keys activate {}`",
                key.id, key.id
            );
            key_output(&key, json, &next)
        }
        HpkeKeysCommand::Activate { id, .. } => {
            let key = admin.activate_hpke_key(id).await?;
            key_output(&key, json, &format!("key {id} is active: clients that fetch /hpke_config now get it"))
        }
        HpkeKeysCommand::Retire { id, .. } => {
            let key = admin.retire_hpke_key(id).await?;
            let what = format!(
                "key {id} is retired: no longer advertised, still accepted; delete it after two days \
                 (twice the time clients may cache it)"
            );
            key_output(&key, json, &what)
        }
        HpkeKeysCommand::Delete { id, force, .. } => {
            admin.delete_hpke_key(id, force).await?;
            if json {
                print_stdout(&format!("{}\n", serde_json::json!({ "deleted": id })))
            } else {
                print_stdout(&format!("key {id} deleted: reports encrypted to it are refused from now on\n"))
            }
        }
    }
}

#[cfg(test)]
mod tests;
