//! duet-common: what the leader, helper, client and collector share. The DAP-18 wire messages
//! ([`messages`]) with DAP times ([`time`]), the VDAFs ([`vdaf`]), HPKE ([`hpke`]), the problem
//! types ([`problem`]), authentication tokens ([`auth`]), media types ([`media_type`]) and the
//! admin API's JSON for HPKE keys ([`keys`]).

pub mod auth;
pub mod clock;
mod codec;
pub mod dp;
pub mod hpke;
pub mod interop;
pub mod keys;
pub mod media_type;
pub mod messages;
pub mod problem;
pub mod task;
pub mod time;
pub mod vdaf;

pub use prio::codec::{CodecError, Decode, Encode};
