//! What the leader and helper servers share (feature `server`): HTTP glue ([`http`]), the
//! datastore with the tables and transactions both roles use ([`datastore`]), and the admin API
//! for provisioning tasks ([`admin`]).

pub mod admin;
pub mod datastore;
pub mod hpke_config;
pub mod http;
