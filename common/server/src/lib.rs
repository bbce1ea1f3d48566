//! duet-server: what the leader and helper servers share, and nothing a client needs. HTTP glue ([`http`]), the
//! storage interface with a transaction per protocol step ([`storage`]) and its SQL backends
//! ([`sql`]: SQLite and PostgreSQL), `/hpke_config` ([`hpke_config`]) and the admin API for provisioning tasks
//! ([`admin`]) with HPKE key rotation, layered settings ([`config`]), metrics, health and
//! readiness ([`metrics`]), and the garbage collector's loop and settings ([`gc`]).

pub mod admin;
pub mod checks;
pub mod config;
pub mod connections;
pub mod gc;
pub mod hpke_config;
pub mod http;
pub mod interop;
pub mod metrics;
pub mod runtime;
pub mod sealing;
pub mod sql;
pub mod states;
pub mod storage;
pub mod store_error;
