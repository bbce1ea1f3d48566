//! HPKE (RFC 9180) as DAP-18 uses it, on the `hpke` crate: key generation, `HpkeConfig`s for every
//! KEM/KDF/AEAD combination the crate offers, and base-mode seal/open with the spec's exact
//! `info` strings, for input shares (client to aggregator) and aggregate shares (aggregator to
//! collector).

use crate::messages::{
    HpkeAeadId, HpkeCiphertext, HpkeConfig, HpkeConfigId, HpkeKdfId, HpkeKemId, HpkePublicKey, Role,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use std::fmt;

/// KEM identifiers (RFC 9180 Section 7.1 and draft-ietf-hpke-pq).
pub mod kem {
    use crate::messages::HpkeKemId;
    pub const P256_HKDF_SHA256: HpkeKemId = HpkeKemId(0x0010);
    pub const P384_HKDF_SHA384: HpkeKemId = HpkeKemId(0x0011);
    pub const P521_HKDF_SHA512: HpkeKemId = HpkeKemId(0x0012);
    pub const X25519_HKDF_SHA256: HpkeKemId = HpkeKemId(0x0020);
    pub const ML_KEM_768: HpkeKemId = HpkeKemId(0x0041);
    pub const ML_KEM_1024: HpkeKemId = HpkeKemId(0x0042);
    pub const MLKEM768_P256: HpkeKemId = HpkeKemId(0x0050);
    pub const MLKEM1024_P384: HpkeKemId = HpkeKemId(0x0051);
    pub const X_WING: HpkeKemId = HpkeKemId(0x647a);
    pub const ALL: [HpkeKemId; 9] = [
        P256_HKDF_SHA256,
        P384_HKDF_SHA384,
        P521_HKDF_SHA512,
        X25519_HKDF_SHA256,
        ML_KEM_768,
        ML_KEM_1024,
        MLKEM768_P256,
        MLKEM1024_P384,
        X_WING,
    ];
}

/// KDF identifiers (RFC 9180 Section 7.2 and draft-ietf-hpke-pq).
pub mod kdf {
    use crate::messages::HpkeKdfId;
    pub const HKDF_SHA256: HpkeKdfId = HpkeKdfId(0x0001);
    pub const HKDF_SHA384: HpkeKdfId = HpkeKdfId(0x0002);
    pub const HKDF_SHA512: HpkeKdfId = HpkeKdfId(0x0003);
    pub const SHAKE128: HpkeKdfId = HpkeKdfId(0x0010);
    pub const SHAKE256: HpkeKdfId = HpkeKdfId(0x0011);
    pub const TURBOSHAKE128: HpkeKdfId = HpkeKdfId(0x0012);
    pub const TURBOSHAKE256: HpkeKdfId = HpkeKdfId(0x0013);
    pub const ALL: [HpkeKdfId; 7] =
        [HKDF_SHA256, HKDF_SHA384, HKDF_SHA512, SHAKE128, SHAKE256, TURBOSHAKE128, TURBOSHAKE256];
}

/// AEAD identifiers (RFC 9180 Section 7.3).
pub mod aead {
    use crate::messages::HpkeAeadId;
    pub const AES_128_GCM: HpkeAeadId = HpkeAeadId(0x0001);
    pub const AES_256_GCM: HpkeAeadId = HpkeAeadId(0x0002);
    pub const CHACHA20_POLY1305: HpkeAeadId = HpkeAeadId(0x0003);
    pub const ALL: [HpkeAeadId; 3] = [AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305];
}

/// Errors of this layer. None of them carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpkeError {
    #[error("unsupported HPKE suite (KEM {kem:#06x}, KDF {kdf:#06x}, AEAD {aead:#06x})")]
    UnsupportedSuite { kem: u16, kdf: u16, aead: u16 },
    #[error("malformed HPKE key")]
    InvalidKey,
    #[error("malformed encapsulated key")]
    InvalidEnc,
    #[error("ciphertext is for HPKE config {found}, not {expected}")]
    ConfigIdMismatch { expected: u8, found: u8 },
    #[error("HPKE decryption failed")]
    Open,
    #[error("HPKE encryption failed")]
    Seal,
}

/// What is being encrypted, which fixes the `info` string (DAP-18 "Upload Request" and
/// "Aggregate Share Encryption").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpkeApplicationInfo {
    /// An input share from a client (`0x01`) to `recipient` (leader or helper).
    InputShare { recipient: Role },
    /// An aggregate share from `sender` (leader or helper) to the collector (`0x00`).
    AggregateShare { sender: Role },
}

impl HpkeApplicationInfo {
    /// `"dap-18 input share" || 0x01 || server_role`, or
    /// `"dap-18 aggregate share" || server_role || 0x00`.
    pub fn info(&self) -> Vec<u8> {
        match *self {
            HpkeApplicationInfo::InputShare { recipient } => {
                let mut v = b"dap-18 input share".to_vec();
                v.push(Role::Client as u8);
                v.push(recipient as u8);
                v
            }
            HpkeApplicationInfo::AggregateShare { sender } => {
                let mut v = b"dap-18 aggregate share".to_vec();
                v.push(sender as u8);
                v.push(Role::Collector as u8);
                v
            }
        }
    }
}

/// An HPKE private key in its RFC 9180 serialisation. Secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct HpkePrivateKey(Vec<u8>);

impl HpkePrivateKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.0)
    }
    pub fn from_base64(s: &str) -> Result<Self, HpkeError> {
        Ok(Self(URL_SAFE_NO_PAD.decode(s.trim()).map_err(|_| HpkeError::InvalidKey)?))
    }
}

impl fmt::Debug for HpkePrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HpkePrivateKey([redacted])")
    }
}

impl Drop for HpkePrivateKey {
    fn drop(&mut self) {
        // The key bytes should not outlive the key in freed memory.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// An HPKE configuration with its private key: what an aggregator or collector decrypts with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HpkeKeypair {
    config: HpkeConfig,
    private_key: HpkePrivateKey,
}

/// Expands `$body` with type aliases `$K`, `$F`, `$A` bound to the crate types of the suite, or
/// evaluates to `Err(UnsupportedSuite)`.
macro_rules! with_suite {
    ($kem:expr, $kdf:expr, $aead:expr, |$K:ident, $F:ident, $A:ident| $body:expr) => {{
        let (kem_id, kdf_id, aead_id) = ($kem, $kdf, $aead);
        let unsupported = || HpkeError::UnsupportedSuite { kem: kem_id.0, kdf: kdf_id.0, aead: aead_id.0 };
        with_suite!(@kem kem_id, kdf_id, aead_id, unsupported, $K, $F, $A, $body)
    }};
    (@kem $kem:ident, $kdf:ident, $aead:ident, $u:ident, $K:ident, $F:ident, $A:ident, $body:expr) => {
        match $kem {
            kem::X25519_HKDF_SHA256 => { type $K = hpke::kem::X25519HkdfSha256; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            kem::P256_HKDF_SHA256 => { type $K = hpke::kem::DhP256HkdfSha256; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            kem::P384_HKDF_SHA384 => { type $K = hpke::kem::DhP384HkdfSha384; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            kem::P521_HKDF_SHA512 => { type $K = hpke::kem::DhP521HkdfSha512; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            kem::ML_KEM_768 => { type $K = hpke::kem::MlKem768; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            kem::ML_KEM_1024 => { type $K = hpke::kem::MlKem1024; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            kem::MLKEM768_P256 => { type $K = hpke::kem::MlKem768P256; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            kem::MLKEM1024_P384 => { type $K = hpke::kem::MlKem1024P384; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            kem::X_WING => { type $K = hpke::kem::XWing; with_suite!(@kdf $kdf, $aead, $u, $F, $A, $body) }
            _ => Err($u()),
        }
    };
    (@kdf $kdf:ident, $aead:ident, $u:ident, $F:ident, $A:ident, $body:expr) => {
        match $kdf {
            kdf::HKDF_SHA256 => { type $F = hpke::kdf::HkdfSha256; with_suite!(@aead $aead, $u, $A, $body) }
            kdf::HKDF_SHA384 => { type $F = hpke::kdf::HkdfSha384; with_suite!(@aead $aead, $u, $A, $body) }
            kdf::HKDF_SHA512 => { type $F = hpke::kdf::HkdfSha512; with_suite!(@aead $aead, $u, $A, $body) }
            kdf::SHAKE128 => { type $F = hpke::kdf::KdfShake128; with_suite!(@aead $aead, $u, $A, $body) }
            kdf::SHAKE256 => { type $F = hpke::kdf::KdfShake256; with_suite!(@aead $aead, $u, $A, $body) }
            kdf::TURBOSHAKE128 => { type $F = hpke::kdf::KdfTurboShake128; with_suite!(@aead $aead, $u, $A, $body) }
            kdf::TURBOSHAKE256 => { type $F = hpke::kdf::KdfTurboShake256; with_suite!(@aead $aead, $u, $A, $body) }
            _ => Err($u()),
        }
    };
    (@aead $aead:ident, $u:ident, $A:ident, $body:expr) => {
        match $aead {
            aead::AES_128_GCM => { type $A = hpke::aead::AesGcm128; $body }
            aead::AES_256_GCM => { type $A = hpke::aead::AesGcm256; $body }
            aead::CHACHA20_POLY1305 => { type $A = hpke::aead::ChaCha20Poly1305; $body }
            _ => Err($u()),
        }
    };
}

/// Runs `$body` with `$K` bound to the KEM type only (key generation does not need the rest).
macro_rules! with_kem {
    ($kem:expr, |$K:ident| $body:expr) => {
        with_suite!($kem, kdf::HKDF_SHA256, aead::AES_128_GCM, |$K, _F, _A| $body)
    };
}

/// Whether this build can seal and open with the suite.
pub fn is_supported(kem_id: HpkeKemId, kdf_id: HpkeKdfId, aead_id: HpkeAeadId) -> bool {
    kem::ALL.contains(&kem_id) && kdf::ALL.contains(&kdf_id) && aead::ALL.contains(&aead_id)
}

fn generate_keys<K: hpke::Kem>() -> (Vec<u8>, Vec<u8>) {
    let (sk, pk) = K::gen_keypair();
    (sk.to_bytes().to_vec(), pk.to_bytes().to_vec())
}

fn public_from_private<K: hpke::Kem>(sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
    let sk = K::PrivateKey::from_bytes(sk).map_err(|_| HpkeError::InvalidKey)?;
    Ok(K::sk_to_pk(&sk).to_bytes().to_vec())
}

fn seal_with<A: hpke::aead::Aead, F: hpke::kdf::Kdf, K: hpke::Kem>(
    pk: &[u8],
    info: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
    let pk = K::PublicKey::from_bytes(pk).map_err(|_| HpkeError::InvalidKey)?;
    let (enc, ct) =
        hpke::single_shot_seal::<A, F, K>(&OpModeS::Base, &pk, info, plaintext, aad).map_err(|_| HpkeError::Seal)?;
    Ok((enc.to_bytes().to_vec(), ct))
}

fn open_with<A: hpke::aead::Aead, F: hpke::kdf::Kdf, K: hpke::Kem>(
    sk: &[u8],
    enc: &[u8],
    info: &[u8],
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, HpkeError> {
    let sk = K::PrivateKey::from_bytes(sk).map_err(|_| HpkeError::InvalidKey)?;
    let enc = K::EncappedKey::from_bytes(enc).map_err(|_| HpkeError::InvalidEnc)?;
    hpke::single_shot_open::<A, F, K>(&OpModeR::Base, &sk, &enc, info, ciphertext, aad).map_err(|_| HpkeError::Open)
}

impl HpkeKeypair {
    /// A fresh key pair for the suite, published under config `id`.
    pub fn generate(
        id: HpkeConfigId,
        kem_id: HpkeKemId,
        kdf_id: HpkeKdfId,
        aead_id: HpkeAeadId,
    ) -> Result<Self, HpkeError> {
        // Validate the whole suite, not only the KEM.
        with_suite!(kem_id, kdf_id, aead_id, |_K, _F, _A| Ok(()))?;
        let (sk, pk) = with_kem!(kem_id, |K| Ok(generate_keys::<K>()))?;
        Ok(Self {
            config: HpkeConfig { id, kem_id, kdf_id, aead_id, public_key: HpkePublicKey(pk) },
            private_key: HpkePrivateKey(sk),
        })
    }

    /// DAP's mandatory-to-implement suite is not fixed by DAP-18; duet's default is
    /// DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, which every DAP implementation has.
    pub fn generate_default(id: HpkeConfigId) -> Self {
        Self::generate(id, kem::X25519_HKDF_SHA256, kdf::HKDF_SHA256, aead::AES_128_GCM)
            .expect("the default suite is always supported")
    }

    /// A key pair from a stored configuration and private key; checks that they belong together.
    pub fn new(config: HpkeConfig, private_key: HpkePrivateKey) -> Result<Self, HpkeError> {
        with_suite!(config.kem_id, config.kdf_id, config.aead_id, |_K, _F, _A| Ok(()))?;
        let pk = with_kem!(config.kem_id, |K| public_from_private::<K>(private_key.as_bytes()))?;
        if pk != config.public_key.0 {
            return Err(HpkeError::InvalidKey);
        }
        Ok(Self { config, private_key })
    }

    pub fn config(&self) -> &HpkeConfig {
        &self.config
    }

    pub fn private_key(&self) -> &HpkePrivateKey {
        &self.private_key
    }
}

/// `SealBase(pk, info, aad, plaintext)` to the given configuration.
pub fn seal(
    config: &HpkeConfig,
    info: &HpkeApplicationInfo,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<HpkeCiphertext, HpkeError> {
    let info = info.info();
    let (enc, payload) = with_suite!(config.kem_id, config.kdf_id, config.aead_id, |K, F, A| {
        seal_with::<A, F, K>(&config.public_key.0, &info, plaintext, aad)
    })?;
    Ok(HpkeCiphertext { config_id: config.id, enc, payload })
}

/// `OpenBase(enc, sk, info, aad, ciphertext)`; the ciphertext must name this key's config.
pub fn open(
    keypair: &HpkeKeypair,
    info: &HpkeApplicationInfo,
    ciphertext: &HpkeCiphertext,
    aad: &[u8],
) -> Result<Vec<u8>, HpkeError> {
    let config = &keypair.config;
    if ciphertext.config_id != config.id {
        return Err(HpkeError::ConfigIdMismatch { expected: config.id.0, found: ciphertext.config_id.0 });
    }
    let info = info.info();
    with_suite!(config.kem_id, config.kdf_id, config.aead_id, |K, F, A| {
        open_with::<A, F, K>(keypair.private_key.as_bytes(), &ciphertext.enc, &info, &ciphertext.payload, aad)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_strings_are_the_spec_bytes() {
        let mut expected = b"dap-18 input share".to_vec();
        expected.extend([0x01, 0x02]);
        assert_eq!(HpkeApplicationInfo::InputShare { recipient: Role::Leader }.info(), expected);
        let mut expected = b"dap-18 input share".to_vec();
        expected.extend([0x01, 0x03]);
        assert_eq!(HpkeApplicationInfo::InputShare { recipient: Role::Helper }.info(), expected);
        let mut expected = b"dap-18 aggregate share".to_vec();
        expected.extend([0x03, 0x00]);
        assert_eq!(HpkeApplicationInfo::AggregateShare { sender: Role::Helper }.info(), expected);
    }

    #[test]
    fn every_suite_round_trips_and_fails_cleanly() {
        let info = HpkeApplicationInfo::InputShare { recipient: Role::Leader };
        let wrong_info = HpkeApplicationInfo::InputShare { recipient: Role::Helper };
        let mut count = 0;
        for kem_id in kem::ALL {
            // One key pair per KEM, and a second one as the "wrong key".
            for kdf_id in kdf::ALL {
                for aead_id in aead::ALL {
                    let kp = HpkeKeypair::generate(HpkeConfigId(7), kem_id, kdf_id, aead_id).unwrap();
                    let other = HpkeKeypair::generate(HpkeConfigId(7), kem_id, kdf_id, aead_id).unwrap();
                    let ct = seal(kp.config(), &info, b"plaintext", b"aad").unwrap();
                    assert_eq!(ct.config_id, HpkeConfigId(7));
                    assert_eq!(open(&kp, &info, &ct, b"aad").unwrap(), b"plaintext");
                    assert_eq!(open(&other, &info, &ct, b"aad"), Err(HpkeError::Open), "wrong key");
                    assert_eq!(open(&kp, &info, &ct, b"AAD"), Err(HpkeError::Open), "wrong aad");
                    assert_eq!(open(&kp, &wrong_info, &ct, b"aad"), Err(HpkeError::Open), "wrong info");
                    let mut tampered = ct.clone();
                    tampered.payload[0] ^= 1;
                    assert_eq!(open(&kp, &info, &tampered, b"aad"), Err(HpkeError::Open));
                    let mut bad_enc = ct.clone();
                    bad_enc.enc.pop();
                    assert!(open(&kp, &info, &bad_enc, b"aad").is_err());
                    count += 1;
                }
            }
            let kp = HpkeKeypair::generate(HpkeConfigId(1), kem_id, kdf::HKDF_SHA256, aead::AES_128_GCM).unwrap();
            // A stored key pair reloads; a mismatched public key is refused.
            let reloaded = HpkeKeypair::new(kp.config().clone(), kp.private_key().clone()).unwrap();
            assert_eq!(reloaded, kp);
            let other = HpkeKeypair::generate(HpkeConfigId(1), kem_id, kdf::HKDF_SHA256, aead::AES_128_GCM).unwrap();
            assert_eq!(HpkeKeypair::new(kp.config().clone(), other.private_key().clone()), Err(HpkeError::InvalidKey));
        }
        assert_eq!(count, 9 * 7 * 3);
    }

    #[test]
    fn config_id_and_unsupported_suites() {
        let kp = HpkeKeypair::generate_default(HpkeConfigId(1));
        let mut ct =
            seal(kp.config(), &HpkeApplicationInfo::AggregateShare { sender: Role::Leader }, b"x", b"").unwrap();
        ct.config_id = HpkeConfigId(2);
        assert_eq!(
            open(&kp, &HpkeApplicationInfo::AggregateShare { sender: Role::Leader }, &ct, b""),
            Err(HpkeError::ConfigIdMismatch { expected: 1, found: 2 })
        );
        assert!(matches!(
            HpkeKeypair::generate(HpkeConfigId(1), HpkeKemId(0x9999), kdf::HKDF_SHA256, aead::AES_128_GCM),
            Err(HpkeError::UnsupportedSuite { .. })
        ));
        assert!(matches!(
            HpkeKeypair::generate(HpkeConfigId(1), kem::X25519_HKDF_SHA256, kdf::HKDF_SHA256, HpkeAeadId(0xffff)),
            Err(HpkeError::UnsupportedSuite { .. })
        ));
        assert!(!is_supported(kem::X25519_HKDF_SHA256, kdf::HKDF_SHA256, HpkeAeadId(0xffff)));
        assert!(format!("{kp:?}").contains("[redacted]"));
        assert!(!format!("{kp:?}").contains(&kp.private_key().to_base64()));
    }
}
