//! `duet`: the command-line tool for people working with duet tasks. It makes HPKE key pairs,
//! provisions tasks on both aggregators, uploads measurements as a DAP client, and collects
//! aggregates as the collector.
//!
//! Exit codes: 0 success, 1 usage or input error, 2 server or protocol error (including reports
//! the leader rejected), 3 timeout.

use clap::{Args, Parser, Subcommand, ValueEnum};
use duet_client::admin::{provision_task, AdminClient, NewTask};
use duet_client::collect::{Collector, CollectorOptions};
use duet_client::format::{render_json, render_text};
use duet_client::simulate::default_chunk_length;
use duet_client::upload::{Client, ClientOptions};
use duet_client::{http, timefmt, ClientError};
use duet_common::auth::{AuthenticationToken, TokenScheme};
use duet_common::hpke::{self, HpkeKeypair};
use duet_common::messages::{BatchMode, HpkeAeadId, HpkeConfigId, HpkeKdfId, HpkeKemId, ReportError, TaskId};
use duet_common::task::{hpke_config_to_b64, CollectorCredentials, TaskParameters};
use duet_common::vdaf::{Measurement, VdafConfig};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "duet",
    version,
    about = "Client, collector and task tool for duet, a DAP-18 implementation",
    after_help = "Exit codes: 0 success, 1 usage or input error, 2 server or protocol error \
                  (including reports the leader rejected), 3 timeout."
)]
struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate an HPKE key pair; prints its configuration and private key as JSON.
    Keygen(KeygenArgs),
    /// Manage tasks on the aggregators.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Upload measurements to a task as a client.
    Upload(UploadArgs),
    /// Collect an aggregate as the task's collector.
    Collect(CollectArgs),
    /// Rotate an aggregator's HPKE keys: add a pending key, activate it, retire the old one,
    /// delete it once clients can no longer hold it (the admin token comes from
    /// DUET_ADMIN_TOKEN).
    #[command(subcommand)]
    HpkeKeys(HpkeKeysCommand),
    /// Serve the interop test API's client role (`/internal/test/upload`). Test-only.
    InteropClient(InteropArgs),
    /// Serve the interop test API's collector role (`add_task`, `collection_start`,
    /// `collection_poll`). Test-only.
    InteropCollector(InteropArgs),
    /// Run leader and helper as local processes on SQLite, upload simulated Prio3Histogram
    /// reports, collect, and compare with the histogram computed in the clear.
    Demo(DemoArgs),
    /// Measure throughput against the CPU floor: leader and helper as local processes on SQLite
    /// and PostgreSQL, N reports of Prio3Count and Prio3Histogram (100 buckets) uploaded,
    /// aggregated and collected; prints ingest, aggregation, collection and peak memory.
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

#[cfg(feature = "bench")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BenchBackendArg {
    Sqlite,
    Postgres,
}

#[cfg(feature = "bench")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BenchVdafArg {
    /// Prio3Count.
    Count,
    /// Prio3Histogram with 100 buckets (chunk length 10).
    Histogram,
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
struct BenchArgs {
    /// Reports per run.
    #[arg(long, default_value_t = 100_000)]
    reports: usize,
    /// Backends to run (repeat; default both).
    #[arg(long = "backend", value_enum)]
    backends: Vec<BenchBackendArg>,
    /// VDAFs to run (repeat; default both).
    #[arg(long = "vdaf", value_enum)]
    vdafs: Vec<BenchVdafArg>,
    /// A PostgreSQL database to connect to for creating (and dropping) one database per server.
    #[arg(long, env = "DUET_BENCH_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Reports per upload request.
    #[arg(long, default_value_t = 1000)]
    reports_per_request: usize,
    /// Upload requests in flight at once.
    #[arg(long, default_value_t = 8)]
    upload_concurrency: usize,
    /// An extra argument for duet-leader (repeat), e.g. --leader-arg=--max-job-size=2000.
    #[arg(long = "leader-arg", allow_hyphen_values = true)]
    leader_args: Vec<String>,
    /// An extra argument for duet-helper (repeat).
    #[arg(long = "helper-arg", allow_hyphen_values = true)]
    helper_args: Vec<String>,
    /// Show the servers' logs.
    #[arg(long)]
    server_logs: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct AggregatorArgs {
    /// The aggregator's base URL.
    #[arg(long)]
    aggregator: String,
    /// The aggregator's admin API token (better passed in the environment).
    #[arg(long, env = "DUET_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum HpkeKeysCommand {
    /// List the aggregator's keys with their states.
    List(AggregatorArgs),
    /// Add a pending key: not advertised yet, but already accepted.
    Add {
        #[command(flatten)]
        target: AggregatorArgs,
        /// The configuration ID (default: the smallest free one).
        #[arg(long)]
        id: Option<u8>,
        #[command(flatten)]
        suite: SuiteArgs,
    },
    /// Advertise a key at /hpke_config.
    Activate {
        #[command(flatten)]
        target: AggregatorArgs,
        id: u8,
    },
    /// Stop advertising a key; reports encrypted to it are still accepted.
    Retire {
        #[command(flatten)]
        target: AggregatorArgs,
        id: u8,
    },
    /// Delete a key: reports encrypted to it are refused from then on.
    Delete {
        #[command(flatten)]
        target: AggregatorArgs,
        id: u8,
        /// Delete a key retired less than two days ago (twice the time clients may cache it).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct InteropArgs {
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Simulated reports to upload.
    #[arg(long, default_value_t = 10_000)]
    reports: usize,
    /// Histogram buckets.
    #[arg(long, default_value_t = 10)]
    buckets: u32,
    /// The task's min_batch_size.
    #[arg(long, default_value_t = 100)]
    min_batch_size: u64,
    /// Show the servers' logs.
    #[arg(long)]
    server_logs: bool,
}

#[derive(Subcommand, Debug)]
enum TaskCommand {
    /// Create a task on the leader and the helper; writes the collector's credentials to a file
    /// and prints the task parameters clients need.
    Create(Box<CreateArgs>),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kem {
    X25519,
    P256,
    P384,
    P521,
    #[value(name = "ml-kem-768")]
    MlKem768,
    #[value(name = "ml-kem-1024")]
    MlKem1024,
    #[value(name = "ml-kem-768-p256")]
    MlKem768P256,
    #[value(name = "ml-kem-1024-p384")]
    MlKem1024P384,
    #[value(name = "x-wing")]
    XWing,
}

impl Kem {
    fn id(self) -> HpkeKemId {
        use hpke::kem::*;
        match self {
            Kem::X25519 => X25519_HKDF_SHA256,
            Kem::P256 => P256_HKDF_SHA256,
            Kem::P384 => P384_HKDF_SHA384,
            Kem::P521 => P521_HKDF_SHA512,
            Kem::MlKem768 => ML_KEM_768,
            Kem::MlKem1024 => ML_KEM_1024,
            Kem::MlKem768P256 => MLKEM768_P256,
            Kem::MlKem1024P384 => MLKEM1024_P384,
            Kem::XWing => X_WING,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kdf {
    #[value(name = "hkdf-sha256")]
    HkdfSha256,
    #[value(name = "hkdf-sha384")]
    HkdfSha384,
    #[value(name = "hkdf-sha512")]
    HkdfSha512,
    Shake128,
    Shake256,
    Turboshake128,
    Turboshake256,
}

impl Kdf {
    fn id(self) -> HpkeKdfId {
        use hpke::kdf::*;
        match self {
            Kdf::HkdfSha256 => HKDF_SHA256,
            Kdf::HkdfSha384 => HKDF_SHA384,
            Kdf::HkdfSha512 => HKDF_SHA512,
            Kdf::Shake128 => SHAKE128,
            Kdf::Shake256 => SHAKE256,
            Kdf::Turboshake128 => TURBOSHAKE128,
            Kdf::Turboshake256 => TURBOSHAKE256,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Aead {
    #[value(name = "aes-128-gcm")]
    Aes128Gcm,
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    #[value(name = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl Aead {
    fn id(self) -> HpkeAeadId {
        use hpke::aead::*;
        match self {
            Aead::Aes128Gcm => AES_128_GCM,
            Aead::Aes256Gcm => AES_256_GCM,
            Aead::ChaCha20Poly1305 => CHACHA20_POLY1305,
        }
    }
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// The configuration's ID.
    #[arg(long, default_value_t = 0)]
    id: u8,
    #[command(flatten)]
    suite: SuiteArgs,
}

/// An HPKE suite; the default is the one every DAP implementation has.
#[derive(Args, Debug, Clone, Copy)]
struct SuiteArgs {
    #[arg(long, value_enum, default_value = "x25519")]
    kem: Kem,
    #[arg(long, value_enum, default_value = "hkdf-sha256")]
    kdf: Kdf,
    #[arg(long, value_enum, default_value = "aes-128-gcm")]
    aead: Aead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VdafKind {
    Count,
    Sum,
    Sumvec,
    Histogram,
    Multihot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BatchModeArg {
    TimeInterval,
    LeaderSelected,
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// The leader's base URL.
    #[arg(long)]
    leader: String,
    /// The helper's base URL.
    #[arg(long)]
    helper: String,
    /// The leader's admin API token (better passed in the environment).
    #[arg(long, env = "DUET_LEADER_ADMIN_TOKEN", hide_env_values = true)]
    leader_admin_token: String,
    /// The helper's admin API token (better passed in the environment).
    #[arg(long, env = "DUET_HELPER_ADMIN_TOKEN", hide_env_values = true)]
    helper_admin_token: String,
    #[arg(long, value_enum)]
    vdaf: VdafKind,
    /// Largest value of one measurement (sum, sumvec).
    #[arg(long)]
    max_measurement: Option<u64>,
    /// Number of buckets or vector entries (sumvec, histogram, multihot).
    #[arg(long)]
    length: Option<u32>,
    /// Prio3 proof chunk length (sumvec, histogram, multihot); defaults to about the square root
    /// of the measurement's encoded length.
    #[arg(long)]
    chunk_length: Option<u32>,
    /// Most entries one measurement may set (multihot).
    #[arg(long)]
    max_weight: Option<u64>,
    /// The fewest reports a batch may be released with.
    #[arg(long)]
    min_batch_size: u64,
    /// Length of one time unit, in seconds: report times are rounded down to it.
    #[arg(long)]
    time_precision: u64,
    #[arg(long, value_enum)]
    batch_mode: BatchModeArg,
    /// Leader-selected batches are filled up to this size (default: min-batch-size).
    #[arg(long)]
    max_batch_size: Option<u64>,
    /// The task's `task_info` text.
    #[arg(long, default_value = "duet")]
    task_info: String,
    /// Reports before this POSIX time are refused (aligned to the time precision).
    #[arg(long, requires = "task_end")]
    task_start: Option<u64>,
    /// Reports at or after this POSIX time are refused (aligned to the time precision).
    #[arg(long, requires = "task_start")]
    task_end: Option<u64>,
    /// Differential privacy: each aggregator adds discrete Laplace noise for this epsilon to
    /// every result (histogram and sumvec tasks), e.g. 0.5.
    #[arg(long)]
    dp_epsilon: Option<String>,
    /// The task's total epsilon over all collections; the leader refuses a collection that would
    /// exceed it.
    #[arg(long, requires = "dp_epsilon")]
    dp_budget: Option<String>,
    /// Where to write the collector's credentials (created with mode 0600; must not exist).
    #[arg(long)]
    collector_credentials: PathBuf,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["measurement", "measurements_file"]))]
struct UploadArgs {
    /// The task parameters JSON printed by `duet task create`.
    #[arg(long)]
    task: PathBuf,
    /// A measurement: 0/1 for count, an integer for sum and histogram, comma-separated values
    /// for sumvec and multihot. Repeat for several reports.
    #[arg(long)]
    measurement: Vec<String>,
    /// A file with one measurement per line ('-' for standard input; blank lines and lines
    /// starting with '#' are skipped).
    #[arg(long)]
    measurements_file: Option<PathBuf>,
    /// The reports' time, in POSIX seconds (default: now).
    #[arg(long)]
    time: Option<u64>,
    /// Reports per upload request.
    #[arg(long, default_value_t = 1000)]
    reports_per_request: usize,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TokenSchemeArg {
    Bearer,
    DapAuthToken,
}

#[derive(Args, Debug)]
struct CollectArgs {
    /// The collector credentials file written by `duet task create`.
    #[arg(long)]
    credentials: PathBuf,
    /// Start of the batch interval, POSIX seconds (time-interval tasks).
    #[arg(long, requires = "interval_duration")]
    interval_start: Option<u64>,
    /// Length of the batch interval, seconds (time-interval tasks).
    #[arg(long, requires = "interval_start")]
    interval_duration: Option<u64>,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// How to present the collector's token.
    #[arg(long, value_enum, default_value = "bearer")]
    token_scheme: TokenSchemeArg,
}

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
        Command::Task(TaskCommand::Create(args)) => task_create(*args).await,
        Command::Upload(args) => upload(args).await,
        Command::Collect(args) => collect(args).await,
        Command::HpkeKeys(command) => hpke_keys(command).await,
        Command::Demo(args) => demo(args).await,
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench(args).await,
        Command::InteropClient(args) => serve_interop(args, duet_client::interop::client_router()).await,
        Command::InteropCollector(args) => serve_interop(args, duet_client::interop::collector_router()).await,
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
        dp: args.dp_epsilon.clone().map(|epsilon| duet_common::dp::DpConfig {
            mechanism: duet_common::dp::DpMechanism::DiscreteLaplace,
            epsilon,
            budget_epsilon: args.dp_budget.clone(),
        }),
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
        NewTask::generate(params.clone(), args.max_batch_size);

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
    let options = duet_client::demo::DemoOptions {
        reports: args.reports,
        buckets: args.buckets,
        min_batch_size: args.min_batch_size,
        server_logs: args.server_logs,
    };
    let text = duet_client::demo::run(&options).await.map_err(CliError::server)?;
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
    let result = result?;
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
    use duet_client::bench::{run, BenchBackend, BenchOptions};
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
mod tests {
    use super::*;
    use duet_client::collect::time_interval_query;
    use duet_common::messages::Query;
    use duet_common::time::{Duration as DapDuration, Interval, Time, TimePrecision};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("duet").chain(args.iter().copied()))
    }

    fn create_args(extra: &[&str]) -> CreateArgs {
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
        match parse(&args).unwrap().command {
            Command::Task(TaskCommand::Create(a)) => *a,
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
        let dp = p.dp.unwrap();
        assert_eq!((dp.epsilon.as_str(), dp.budget_epsilon.as_deref()), ("0.5", Some("3")));
        // Noise prio cannot add, and a budget below one collection, are refused before any request.
        let count = ["--vdaf", "count", "--batch-mode", "time-interval", "--dp-epsilon", "1"];
        assert!(task_parameters(&create_args(&count), TaskId::random())
            .unwrap_err()
            .message
            .contains("Prio3Histogram"));
        let small = create_args(&[&noisy[..], &["--dp-budget", "0.1"]].concat());
        assert!(task_parameters(&small, TaskId::random()).is_err());

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
        assert!(bad(&["--vdaf", "count", "--length", "3", "--batch-mode", "time-interval"])
            .message
            .contains("--length"));
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
        assert_eq!(kp.config().kem_id, hpke::kem::P256_HKDF_SHA256);
        assert_eq!(kp.config().aead_id, hpke::aead::CHACHA20_POLY1305);
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
}
