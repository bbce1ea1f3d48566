//! The admin API's JSON for an aggregator's HPKE keys (`/admin/hpke_keys`): what the servers
//! answer and the `duet hpke-keys` commands send and read. Private keys never appear here.

use serde::{Deserialize, Serialize};

/// One key: its public configuration and where it is in its rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HpkeKeyInfo {
    pub id: u8,
    pub kem_id: u16,
    pub kdf_id: u16,
    pub aead_id: u16,
    /// `pending`, `active` or `retired`.
    pub state: String,
    pub created_at_seconds: i64,
    /// When the key entered its state (a retired key may be deleted two cache lifetimes after).
    pub state_changed_at_seconds: i64,
    /// The encoded `HpkeConfig`, URL-safe base64 without padding.
    pub hpke_config: String,
}

/// The answer to `GET /admin/hpke_keys`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HpkeKeyList {
    pub keys: Vec<HpkeKeyInfo>,
}

/// The body of `POST /admin/hpke_keys`: a new pending key. Every field is optional: the smallest
/// free config ID, and DAP's usual suite (X25519, HKDF-SHA256, AES-128-GCM).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewHpkeKey {
    pub id: Option<u8>,
    pub kem_id: Option<u16>,
    pub kdf_id: Option<u16>,
    pub aead_id: Option<u16>,
}
