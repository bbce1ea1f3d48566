//! duet-client: the DAP-18 client SDK ([`upload::Client`], which uploads reports), the collector
//! SDK ([`collect::Collector`], which collects and decrypts aggregates), the admin API client
//! that provisions tasks, and the rendering of results with their privacy statement. It is what
//! an app embeds: an HTTP client and the wire layer, no server crate. The `duet` tool is built
//! on it in duet-cli (client/cli).

pub mod admin;
pub mod collect;
pub mod error;
pub mod format;
pub mod http;
pub mod simulate;
pub mod timefmt;
pub mod upload;

pub use collect::{CollectionJob, CollectionResult, Collector, CollectorOptions, PollStatus};
pub use error::{ClientError, Result};
pub use upload::{Client, ClientOptions, HpkeConfigs, UploadOutcome};
