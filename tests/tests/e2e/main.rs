//! duet's cross-process end-to-end tests, in one test binary (one link for all of them):
//! `duet-leader` and `duet-helper` as real processes on loopback (and across network
//! namespaces), driven through the client and collector SDKs, the CLI and raw HTTP. Each module
//! is one area; `duet_tests` (tests/src) is their harness.

mod bad_input;
mod bench;
mod cli;
mod continuation;
mod demo;
mod deploy;
mod faults;
mod flood;
mod hardening;
mod interop;
mod layout;
mod lifecycle;
mod limits;
mod migrations;
mod operations;
mod outage;
mod pipeline;
mod planner;
mod privacy;
mod properties;
mod replicas;
mod secrets;
mod sqlite_wal;
mod storage;
mod tls;
mod upload_group;
