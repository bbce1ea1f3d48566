//! The `duet` command line: every command, subcommand and flag, as clap parses them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use duet_common::hpke;
use duet_common::messages::{HpkeAeadId, HpkeKdfId, HpkeKemId};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "duet",
    version,
    about = "Client, collector and task tool for duet, a DAP-18 implementation",
    after_help = "Exit codes: 0 success, 1 usage or input error, 2 server or protocol error \
                  (including reports the leader rejected), 3 timeout."
)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate an HPKE key pair; prints its configuration and private key as JSON.
    Keygen(KeygenArgs),
    /// Generate a database key for a server's --database-keys (DUET_DATABASE_KEYS): 32 random
    /// bytes in URL-safe base64. Keep it apart from the database and its backups.
    DatabaseKey,
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
pub enum BenchBackendArg {
    Sqlite,
    Postgres,
}

#[cfg(feature = "bench")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchVdafArg {
    /// Prio3Count.
    Count,
    /// Prio3Histogram with 100 buckets (chunk length 10).
    Histogram,
}

#[cfg(feature = "bench")]
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Reports per run.
    #[arg(long, default_value_t = 100_000)]
    pub reports: usize,
    /// Backends to run (repeat; default both).
    #[arg(long = "backend", value_enum)]
    pub backends: Vec<BenchBackendArg>,
    /// VDAFs to run (repeat; default both).
    #[arg(long = "vdaf", value_enum)]
    pub vdafs: Vec<BenchVdafArg>,
    /// A PostgreSQL database to connect to for creating (and dropping) one database per server.
    #[arg(long, env = "DUET_BENCH_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres: String,
    /// Reports per upload request.
    #[arg(long, default_value_t = 1000)]
    pub reports_per_request: usize,
    /// Upload requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub upload_concurrency: usize,
    /// An extra argument for duet-leader (repeat), e.g. --leader-arg=--max-job-size=2000.
    #[arg(long = "leader-arg", allow_hyphen_values = true)]
    pub leader_args: Vec<String>,
    /// An extra argument for duet-helper (repeat).
    #[arg(long = "helper-arg", allow_hyphen_values = true)]
    pub helper_args: Vec<String>,
    /// Show the servers' logs.
    #[arg(long)]
    pub server_logs: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AggregatorArgs {
    /// The aggregator's base URL.
    #[arg(long)]
    pub aggregator: String,
    /// The aggregator's admin API token (better passed in the environment).
    #[arg(long, env = "DUET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum HpkeKeysCommand {
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
pub struct InteropArgs {
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Simulated reports to upload.
    #[arg(long, default_value_t = 10_000)]
    pub reports: usize,
    /// Histogram buckets.
    #[arg(long, default_value_t = 10)]
    pub buckets: u32,
    /// The task's min_batch_size.
    #[arg(long, default_value_t = 100)]
    pub min_batch_size: u64,
    /// Show the servers' logs.
    #[arg(long)]
    pub server_logs: bool,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Create a task on the leader and the helper; writes the collector's credentials to a file
    /// and prints the task parameters clients need.
    Create(Box<CreateArgs>),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kem {
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
    pub fn id(self) -> HpkeKemId {
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
pub enum Kdf {
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
    pub fn id(self) -> HpkeKdfId {
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
pub enum Aead {
    #[value(name = "aes-128-gcm")]
    Aes128Gcm,
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    #[value(name = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl Aead {
    pub fn id(self) -> HpkeAeadId {
        use hpke::aead::*;
        match self {
            Aead::Aes128Gcm => AES_128_GCM,
            Aead::Aes256Gcm => AES_256_GCM,
            Aead::ChaCha20Poly1305 => CHACHA20_POLY1305,
        }
    }
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The configuration's ID.
    #[arg(long, default_value_t = 0)]
    pub id: u8,
    #[command(flatten)]
    pub suite: SuiteArgs,
}

/// An HPKE suite; the default is the one every DAP implementation has.
#[derive(Args, Debug, Clone, Copy)]
pub struct SuiteArgs {
    #[arg(long, value_enum, default_value = "x25519")]
    pub kem: Kem,
    #[arg(long, value_enum, default_value = "hkdf-sha256")]
    pub kdf: Kdf,
    #[arg(long, value_enum, default_value = "aes-128-gcm")]
    pub aead: Aead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VdafKind {
    Count,
    Sum,
    Sumvec,
    Histogram,
    Multihot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BatchModeArg {
    TimeInterval,
    LeaderSelected,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The leader's base URL.
    #[arg(long)]
    pub leader: String,
    /// The helper's base URL.
    #[arg(long)]
    pub helper: String,
    /// The leader's admin API token (better passed in the environment).
    #[arg(long, env = "DUET_LEADER_ADMIN_TOKEN", hide_env_values = true)]
    pub leader_admin_token: String,
    /// The helper's admin API token (better passed in the environment).
    #[arg(long, env = "DUET_HELPER_ADMIN_TOKEN", hide_env_values = true)]
    pub helper_admin_token: String,
    #[arg(long, value_enum)]
    pub vdaf: VdafKind,
    /// Largest value of one measurement (sum, sumvec).
    #[arg(long)]
    pub max_measurement: Option<u64>,
    /// Number of buckets or vector entries (sumvec, histogram, multihot).
    #[arg(long)]
    pub length: Option<u32>,
    /// Prio3 proof chunk length (sumvec, histogram, multihot); defaults to about the square root
    /// of the measurement's encoded length.
    #[arg(long)]
    pub chunk_length: Option<u32>,
    /// Most entries one measurement may set (multihot).
    #[arg(long)]
    pub max_weight: Option<u64>,
    /// The fewest reports a batch may be released with.
    #[arg(long)]
    pub min_batch_size: u64,
    /// Length of one time unit, in seconds: report times are rounded down to it.
    #[arg(long)]
    pub time_precision: u64,
    #[arg(long, value_enum)]
    pub batch_mode: BatchModeArg,
    /// Leader-selected batches are filled up to this size (default: min-batch-size).
    #[arg(long)]
    pub max_batch_size: Option<u64>,
    /// Seconds after which a report is too old to take: both aggregators drop older reports,
    /// and their garbage collectors delete what such reports left, batch results included
    /// (at least --time-precision; default: each server's own default, if it has one).
    #[arg(long)]
    pub report_expiry_age: Option<u64>,
    /// The task's `task_info` text.
    #[arg(long, default_value = "duet")]
    pub task_info: String,
    /// Reports before this POSIX time are refused (aligned to the time precision).
    #[arg(long, requires = "task_end")]
    pub task_start: Option<u64>,
    /// Reports at or after this POSIX time are refused (aligned to the time precision).
    #[arg(long, requires = "task_start")]
    pub task_end: Option<u64>,
    /// Differential privacy, pure epsilon-DP: each aggregator adds discrete Laplace noise for
    /// this epsilon per collection to its share of every result, e.g. 1.
    #[arg(long, group = "dp")]
    pub dp_epsilon: Option<String>,
    /// Differential privacy, rho-zero-concentrated DP: each aggregator adds discrete Gaussian
    /// noise for this rho per collection to its share of every result, e.g. 0.05.
    #[arg(long, group = "dp")]
    pub dp_rho: Option<String>,
    /// The task's total budget over all collections, in the mechanism's terms (epsilon adds up
    /// under basic composition, rho under zCDP); the leader refuses a collection that would
    /// exceed it.
    #[arg(long, requires = "dp")]
    pub dp_budget: Option<String>,
    /// Where to write the collector's credentials (created with mode 0600; must not exist).
    #[arg(long)]
    pub collector_credentials: PathBuf,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["measurement", "measurements_file"]))]
pub struct UploadArgs {
    /// The task parameters JSON printed by `duet task create`.
    #[arg(long)]
    pub task: PathBuf,
    /// A measurement: 0/1 for count, an integer for sum and histogram, comma-separated values
    /// for sumvec and multihot. Repeat for several reports.
    #[arg(long)]
    pub measurement: Vec<String>,
    /// A file with one measurement per line ('-' for standard input; blank lines and lines
    /// starting with '#' are skipped).
    #[arg(long)]
    pub measurements_file: Option<PathBuf>,
    /// The reports' time, in POSIX seconds (default: now).
    #[arg(long)]
    pub time: Option<u64>,
    /// Reports per upload request.
    #[arg(long, default_value_t = 1000)]
    pub reports_per_request: usize,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TokenSchemeArg {
    Bearer,
    DapAuthToken,
}

#[derive(Args, Debug)]
pub struct CollectArgs {
    /// The collector credentials file written by `duet task create`.
    #[arg(long)]
    pub credentials: PathBuf,
    /// Start of the batch interval, POSIX seconds (time-interval tasks).
    #[arg(long, requires = "interval_duration")]
    pub interval_start: Option<u64>,
    /// Length of the batch interval, seconds (time-interval tasks).
    #[arg(long, requires = "interval_start")]
    pub interval_duration: Option<u64>,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// For tasks with differential privacy: clamp noisy values into the range a true result can
    /// take (0 to the report count, or count × maximum for sums). Post-processing: the guarantee
    /// is unchanged, but values near the bounds become biased. Off by default: values are shown
    /// with their noise, and may be negative.
    #[arg(long)]
    pub clamp: bool,
    /// How to present the collector's token.
    #[arg(long, value_enum, default_value = "bearer")]
    pub token_scheme: TokenSchemeArg,
}
