//! duet-client: the DAP-18 client SDK ([`upload::Client`], which uploads reports), the collector
//! SDK ([`collect::Collector`], which collects and decrypts aggregates), and the pieces the
//! `duet` command-line tool is built from (`duet bench`, with feature `bench`, on by default,
//! which brings in a PostgreSQL driver the SDKs do not need).

pub mod admin;
#[cfg(feature = "bench")]
pub mod bench;
pub mod collect;
pub mod demo;
pub mod error;
pub mod format;
pub mod http;
pub mod interop;
pub mod process;
pub mod simulate;
pub mod timefmt;
pub mod upload;

pub use collect::{CollectionJob, CollectionResult, Collector, CollectorOptions, PollStatus};
pub use error::{ClientError, Result};
pub use upload::{Client, ClientOptions, HpkeConfigs, UploadOutcome};
