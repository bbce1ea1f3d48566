//! The DAP-18 wire messages: one type per structure of the spec's "Protocol Definition" and
//! "Batch Modes" sections, named as there, each encoded and decoded with prio's `codec` traits.
//!
//! The basic types live here; the messages of each protocol step are in their own module.

pub mod aggregate;
pub mod batch_mode;
pub mod collect;
pub mod task;
pub mod upload;

pub use aggregate::*;
pub use batch_mode::*;
pub use collect::*;
pub use task::*;
pub use upload::*;

use crate::codec::{
    decode_array, decode_opaque_u16, encode_opaque_u16, encode_opaque_u32, opaque_u16_in_place, opaque_u32_in_place,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use prio::codec::{CodecError, Decode, Encode};
use rand::Rng;
use std::{fmt, io::Cursor, str::FromStr};

pub use prio::codec::{CodecError as WireError, Decode as WireDecode, Encode as WireEncode};

/// Fixed-length identifiers, shown and parsed as URL-safe unpadded base64 as in DAP URLs.
macro_rules! fixed_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// A fresh identifier from a cryptographically secure generator.
            pub fn random() -> Self {
                Self(rand::rng().random())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bytes = URL_SAFE_NO_PAD
                    .decode(s)
                    .map_err(|_| IdParseError { what: stringify!($name), len: $len })?;
                let bytes: [u8; $len] = bytes
                    .try_into()
                    .map_err(|_| IdParseError { what: stringify!($name), len: $len })?;
                Ok(Self(bytes))
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = IdParseError;
            fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
                Ok(Self(bytes.try_into().map_err(|_| IdParseError {
                    what: stringify!($name),
                    len: $len,
                })?))
            }
        }

        impl Encode for $name {
            fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
                bytes.extend_from_slice(&self.0);
                Ok(())
            }
            fn encoded_len(&self) -> Option<usize> {
                Some($len)
            }
        }

        impl Decode for $name {
            fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
                Ok(Self(decode_array(bytes)?))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A string that is not the URL-safe unpadded base64 of an identifier of the right length.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a {what}: expected {len} bytes in URL-safe unpadded base64")]
pub struct IdParseError {
    what: &'static str,
    len: usize,
}

fixed_id!(
    /// `opaque TaskID[32]`.
    TaskId, 32
);
fixed_id!(
    /// `opaque ReportID[16]`, also the VDAF nonce.
    ReportId, 16
);
fixed_id!(
    /// `opaque BatchID[32]` of the leader-selected batch mode.
    BatchId, 32
);
fixed_id!(
    /// The identifier a duet helper assigns to an aggregation job it creates. A leader treats the
    /// helper's `Location` as opaque, so other helpers may choose other forms.
    AggregationJobId, 16
);
fixed_id!(
    /// The identifier a duet leader assigns to a collection job it creates.
    CollectionJobId, 16
);
fixed_id!(
    /// The identifier a duet helper assigns to an aggregate share it creates.
    AggregateShareId, 16
);

/// `enum { collector(0), client(1), leader(2), helper(3), (255) } Role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    Collector = 0,
    Client = 1,
    Leader = 2,
    Helper = 3,
}

impl Role {
    /// The index of an aggregator's share in the VDAF (the leader's share comes first).
    pub fn aggregator_index(self) -> Option<usize> {
        match self {
            Role::Leader => Some(0),
            Role::Helper => Some(1),
            _ => None,
        }
    }
}

impl Encode for Role {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        (*self as u8).encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(1)
    }
}

impl Decode for Role {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        match u8::decode(bytes)? {
            0 => Ok(Role::Collector),
            1 => Ok(Role::Client),
            2 => Ok(Role::Leader),
            3 => Ok(Role::Helper),
            _ => Err(CodecError::UnexpectedValue),
        }
    }
}

/// `uint8 HpkeConfigId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct HpkeConfigId(pub u8);

macro_rules! u16_code {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u16);

        impl Encode for $name {
            fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
                self.0.encode(bytes)
            }
            fn encoded_len(&self) -> Option<usize> {
                Some(2)
            }
        }

        impl Decode for $name {
            fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
                Ok(Self(u16::decode(bytes)?))
            }
        }
    };
}

u16_code!(
    /// `uint16 HpkeKemId` (RFC 9180, Section 7.1).
    HpkeKemId
);
u16_code!(
    /// `uint16 HpkeKdfId` (RFC 9180, Section 7.2).
    HpkeKdfId
);
u16_code!(
    /// `uint16 HpkeAeadId` (RFC 9180, Section 7.3).
    HpkeAeadId
);
u16_code!(
    /// `enum { reserved(0), (2^16-1) } ExtensionType` of report extensions.
    ExtensionType
);

impl Encode for HpkeConfigId {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.0.encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(1)
    }
}

impl Decode for HpkeConfigId {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self(u8::decode(bytes)?))
    }
}

/// `opaque HpkePublicKey<1..2^16-1>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HpkePublicKey(pub Vec<u8>);

impl fmt::Debug for HpkePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HpkePublicKey({})", URL_SAFE_NO_PAD.encode(&self.0))
    }
}

/// `struct { id; kem_id; kdf_id; aead_id; public_key } HpkeConfig`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HpkeConfig {
    pub id: HpkeConfigId,
    pub kem_id: HpkeKemId,
    pub kdf_id: HpkeKdfId,
    pub aead_id: HpkeAeadId,
    pub public_key: HpkePublicKey,
}

impl Encode for HpkeConfig {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.id.encode(bytes)?;
        self.kem_id.encode(bytes)?;
        self.kdf_id.encode(bytes)?;
        self.aead_id.encode(bytes)?;
        if self.public_key.0.is_empty() {
            return Err(crate::codec::out_of_range("HpkePublicKey"));
        }
        encode_opaque_u16(bytes, &self.public_key.0)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(9 + self.public_key.0.len())
    }
}

impl Decode for HpkeConfig {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            id: HpkeConfigId::decode(bytes)?,
            kem_id: HpkeKemId::decode(bytes)?,
            kdf_id: HpkeKdfId::decode(bytes)?,
            aead_id: HpkeAeadId::decode(bytes)?,
            public_key: HpkePublicKey(decode_opaque_u16(bytes, 1, "HpkePublicKey")?),
        })
    }
}

/// `HpkeConfig HpkeConfigList<10..2^16-1>`, in decreasing order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HpkeConfigList(pub Vec<HpkeConfig>);

impl Encode for HpkeConfigList {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.0.is_empty() {
            return Err(crate::codec::out_of_range("HpkeConfigList"));
        }
        crate::codec::encode_u16_list(bytes, &self.0)
    }
}

impl Decode for HpkeConfigList {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        let configs: Vec<HpkeConfig> = crate::codec::decode_u16_list(bytes)?;
        if configs.is_empty() {
            return Err(crate::codec::out_of_range("HpkeConfigList"));
        }
        Ok(Self(configs))
    }
}

/// `struct { config_id; opaque enc<1..2^16-1>; opaque payload<1..2^32-1>; } HpkeCiphertext`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HpkeCiphertext {
    pub config_id: HpkeConfigId,
    pub enc: Vec<u8>,
    pub payload: Vec<u8>,
}

impl fmt::Debug for HpkeCiphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HpkeCiphertext")
            .field("config_id", &self.config_id)
            .field("enc_len", &self.enc.len())
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Encode for HpkeCiphertext {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.enc.is_empty() || self.payload.is_empty() {
            return Err(crate::codec::out_of_range("HpkeCiphertext"));
        }
        self.config_id.encode(bytes)?;
        encode_opaque_u16(bytes, &self.enc)?;
        encode_opaque_u32(bytes, &self.payload)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(1 + 2 + self.enc.len() + 4 + self.payload.len())
    }
}

impl HpkeCiphertext {
    /// Reads an `HpkeCiphertext` in place, checked as [`Decode`] checks it: its config ID and
    /// its whole encoding.
    pub fn decode_in_place<'a>(bytes: &mut Cursor<&'a [u8]>) -> Result<(HpkeConfigId, &'a [u8]), CodecError> {
        let ((config_id, _, _), encoded) = crate::codec::consumed(bytes, Self::read_fields)?;
        Ok((config_id, encoded))
    }

    /// The config ID, `enc` and payload, the last two inside the buffer.
    fn read_fields<'a>(bytes: &mut Cursor<&'a [u8]>) -> Result<(HpkeConfigId, &'a [u8], &'a [u8]), CodecError> {
        Ok((
            HpkeConfigId::decode(bytes)?,
            opaque_u16_in_place(bytes, 1, "HpkeCiphertext.enc")?,
            opaque_u32_in_place(bytes, 1, "HpkeCiphertext.payload")?,
        ))
    }
}

impl Decode for HpkeCiphertext {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        let (config_id, enc, payload) = Self::read_fields(bytes)?;
        Ok(Self { config_id, enc: enc.to_vec(), payload: payload.to_vec() })
    }
}

/// `struct { ExtensionType extension_type; opaque extension_data<0..2^16-1>; } Extension`: a
/// report extension, public (in `ReportMetadata`) or private (in `PlaintextInputShare`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Extension {
    pub extension_type: ExtensionType,
    pub extension_data: Vec<u8>,
}

impl Encode for Extension {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        self.extension_type.encode(bytes)?;
        encode_opaque_u16(bytes, &self.extension_data)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(4 + self.extension_data.len())
    }
}

impl Decode for Extension {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Ok(Self {
            extension_type: ExtensionType::decode(bytes)?,
            extension_data: decode_opaque_u16(bytes, 0, "Extension.extension_data")?,
        })
    }
}

/// Whether a list of extension codepoints is in strictly increasing order, as every DAP
/// extension list must be.
pub fn strictly_increasing<T: PartialOrd>(codes: impl IntoIterator<Item = T>) -> bool {
    let mut prev: Option<T> = None;
    for code in codes {
        if prev.as_ref().is_some_and(|p| *p >= code) {
            return false;
        }
        prev = Some(code);
    }
    true
}

impl PartialOrd for ExtensionType {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.0.cmp(&other.0))
    }
}

/// `enum { ... } ReportError`: why one report failed in the upload or aggregation interaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum ReportError {
    BatchCollected = 1,
    ReportReplayed = 2,
    ReportDropped = 3,
    HpkeUnknownConfigId = 4,
    HpkeDecryptError = 5,
    VdafVerifyError = 6,
    TaskExpired = 7,
    InvalidMessage = 8,
    ReportTooEarly = 9,
    TaskNotStarted = 10,
    OutdatedConfig = 11,
}

impl ReportError {
    pub const ALL: [ReportError; 11] = [
        ReportError::BatchCollected,
        ReportError::ReportReplayed,
        ReportError::ReportDropped,
        ReportError::HpkeUnknownConfigId,
        ReportError::HpkeDecryptError,
        ReportError::VdafVerifyError,
        ReportError::TaskExpired,
        ReportError::InvalidMessage,
        ReportError::ReportTooEarly,
        ReportError::TaskNotStarted,
        ReportError::OutdatedConfig,
    ];

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|e| *e as u8 == code)
    }

    /// The registry name, as in the spec (`report_replayed`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ReportError::BatchCollected => "batch_collected",
            ReportError::ReportReplayed => "report_replayed",
            ReportError::ReportDropped => "report_dropped",
            ReportError::HpkeUnknownConfigId => "hpke_unknown_config_id",
            ReportError::HpkeDecryptError => "hpke_decrypt_error",
            ReportError::VdafVerifyError => "vdaf_verify_error",
            ReportError::TaskExpired => "task_expired",
            ReportError::InvalidMessage => "invalid_message",
            ReportError::ReportTooEarly => "report_too_early",
            ReportError::TaskNotStarted => "task_not_started",
            ReportError::OutdatedConfig => "outdated_config",
        }
    }
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Encode for ReportError {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        (*self as u8).encode(bytes)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(1)
    }
}

impl Decode for ReportError {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        Self::from_code(u8::decode(bytes)?).ok_or(CodecError::UnexpectedValue)
    }
}

/// `opaque Url<1..2^16-1>`: a URL as the exact ASCII bytes the participants agreed on. It is
/// never re-encoded, since it enters HPKE associated data.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Url(Vec<u8>);

impl Url {
    /// A URL from its agreed string; it must be non-empty ASCII of at most 65535 bytes.
    pub fn new(s: &str) -> Result<Self, CodecError> {
        if s.is_empty() || s.len() > u16::MAX as usize || !s.is_ascii() {
            return Err(crate::codec::out_of_range("Url"));
        }
        Ok(Self(s.as_bytes().to_vec()))
    }

    pub fn as_str(&self) -> &str {
        // Checked ASCII on construction and decoding.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Url({:?})", self.as_str())
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Encode for Url {
    fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
        encode_opaque_u16(bytes, &self.0)
    }
    fn encoded_len(&self) -> Option<usize> {
        Some(2 + self.0.len())
    }
}

impl Decode for Url {
    fn decode(bytes: &mut Cursor<&[u8]>) -> Result<Self, CodecError> {
        let raw = decode_opaque_u16(bytes, 1, "Url")?;
        if !raw.is_ascii() {
            return Err(CodecError::UnexpectedValue);
        }
        Ok(Self(raw))
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Shared checks for the codec tests of every message module.
    use prio::codec::{Decode, Encode};
    use std::fmt::Debug;

    /// Asserts that `value` encodes to `expected` (when given), decodes back to itself, and that
    /// every truncation and any trailing byte is rejected with an error rather than a panic.
    pub fn roundtrip<T: Encode + Decode + PartialEq + Debug>(value: &T, expected: Option<&[u8]>) {
        let encoded = value.get_encoded().expect("encode");
        if let Some(expected) = expected {
            assert_eq!(hex(&encoded), hex(expected), "encoding of {value:?}");
        }
        if let Some(len) = value.encoded_len() {
            assert_eq!(len, encoded.len(), "encoded_len of {value:?}");
        }
        assert_eq!(&T::get_decoded(&encoded).expect("decode"), value);
        let mut trailing = encoded.clone();
        trailing.push(0);
        assert!(T::get_decoded(&trailing).is_err(), "trailing byte accepted");
        reject_truncations::<T>(&encoded);
    }

    /// Asserts every strict prefix of `encoded` fails to decode (without panicking). Messages
    /// that end in a "rest of the body" vector legitimately decode some prefixes; `roundtrip_tail`
    /// covers those.
    pub fn reject_truncations<T: Decode + Debug>(encoded: &[u8]) {
        for cut in 0..encoded.len() {
            let res = T::get_decoded(&encoded[..cut]);
            assert!(res.is_err(), "prefix of {cut} bytes decoded as {res:?}");
        }
    }

    /// Round trip for messages whose last field runs to the end of the body: truncation must
    /// never panic, and a cut inside the fixed part must fail.
    pub fn roundtrip_tail<T: Encode + Decode + PartialEq + Debug>(
        value: &T,
        expected: Option<&[u8]>,
        fixed_len: usize,
    ) {
        let encoded = value.get_encoded().expect("encode");
        if let Some(expected) = expected {
            assert_eq!(hex(&encoded), hex(expected), "encoding of {value:?}");
        }
        assert_eq!(&T::get_decoded(&encoded).expect("decode"), value);
        for cut in 0..encoded.len() {
            let res = T::get_decoded(&encoded[..cut]);
            if cut < fixed_len {
                assert!(res.is_err(), "prefix of {cut} bytes decoded");
            } else if let Ok(decoded) = res {
                assert_ne!(&decoded, value, "a truncated body decoded to the whole message");
            }
        }
    }

    pub fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Bytes from a hex string with spaces and newlines allowed, for hand-written vectors.
    pub fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn ids_roundtrip_and_base64() {
        // The task ID of the spec's "HTTP Usage" example and its URL form.
        let task_id = TaskId::from_bytes(
            unhex("f0163447364ccf1bc0e3affcca6873c9c381f64acdf9020662f83f46c07219e7").try_into().unwrap(),
        );
        assert_eq!(task_id.to_string(), "8BY0RzZMzxvA46_8ymhzycOB9krN-QIGYvg_RsByGec");
        assert_eq!("8BY0RzZMzxvA46_8ymhzycOB9krN-QIGYvg_RsByGec".parse::<TaskId>().unwrap(), task_id);
        let job = AggregationJobId::from_bytes(unhex("95ceda51e1a9752368b0d961f9466128").try_into().unwrap());
        assert_eq!(job.to_string(), "lc7aUeGpdSNosNlh-UZhKA");
        assert!("lc7aUeGpdSNosNlh-UZhKA".parse::<TaskId>().is_err());
        assert!("not base64!".parse::<ReportId>().is_err());
        roundtrip(&task_id, Some(task_id.as_bytes()));
        roundtrip(&ReportId::from_bytes([7; 16]), Some(&[7; 16]));
        roundtrip(&BatchId::from_bytes([9; 32]), Some(&[9; 32]));
        let json = serde_json::to_string(&task_id).unwrap();
        assert_eq!(json, "\"8BY0RzZMzxvA46_8ymhzycOB9krN-QIGYvg_RsByGec\"");
        assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), task_id);
    }

    /// Random and mutated bytes into every decoder: errors are fine, panics are not.
    #[test]
    fn decoders_never_panic_on_garbage() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(0xd0e7);
        let seeds: Vec<Vec<u8>> = vec![
            unhex(crate::messages::upload::tests::SAMPLE_REPORT_HEX),
            unhex("01 0010 0000000000195294 0000000000000064 00000000 0000"),
            unhex("c2 0010 0001 0001 0004 01020304"),
        ];
        fn all(bytes: &[u8]) {
            let _ = HpkeConfigList::get_decoded(bytes);
            let _ = HpkeConfig::get_decoded(bytes);
            let _ = HpkeCiphertext::get_decoded(bytes);
            let _ = UploadRequest::get_decoded(bytes);
            let _ = UploadErrors::get_decoded(bytes);
            let _ = PlaintextInputShare::get_decoded(bytes);
            let _ = InputShareAad::get_decoded(bytes);
            let _ = TaskConfiguration::get_decoded(bytes);
            let _ = AggregationJobInitReq::get_decoded(bytes);
            let _ = AggregationJobResp::get_decoded(bytes);
            let _ = AggregationJobContinueReq::get_decoded(bytes);
            let _ = CollectionJobReq::get_decoded(bytes);
            let _ = CollectionJobResp::get_decoded(bytes);
            let _ = AggregateShareReq::get_decoded(bytes);
            let _ = AggregateShare::get_decoded(bytes);
            let _ = AggregateShareAad::get_decoded(bytes);
        }
        for _ in 0..3000 {
            let len = rng.random_range(0..200);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            all(&bytes);
        }
        for seed in &seeds {
            for _ in 0..2000 {
                let mut b = seed.clone();
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..b.len());
                    b[i] = rng.random();
                }
                all(&b);
            }
        }
    }

    #[test]
    fn role_and_report_error_codes() {
        for (role, code) in [(Role::Collector, 0u8), (Role::Client, 1), (Role::Leader, 2), (Role::Helper, 3)] {
            roundtrip(&role, Some(&[code]));
        }
        assert!(Role::get_decoded(&[4]).is_err());
        for (i, e) in ReportError::ALL.iter().enumerate() {
            roundtrip(e, Some(&[i as u8 + 1]));
        }
        assert!(ReportError::get_decoded(&[0]).is_err());
        assert!(ReportError::get_decoded(&[12]).is_err());
        assert_eq!(ReportError::OutdatedConfig.to_string(), "outdated_config");
    }

    #[test]
    fn hpke_config_and_list() {
        let config = HpkeConfig {
            id: HpkeConfigId(194),
            kem_id: HpkeKemId(0x0010),
            kdf_id: HpkeKdfId(0x0001),
            aead_id: HpkeAeadId(0x0001),
            public_key: HpkePublicKey(vec![1, 2, 3, 4]),
        };
        // id, kem, kdf, aead, then the key with a two-byte length.
        roundtrip(&config, Some(&unhex("c2 0010 0001 0001 0004 01020304")));
        let second = HpkeConfig {
            id: HpkeConfigId(17),
            kem_id: HpkeKemId(0x0020),
            kdf_id: HpkeKdfId(0x0001),
            aead_id: HpkeAeadId(0x0003),
            public_key: HpkePublicKey(vec![4, 3, 2, 1]),
        };
        let list = HpkeConfigList(vec![config.clone(), second]);
        roundtrip(&list, Some(&unhex("001a c2 0010 0001 0001 0004 01020304 11 0020 0001 0003 0004 04030201")));
        // An empty list and an empty public key are outside the declared ranges.
        assert!(HpkeConfigList::get_decoded(&unhex("0000")).is_err());
        assert!(HpkeConfigList(vec![]).get_encoded().is_err());
        assert!(HpkeConfig::get_decoded(&unhex("c2 0010 0001 0001 0000")).is_err());
        // A length prefix longer than the body is an error, not a panic.
        assert!(HpkeConfigList::get_decoded(&unhex("ffff c2")).is_err());
    }

    #[test]
    fn hpke_ciphertext() {
        let ct = HpkeCiphertext { config_id: HpkeConfigId(1), enc: vec![0x0f, 0x0e], payload: vec![0x0b, 0x0a, 0x09] };
        roundtrip(&ct, Some(&unhex("01 0002 0f0e 00000003 0b0a09")));
        assert!(HpkeCiphertext::get_decoded(&unhex("01 0000 00000001 00")).is_err());
        assert!(HpkeCiphertext::get_decoded(&unhex("01 0001 00 00000000")).is_err());
        assert!(HpkeCiphertext::get_decoded(&unhex("01 0001 00 ffffffff 00")).is_err());
    }

    #[test]
    fn extension_and_url() {
        roundtrip(
            &Extension { extension_type: ExtensionType(0xfeed), extension_data: vec![1, 2] },
            Some(&unhex("feed 0002 0102")),
        );
        roundtrip(&Extension { extension_type: ExtensionType(1), extension_data: vec![] }, Some(&unhex("0001 0000")));
        let url = Url::new("https://example.com/").unwrap();
        let mut expected = vec![0, 20];
        expected.extend_from_slice(b"https://example.com/");
        roundtrip(&url, Some(&expected));
        assert!(Url::new("").is_err());
        assert!(Url::get_decoded(&[0, 0]).is_err());
        assert!(Url::get_decoded(&[0, 1, 0xff]).is_err());
        assert!(strictly_increasing([1, 2, 5]));
        assert!(!strictly_increasing([1, 1]));
        assert!(!strictly_increasing([2, 1]));
    }
}
