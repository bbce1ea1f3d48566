//! Secrets at rest: the columns that hold a secret the server must read back (a task's VDAF
//! verify key, the aggregator token the leader presents to the helper, the aggregator's HPKE
//! private keys) are sealed with ChaCha20-Poly1305 under database keys kept outside the database
//! (`--database-keys`, `DUET_DATABASE_KEYS`). A backup of the database alone then yields none of
//! them. Each sealed value is bound to its column and row (the associated data), so that a value
//! copied into another row, or another column, does not open.
//!
//! Several keys allow rotation: the first seals, every one opens; at start-up the server seals
//! again under the first key what an older key sealed ([`crate::sql::SqlStore::open`]), after
//! which the older key may go. Tokens a server only checks are not sealed but digested
//! ([`duet_common::auth::TokenHash`]).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// What starts every sealed value: no secret stored in the clear begins so (a random key does
/// with probability 2^-64), which tells sealed values from those a database written before
/// sealing holds.
const MAGIC: &[u8; 8] = b"\xd5sealed1";
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Which secret a sealed value holds: part of its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedColumn {
    /// `tasks.vdaf_verify_key`, its row named by the task ID.
    VerifyKey,
    /// `tasks.aggregator_auth_token` on the leader, its row named by the task ID.
    AggregatorToken,
    /// `hpke_keys.private_key`, its row named by the key's encoded `HpkeConfig` (config ID and
    /// public key both).
    HpkePrivateKey,
}

impl SealedColumn {
    fn label(self) -> &'static str {
        match self {
            SealedColumn::VerifyKey => "tasks.vdaf_verify_key",
            SealedColumn::AggregatorToken => "tasks.aggregator_auth_token",
            SealedColumn::HpkePrivateKey => "hpke_keys.private_key",
        }
    }

    fn aad(self, row: &[u8]) -> Vec<u8> {
        let mut aad = format!("duet sealed {}\0", self.label()).into_bytes();
        aad.extend_from_slice(row);
        aad
    }
}

/// A sealed value that does not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("is stored in the clear (written before secrets were sealed, and not sealed since)")]
    NotSealed,
    #[error("was sealed under a database key that is not configured (add it to database_keys)")]
    UnknownKey,
    #[error("does not open under its database key: the row or the key was altered")]
    Forged,
}

struct DatabaseKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

/// The database keys: the first seals, every one opens.
pub struct DatabaseKeys {
    keys: Vec<DatabaseKey>,
}

impl std::fmt::Debug for DatabaseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseKeys({} keys, redacted)", self.keys.len())
    }
}

impl DatabaseKeys {
    /// Keys from their text: comma-separated, each 32 bytes in base64 (standard or URL-safe,
    /// padded or not), the sealing key first. The message of an error names the key by its
    /// position and never shows it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, part) in text.split(',').map(str::trim).enumerate() {
            let bytes = Zeroizing::new(
                [URL_SAFE_NO_PAD, URL_SAFE, STANDARD_NO_PAD, STANDARD]
                    .iter()
                    .find_map(|engine| engine.decode(part).ok())
                    .ok_or_else(|| format!("database key {} is not base64", i + 1))?,
            );
            let bytes: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                format!(
                    "database key {} holds {} bytes, not 32 (make one with `duet database-key`)",
                    i + 1,
                    bytes.len()
                )
            })?;
            let key = Self::key(bytes);
            if keys.iter().any(|k: &DatabaseKey| k.id == key.id) {
                return Err(format!("database key {} is given twice", i + 1));
            }
            keys.push(key);
        }
        Ok(Self { keys })
    }

    /// A fresh key's text, for `duet database-key`.
    pub fn generate() -> String {
        let bytes = Zeroizing::new(rand::random::<[u8; 32]>());
        URL_SAFE_NO_PAD.encode(bytes.as_slice())
    }

    /// One fresh key that lives as long as the process: for databases that do too (the interop
    /// servers' temporary files) and tests.
    pub fn ephemeral() -> Self {
        Self::parse(&Self::generate()).expect("a fresh key parses")
    }

    fn key(bytes: &[u8; 32]) -> DatabaseKey {
        let digest = Sha256::new().chain_update(b"duet database key id\0").chain_update(bytes).finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32 bytes is a ChaCha20 key"));
        DatabaseKey { id, key }
    }

    /// `plaintext` sealed under the first key, bound to `column` of the row `row` names.
    pub fn seal(&self, column: SealedColumn, row: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let current = &self.keys[0];
        // Random 96-bit nonces: a key seals a few values per task and HPKE key, far below the
        // 2^32 messages after which random nonces could collide.
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut body = plaintext.to_vec();
        current
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(column.aad(row)), &mut body)
            .expect("sealing a short value cannot fail");
        [MAGIC.as_slice(), &current.id, &nonce, &body].concat()
    }

    /// Opens what [`Self::seal`] sealed for the same column and row, under whichever configured
    /// key sealed it.
    pub fn open(&self, column: SealedColumn, row: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if !is_sealed(sealed) {
            return Err(OpenError::NotSealed);
        }
        let id = &sealed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
        let key = self.keys.iter().find(|k| k.id == id).ok_or(OpenError::UnknownKey)?;
        let nonce: [u8; NONCE_LEN] = sealed[MAGIC.len() + KEY_ID_LEN..HEADER_LEN].try_into().expect("nonce length");
        let mut body = Zeroizing::new(sealed[HEADER_LEN..].to_vec());
        let len = key
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(column.aad(row)), &mut body)
            .map_err(|_| OpenError::Forged)?
            .len();
        body.truncate(len);
        Ok(body)
    }

    /// Whether a stored value must be sealed (again) under the first key: it is stored in the
    /// clear, or an older key sealed it.
    pub fn needs_sealing(&self, stored: &[u8]) -> bool {
        !is_sealed(stored) || stored[MAGIC.len()..MAGIC.len() + KEY_ID_LEN] != self.keys[0].id
    }

    /// A stored value sealed under the first key, if it needs it ([`Self::needs_sealing`]): the
    /// value in the clear sealed, or the value an older key sealed opened and sealed again.
    pub fn reseal(&self, column: SealedColumn, row: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>, OpenError> {
        if !self.needs_sealing(stored) {
            return Ok(None);
        }
        let plain = if is_sealed(stored) { self.open(column, row, stored)? } else { Zeroizing::new(stored.to_vec()) };
        Ok(Some(self.seal(column, row, &plain)))
    }
}

/// Whether a stored value is sealed (by any key).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.len() >= HEADER_LEN + TAG_LEN && stored.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_for_its_column_and_row_only() {
        let keys = DatabaseKeys::ephemeral();
        let sealed = keys.seal(SealedColumn::VerifyKey, b"task 1", b"the secret");
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(10).any(|w| w == b"the secret"), "no plaintext in the sealed value");
        assert_eq!(keys.open(SealedColumn::VerifyKey, b"task 1", &sealed).unwrap().as_slice(), b"the secret");
        assert!(matches!(keys.open(SealedColumn::VerifyKey, b"task 2", &sealed), Err(OpenError::Forged)));
        assert!(matches!(keys.open(SealedColumn::AggregatorToken, b"task 1", &sealed), Err(OpenError::Forged)));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(keys.open(SealedColumn::VerifyKey, b"task 1", &altered), Err(OpenError::Forged)));
        assert!(matches!(keys.open(SealedColumn::VerifyKey, b"task 1", b"plain"), Err(OpenError::NotSealed)));
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, keys.seal(SealedColumn::VerifyKey, b"task 1", b"the secret"));
    }

    #[test]
    fn keys_rotate_the_first_seals_and_every_one_opens() {
        let (old, new) = (DatabaseKeys::generate(), DatabaseKeys::generate());
        let before = DatabaseKeys::parse(&old).unwrap();
        let sealed = before.seal(SealedColumn::HpkePrivateKey, b"config", b"private");
        assert!(!before.needs_sealing(&sealed));
        assert!(before.needs_sealing(b"private"), "a value in the clear needs sealing");
        let rotated = DatabaseKeys::parse(&format!("{new}, {old}")).unwrap();
        assert!(rotated.needs_sealing(&sealed), "sealed under an older key");
        assert_eq!(rotated.open(SealedColumn::HpkePrivateKey, b"config", &sealed).unwrap().as_slice(), b"private");
        let resealed = rotated.seal(SealedColumn::HpkePrivateKey, b"config", b"private");
        assert!(!rotated.needs_sealing(&resealed));
        let only_new = DatabaseKeys::parse(&new).unwrap();
        assert!(matches!(only_new.open(SealedColumn::HpkePrivateKey, b"config", &sealed), Err(OpenError::UnknownKey)));
        assert_eq!(only_new.open(SealedColumn::HpkePrivateKey, b"config", &resealed).unwrap().as_slice(), b"private");
    }

    #[test]
    fn bad_keys_are_refused_without_showing_them() {
        let key = DatabaseKeys::generate();
        let padded = STANDARD.encode(URL_SAFE_NO_PAD.decode(&key).unwrap());
        assert!(DatabaseKeys::parse(&padded).is_ok(), "standard base64 with padding");
        let err = DatabaseKeys::parse(&format!("{key},c2hvcnQ")).unwrap_err();
        assert!(err.contains("database key 2 holds 5 bytes"), "{err}");
        let err = DatabaseKeys::parse("not base64!").unwrap_err();
        assert_eq!(err, "database key 1 is not base64");
        let err = DatabaseKeys::parse(&format!("{key},{key}")).unwrap_err();
        assert_eq!(err, "database key 2 is given twice");
        assert!(DatabaseKeys::parse("").is_err());
        assert_eq!(format!("{:?}", DatabaseKeys::parse(&key).unwrap()), "DatabaseKeys(1 keys, redacted)");
    }
}
