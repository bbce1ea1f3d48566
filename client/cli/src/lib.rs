//! duet-cli: what the `duet` command-line tool has beyond the client and collector SDKs
//! (duet-client): `duet demo` and `duet bench`, which run duet's servers as child processes
//! ([`process`]), and the interop test API's client and collector servers. These bring in an
//! HTTP server (axum) and, for `duet bench`, a PostgreSQL driver: an app that embeds the SDKs
//! depends on duet-client alone and pulls neither.

#[cfg(feature = "bench")]
pub mod bench;
pub mod demo;
pub mod interop;
pub mod process;
