//! The VDAFs a duet task can run: the Prio3 family of prio 0.18.1 behind one [`Vdaf`] type that
//! works on encoded messages, so the servers never become generic over the VDAF. What a task's
//! VDAF is (the "VDAF Configuration Encodings" appendix of DAP-18, [`VdafConfig`]) and the values
//! users see live in [`config`].

use crate::messages::ReportError;
use prio::codec::{CodecError, Decode, Encode, ParameterizedDecode};
use prio::field::{Field128, Field64, FieldElement};
use prio::flp::Type;
use prio::topology::ping_pong::{PingPongError, PingPongMessage, PingPongState, PingPongTopology};
use prio::vdaf::prio3::{
    Prio3, Prio3Count, Prio3Histogram, Prio3InputShare, Prio3MultihotCountVec, Prio3PublicShare, Prio3Sum, Prio3SumVec,
    Prio3VerifyState,
};
use prio::vdaf::xof::XofTurboShake128;
use prio::vdaf::{Aggregatable, Aggregator, Client, Collector, VdafError};
use std::fmt;
pub mod config;
#[cfg(feature = "test-vdaf")]
mod dummy;
mod noisy;
#[cfg(feature = "test-vdaf")]
pub use dummy::DUMMY_VDAF_TYPE;

pub use config::*;

/// Why a report failed VDAF processing, mapped to the `ReportError` the spec prescribes.
#[derive(Debug, thiserror::Error)]
pub enum VdafFailure {
    /// A public share, input share or peer message that does not decode.
    #[error("malformed VDAF message: {0}")]
    Decode(#[from] CodecError),
    /// Verification ran and rejected the report.
    #[error("VDAF verification failed: {0}")]
    Verify(#[from] PingPongError),
    /// A VDAF-level error outside verification (sharding, aggregation, unsharding).
    #[error("VDAF error: {0}")]
    Vdaf(#[from] VdafError),
    #[error("verification state does not belong to this VDAF")]
    StateMismatch,
    #[error("{0}")]
    BadMeasurement(String),
    #[error("a verification key is 32 bytes in URL-safe unpadded base64")]
    BadVerifyKey,
    #[error("invalid VDAF configuration: {0}")]
    BadConfig(String),
}

impl VdafFailure {
    /// The report error to record for a report that failed with this.
    pub fn report_error(&self) -> ReportError {
        match self {
            VdafFailure::Decode(_) => ReportError::InvalidMessage,
            _ => ReportError::VdafVerifyError,
        }
    }
}

macro_rules! field_enum {
    ($(#[$doc:meta])* $name:ident, $inner:ident $(, $extra:tt)?; $dummy:ty) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub enum $name {
            F64($inner<Field64 $(, $extra)?>),
            F128($inner<Field128 $(, $extra)?>),
            #[cfg(feature = "test-vdaf")]
            Dummy($dummy),
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl Encode for $name {
            fn encode(&self, bytes: &mut Vec<u8>) -> Result<(), CodecError> {
                match self {
                    $name::F64(x) => x.encode(bytes),
                    $name::F128(x) => x.encode(bytes),
                    #[cfg(feature = "test-vdaf")]
                    $name::Dummy(x) => x.encode(bytes),
                }
            }
            fn encoded_len(&self) -> Option<usize> {
                match self {
                    $name::F64(x) => x.encoded_len(),
                    $name::F128(x) => x.encoded_len(),
                    #[cfg(feature = "test-vdaf")]
                    $name::Dummy(x) => x.encoded_len(),
                }
            }
        }
    };
}

use prio::vdaf::{AggregateShare as PrioAggregateShare, OutputShare as PrioOutputShare};
field_enum!(
    /// One aggregator's output share of one report.
    OutputShare, PrioOutputShare; prio::vdaf::dummy::OutputShare
);
field_enum!(
    /// A running or final aggregate share.
    AggregateShare, PrioAggregateShare; prio::vdaf::dummy::AggregateShare
);
field_enum!(
    /// An aggregator's verification state between steps; encodes for storage.
    VerifyState, Prio3VerifyState, 32; prio::vdaf::dummy::VerifierState
);

impl AggregateShare {
    /// Adds one output share (`Vdaf.agg_update`).
    pub fn accumulate(&mut self, out: &OutputShare) -> Result<(), VdafFailure> {
        match (self, out) {
            (AggregateShare::F64(a), OutputShare::F64(o)) => Ok(a.accumulate(o)?),
            (AggregateShare::F128(a), OutputShare::F128(o)) => Ok(a.accumulate(o)?),
            #[cfg(feature = "test-vdaf")]
            (AggregateShare::Dummy(a), OutputShare::Dummy(o)) => Ok(a.accumulate(o)?),
            _ => Err(VdafFailure::StateMismatch),
        }
    }

    /// Merges another aggregate share (`Vdaf.merge`), e.g. of another batch bucket shard.
    pub fn merge(&mut self, other: &AggregateShare) -> Result<(), VdafFailure> {
        match (self, other) {
            (AggregateShare::F64(a), AggregateShare::F64(o)) => Ok(a.merge(o)?),
            (AggregateShare::F128(a), AggregateShare::F128(o)) => Ok(a.merge(o)?),
            #[cfg(feature = "test-vdaf")]
            (AggregateShare::Dummy(a), AggregateShare::Dummy(o)) => Ok(a.merge(o)?),
            _ => Err(VdafFailure::StateMismatch),
        }
    }
}

/// Conversions between prio's typed values and the field-level enums above.
trait FieldWrap: FieldElement + Sized {
    fn wrap_out(o: PrioOutputShare<Self>) -> OutputShare;
    fn wrap_agg(a: PrioAggregateShare<Self>) -> AggregateShare;
    fn unwrap_agg(a: &AggregateShare) -> Option<&PrioAggregateShare<Self>>;
    fn wrap_state(s: Prio3VerifyState<Self, 32>) -> VerifyState;
    fn unwrap_state(s: VerifyState) -> Option<Prio3VerifyState<Self, 32>>;
}

macro_rules! field_wrap {
    ($field:ty, $variant:ident) => {
        impl FieldWrap for $field {
            fn wrap_out(o: PrioOutputShare<Self>) -> OutputShare {
                OutputShare::$variant(o)
            }
            fn wrap_agg(a: PrioAggregateShare<Self>) -> AggregateShare {
                AggregateShare::$variant(a)
            }
            fn unwrap_agg(a: &AggregateShare) -> Option<&PrioAggregateShare<Self>> {
                match a {
                    AggregateShare::$variant(a) => Some(a),
                    _ => None,
                }
            }
            fn wrap_state(s: Prio3VerifyState<Self, 32>) -> VerifyState {
                VerifyState::$variant(s)
            }
            fn unwrap_state(s: VerifyState) -> Option<Prio3VerifyState<Self, 32>> {
                match s {
                    VerifyState::$variant(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
field_wrap!(Field64, F64);
field_wrap!(Field128, F128);

/// The result of one ping-pong step for one report.
#[derive(Debug)]
pub enum Transition {
    /// More rounds follow: keep `state`, send `outbound` to the peer.
    Continued { state: VerifyState, outbound: Vec<u8> },
    /// Verified: commit `out_share`, and send `outbound` so the peer can finish too.
    FinishedWithOutbound { out_share: OutputShare, outbound: Vec<u8> },
    /// Verified, nothing more to send: commit `out_share`.
    Finished { out_share: OutputShare },
}

#[derive(Clone, Debug)]
enum Instance {
    Count(Prio3Count),
    Sum(Prio3Sum),
    SumVec(Prio3SumVec),
    Histogram(Prio3Histogram),
    MultihotCountVec(Prio3MultihotCountVec),
    #[cfg(feature = "test-vdaf")]
    Dummy(prio::vdaf::dummy::Vdaf),
}

/// Runs `$body` with `$v` bound to the concrete Prio3 instance, or `$dummy` with `$d` bound to
/// the test build's multi-round VDAF.
macro_rules! with_instance {
    ($self:expr, $v:ident => $body:expr, $d:ident => $dummy:expr) => {
        match &$self.instance {
            Instance::Count($v) => $body,
            Instance::Sum($v) => $body,
            Instance::SumVec($v) => $body,
            Instance::Histogram($v) => $body,
            Instance::MultihotCountVec($v) => $body,
            #[cfg(feature = "test-vdaf")]
            Instance::Dummy($d) => $dummy,
        }
    };
}

/// One task's VDAF, ready to shard, verify, aggregate and unshard encoded messages.
#[derive(Clone, Debug)]
pub struct Vdaf {
    config: VdafConfig,
    instance: Instance,
}

type P3<T> = Prio3<T, XofTurboShake128, 32>;

fn state_to_transition<F: FieldWrap>(
    state: PingPongState<Prio3VerifyState<F, 32>, PrioOutputShare<F>>,
) -> Result<Transition, VdafFailure> {
    Ok(match state {
        PingPongState::Continued(c) => {
            Transition::Continued { state: F::wrap_state(c.verifier_state), outbound: c.message.get_encoded()? }
        }
        PingPongState::FinishedWithOutbound { output_share, message } => {
            Transition::FinishedWithOutbound { out_share: F::wrap_out(output_share), outbound: message.get_encoded()? }
        }
        PingPongState::Finished { output_share } => Transition::Finished { out_share: F::wrap_out(output_share) },
    })
}

fn decode_shares<T: Type>(
    v: &P3<T>,
    agg_id: usize,
    public_share: &[u8],
    input_share: &[u8],
) -> Result<(Prio3PublicShare<32>, Prio3InputShare<T::Field, 32>), VdafFailure> {
    let public = Prio3PublicShare::get_decoded_with_param(v, public_share)?;
    let input = Prio3InputShare::get_decoded_with_param(&(v, agg_id), input_share)?;
    Ok((public, input))
}

fn leader_init_g<T: Type>(
    v: &P3<T>,
    key: &VerifyKey,
    ctx: &[u8],
    nonce: &[u8; 16],
    public_share: &[u8],
    input_share: &[u8],
) -> Result<(VerifyState, Vec<u8>), VdafFailure>
where
    T::Field: FieldWrap,
{
    let (public, input) = decode_shares(v, 0, public_share, input_share)?;
    let continued = v.leader_initialized(key.as_bytes(), ctx, &(), nonce, &public, &input)?;
    Ok((T::Field::wrap_state(continued.verifier_state), continued.message.get_encoded()?))
}

#[allow(clippy::too_many_arguments)]
fn helper_init_g<T: Type>(
    v: &P3<T>,
    key: &VerifyKey,
    ctx: &[u8],
    nonce: &[u8; 16],
    public_share: &[u8],
    input_share: &[u8],
    inbound: &[u8],
) -> Result<Transition, VdafFailure>
where
    T::Field: FieldWrap,
{
    let (public, input) = decode_shares(v, 1, public_share, input_share)?;
    let inbound = PingPongMessage::get_decoded(inbound)?;
    let continuation = v.helper_initialized(key.as_bytes(), ctx, &(), nonce, &public, &input, &inbound)?;
    state_to_transition(continuation.evaluate(ctx, v)?)
}

fn continued_g<T: Type>(
    v: &P3<T>,
    is_leader: bool,
    ctx: &[u8],
    state: VerifyState,
    inbound: &[u8],
) -> Result<Transition, VdafFailure>
where
    T::Field: FieldWrap,
{
    let state = T::Field::unwrap_state(state).ok_or(VdafFailure::StateMismatch)?;
    let inbound = PingPongMessage::get_decoded(inbound)?;
    let continuation = if is_leader {
        v.leader_continued(ctx, &(), state, &inbound)?
    } else {
        v.helper_continued(ctx, &(), state, &inbound)?
    };
    state_to_transition(continuation.evaluate(ctx, v)?)
}

fn unshard_g<T: Type>(
    v: &P3<T>,
    shares: [&AggregateShare; 2],
    num_measurements: usize,
) -> Result<T::AggregateResult, VdafFailure>
where
    T::Field: FieldWrap,
{
    let typed = shares
        .iter()
        .map(|s| T::Field::unwrap_agg(s).cloned().ok_or(VdafFailure::StateMismatch))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v.unshard(&(), typed, num_measurements)?)
}

fn decode_state_g<T: Type>(v: &P3<T>, agg_id: usize, bytes: &[u8]) -> Result<VerifyState, VdafFailure>
where
    T::Field: FieldWrap,
{
    let s = Prio3VerifyState::<T::Field, 32>::get_decoded_with_param(&(v, agg_id), bytes)?;
    Ok(T::Field::wrap_state(s))
}

fn decode_agg_g<T: Type>(v: &P3<T>, bytes: &[u8]) -> Result<AggregateShare, VdafFailure>
where
    T::Field: FieldWrap,
{
    let a = PrioAggregateShare::<T::Field>::get_decoded_with_param(&(v, &()), bytes)?;
    Ok(T::Field::wrap_agg(a))
}

fn decode_out_g<T: Type>(v: &P3<T>, bytes: &[u8]) -> Result<OutputShare, VdafFailure>
where
    T::Field: FieldWrap,
{
    let o = PrioOutputShare::<T::Field>::get_decoded_with_param(&(v, &()), bytes)?;
    Ok(T::Field::wrap_out(o))
}

fn agg_init_g<T: Type>(v: &P3<T>) -> AggregateShare
where
    T::Field: FieldWrap,
{
    T::Field::wrap_agg(v.aggregate_init(&()))
}

fn encode_shard<PS: Encode, IS: Encode>(
    (public, inputs): (PS, Vec<IS>),
) -> Result<(Vec<u8>, [Vec<u8>; 2]), VdafFailure> {
    let [leader, helper]: [IS; 2] =
        inputs.try_into().map_err(|_| VdafFailure::BadConfig("Prio3 must produce two input shares".into()))?;
    Ok((public.get_encoded()?, [leader.get_encoded()?, helper.get_encoded()?]))
}

fn usize_of(v: u32) -> usize {
    v as usize
}

impl Vdaf {
    /// Instantiates the VDAF for two aggregators, refusing parameters prio rejects.
    pub fn new(config: &VdafConfig) -> Result<Self, VdafFailure> {
        let bad = |e: VdafError| VdafFailure::BadConfig(e.to_string());
        let instance = match *config {
            VdafConfig::Prio3Count => Instance::Count(Prio3::new_count(2).map_err(bad)?),
            VdafConfig::Prio3Sum { max_measurement } => Instance::Sum(Prio3::new_sum(2, max_measurement).map_err(bad)?),
            VdafConfig::Prio3SumVec { length, max_measurement, chunk_length } => Instance::SumVec(
                Prio3::new_sum_vec(2, u128::from(max_measurement), usize_of(length), usize_of(chunk_length))
                    .map_err(bad)?,
            ),
            VdafConfig::Prio3Histogram { length, chunk_length } => {
                Instance::Histogram(Prio3::new_histogram(2, usize_of(length), usize_of(chunk_length)).map_err(bad)?)
            }
            VdafConfig::Prio3MultihotCountVec { length, chunk_length, max_weight } => {
                let max_weight =
                    usize::try_from(max_weight).map_err(|_| VdafFailure::BadConfig("max_weight too large".into()))?;
                Instance::MultihotCountVec(
                    Prio3::new_multihot_count_vec(2, usize_of(length), max_weight, usize_of(chunk_length))
                        .map_err(bad)?,
                )
            }
            #[cfg(feature = "test-vdaf")]
            VdafConfig::Dummy { rounds } => Instance::Dummy(dummy::new(rounds)?),
        };
        Ok(Self { config: config.clone(), instance })
    }

    pub fn config(&self) -> &VdafConfig {
        &self.config
    }

    /// Shards a measurement: the encoded public share and the leader's and helper's input shares.
    pub fn shard(
        &self,
        ctx: &[u8],
        measurement: &Measurement,
        nonce: &[u8; 16],
    ) -> Result<(Vec<u8>, [Vec<u8>; 2]), VdafFailure> {
        let wrong = || VdafFailure::BadMeasurement(format!("{measurement:?} does not fit {}", self.config));
        match (&self.instance, measurement) {
            (Instance::Count(v), Measurement::Count(m)) => encode_shard(v.shard(ctx, m, nonce)?),
            (Instance::Sum(v), Measurement::Sum(m)) => encode_shard(v.shard(ctx, m, nonce)?),
            (Instance::SumVec(v), Measurement::SumVec(m)) => encode_shard(v.shard(ctx, m, nonce)?),
            (Instance::Histogram(v), Measurement::Histogram(m)) => encode_shard(v.shard(ctx, m, nonce)?),
            (Instance::MultihotCountVec(v), Measurement::MultihotCountVec(m)) => encode_shard(v.shard(ctx, m, nonce)?),
            #[cfg(feature = "test-vdaf")]
            (Instance::Dummy(v), Measurement::Dummy(m)) => encode_shard(prio::vdaf::Client::shard(v, ctx, m, nonce)?),
            _ => Err(wrong()),
        }
    }

    /// `ping_pong_leader_init`: the leader's state and its first message (a `VerifyInit` payload).
    pub fn leader_init(
        &self,
        key: &VerifyKey,
        ctx: &[u8],
        nonce: &[u8; 16],
        public_share: &[u8],
        input_share: &[u8],
    ) -> Result<(VerifyState, Vec<u8>), VdafFailure> {
        with_instance!(self, v => leader_init_g(v, key, ctx, nonce, public_share, input_share),
            d => dummy::leader_init(d, ctx, nonce, input_share))
    }

    /// `ping_pong_helper_init` on the leader's first message.
    pub fn helper_init(
        &self,
        key: &VerifyKey,
        ctx: &[u8],
        nonce: &[u8; 16],
        public_share: &[u8],
        input_share: &[u8],
        inbound: &[u8],
    ) -> Result<Transition, VdafFailure> {
        with_instance!(self, v => helper_init_g(v, key, ctx, nonce, public_share, input_share, inbound),
            d => dummy::helper_init(d, ctx, nonce, input_share, inbound))
    }

    /// `ping_pong_leader_continued` on the helper's message.
    pub fn leader_continued(&self, ctx: &[u8], state: VerifyState, inbound: &[u8]) -> Result<Transition, VdafFailure> {
        with_instance!(self, v => continued_g(v, true, ctx, state, inbound),
            d => dummy::continued(d, true, ctx, state, inbound))
    }

    /// `ping_pong_helper_continued` on the leader's message.
    pub fn helper_continued(&self, ctx: &[u8], state: VerifyState, inbound: &[u8]) -> Result<Transition, VdafFailure> {
        with_instance!(self, v => continued_g(v, false, ctx, state, inbound),
            d => dummy::continued(d, false, ctx, state, inbound))
    }

    /// Decodes a stored verification state of the aggregator with index `agg_id` (0 = leader).
    pub fn decode_verify_state(&self, agg_id: usize, bytes: &[u8]) -> Result<VerifyState, VdafFailure> {
        with_instance!(self, v => decode_state_g(v, agg_id, bytes), _d => dummy::decode_state(bytes))
    }

    /// Decodes a stored output share (the leader keeps one between steps when it finishes
    /// before the helper does).
    pub fn decode_output_share(&self, bytes: &[u8]) -> Result<OutputShare, VdafFailure> {
        with_instance!(self, v => decode_out_g(v, bytes), _d => dummy::decode_output_share(bytes))
    }

    /// Whether an encoded aggregation parameter is valid: Prio3 accepts only the empty one.
    pub fn is_agg_param_valid(&self, agg_param: &[u8]) -> bool {
        <()>::get_decoded(agg_param).is_ok()
    }

    /// `Vdaf.agg_init`: an empty aggregate share.
    pub fn aggregate_init(&self) -> AggregateShare {
        with_instance!(self, v => agg_init_g(v), _d => dummy::aggregate_init())
    }

    /// Decodes a stored or received aggregate share.
    pub fn decode_aggregate_share(&self, bytes: &[u8]) -> Result<AggregateShare, VdafFailure> {
        with_instance!(self, v => decode_agg_g(v, bytes), _d => dummy::decode_aggregate_share(bytes))
    }

    /// Combines the leader's and helper's aggregate shares into the result.
    pub fn unshard(
        &self,
        leader: &AggregateShare,
        helper: &AggregateShare,
        num_measurements: u64,
    ) -> Result<AggregateResult, VdafFailure> {
        let n = usize::try_from(num_measurements).map_err(|_| VdafFailure::BadConfig("report count".into()))?;
        let shares = [leader, helper];
        Ok(match &self.instance {
            Instance::Count(v) => AggregateResult::Scalar(unshard_g(v, shares, n)?),
            Instance::Sum(v) => AggregateResult::Scalar(unshard_g(v, shares, n)?),
            Instance::SumVec(v) => AggregateResult::Vector(unshard_g(v, shares, n)?),
            Instance::Histogram(v) => AggregateResult::Vector(unshard_g(v, shares, n)?),
            Instance::MultihotCountVec(v) => AggregateResult::Vector(unshard_g(v, shares, n)?),
            #[cfg(feature = "test-vdaf")]
            Instance::Dummy(v) => AggregateResult::Scalar(dummy::unshard(v, shares, n)?),
        })
    }
}

/// The VDAF application context DAP-18 uses: `"dap-18" || task_id`.
pub fn vdaf_context(task_id: &crate::messages::TaskId) -> [u8; 38] {
    let mut ctx = [0u8; 38];
    ctx[..6].copy_from_slice(b"dap-18");
    ctx[6..].copy_from_slice(task_id.as_bytes());
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ReportId, TaskId};

    /// Runs one report through both aggregators' ping-pong verification; returns the output
    /// shares, or the failure of whichever side rejected.
    pub(crate) fn verify_report(
        vdaf: &Vdaf,
        key: &VerifyKey,
        ctx: &[u8],
        nonce: &[u8; 16],
        public: &[u8],
        leader_share: &[u8],
        helper_share: &[u8],
    ) -> Result<(OutputShare, OutputShare), VdafFailure> {
        let (leader_state, to_helper) = vdaf.leader_init(key, ctx, nonce, public, leader_share)?;
        let helper_out = match vdaf.helper_init(key, ctx, nonce, public, helper_share, &to_helper)? {
            Transition::FinishedWithOutbound { out_share, outbound } => (out_share, outbound),
            other => panic!("Prio3 helper should finish in one round, got {other:?}"),
        };
        match vdaf.leader_continued(ctx, leader_state, &helper_out.1)? {
            Transition::Finished { out_share } => Ok((out_share, helper_out.0)),
            other => panic!("Prio3 leader should finish after the helper's message, got {other:?}"),
        }
    }

    fn run(config: VdafConfig, measurements: &[Measurement]) -> AggregateResult {
        let vdaf = Vdaf::new(&config).unwrap();
        let key = VerifyKey::random();
        let ctx = vdaf_context(&TaskId::random());
        let mut leader_agg = vdaf.aggregate_init();
        let mut helper_agg = vdaf.aggregate_init();
        for m in measurements {
            let nonce = *ReportId::random().as_bytes();
            let (public, [ls, hs]) = vdaf.shard(&ctx, m, &nonce).unwrap();
            let (lo, ho) = verify_report(&vdaf, &key, &ctx, &nonce, &public, &ls, &hs).unwrap();
            leader_agg.accumulate(&lo).unwrap();
            helper_agg.accumulate(&ho).unwrap();
        }
        // Through storage and back, as the servers will do.
        let leader_agg = vdaf.decode_aggregate_share(&leader_agg.get_encoded().unwrap()).unwrap();
        vdaf.unshard(&leader_agg, &helper_agg, measurements.len() as u64).unwrap()
    }

    #[test]
    fn every_prio3_variant_end_to_end() {
        use Measurement as M;
        assert_eq!(
            run(VdafConfig::Prio3Count, &[M::Count(true), M::Count(false), M::Count(true)]),
            AggregateResult::Scalar(2)
        );
        assert_eq!(
            run(VdafConfig::Prio3Sum { max_measurement: 1000 }, &[M::Sum(377), M::Sum(1000), M::Sum(0)]),
            AggregateResult::Scalar(1377)
        );
        assert_eq!(
            run(
                VdafConfig::Prio3SumVec { length: 3, max_measurement: 15, chunk_length: 2 },
                &[M::SumVec(vec![1, 15, 0]), M::SumVec(vec![2, 3, 4])]
            ),
            AggregateResult::Vector(vec![3, 18, 4])
        );
        assert_eq!(
            run(
                VdafConfig::Prio3Histogram { length: 4, chunk_length: 2 },
                &[M::Histogram(0), M::Histogram(3), M::Histogram(3)]
            ),
            AggregateResult::Vector(vec![1, 0, 0, 2])
        );
        assert_eq!(
            run(
                VdafConfig::Prio3MultihotCountVec { length: 3, chunk_length: 2, max_weight: 2 },
                &[M::MultihotCountVec(vec![true, false, true]), M::MultihotCountVec(vec![true, true, false])]
            ),
            AggregateResult::Vector(vec![2, 1, 1])
        );
    }

    #[test]
    fn tampered_input_share_is_rejected() {
        let configs = [
            (VdafConfig::Prio3Count, Measurement::Count(true)),
            (VdafConfig::Prio3Sum { max_measurement: 10 }, Measurement::Sum(3)),
            (
                VdafConfig::Prio3SumVec { length: 2, max_measurement: 3, chunk_length: 1 },
                Measurement::SumVec(vec![1, 2]),
            ),
            (VdafConfig::Prio3Histogram { length: 3, chunk_length: 2 }, Measurement::Histogram(1)),
            (
                VdafConfig::Prio3MultihotCountVec { length: 3, chunk_length: 2, max_weight: 1 },
                Measurement::MultihotCountVec(vec![false, true, false]),
            ),
        ];
        for (config, m) in configs {
            let vdaf = Vdaf::new(&config).unwrap();
            let key = VerifyKey::random();
            let ctx = vdaf_context(&TaskId::random());
            let nonce = *ReportId::random().as_bytes();
            let (public, [mut ls, hs]) = vdaf.shard(&ctx, &m, &nonce).unwrap();
            // Flip a bit of the leader's measurement share: the proof no longer verifies.
            ls[0] ^= 1;
            let err = verify_report(&vdaf, &key, &ctx, &nonce, &public, &ls, &hs).unwrap_err();
            assert_eq!(err.report_error(), ReportError::VdafVerifyError, "{config}: {err}");
            // A truncated share does not decode: invalid_message.
            let err = verify_report(&vdaf, &key, &ctx, &nonce, &public, &hs[..hs.len() - 1], &hs).unwrap_err();
            assert_eq!(err.report_error(), ReportError::InvalidMessage, "{config}: {err}");
            // Different verify keys on the two sides also fail verification.
            let (public, [ls, hs]) = vdaf.shard(&ctx, &m, &nonce).unwrap();
            let (state, msg) = vdaf.leader_init(&key, &ctx, &nonce, &public, &ls).unwrap();
            let helper = vdaf.helper_init(&VerifyKey::random(), &ctx, &nonce, &public, &hs, &msg);
            let leader_err = match helper {
                Ok(Transition::FinishedWithOutbound { outbound, .. }) => {
                    vdaf.leader_continued(&ctx, state, &outbound).err()
                }
                Err(e) => Some(e),
                Ok(other) => panic!("{other:?}"),
            };
            assert!(leader_err.is_some(), "{config}: mismatched keys verified");
        }
    }

    #[test]
    fn invalid_measurement_is_refused_by_sharding() {
        let vdaf = Vdaf::new(&VdafConfig::Prio3Sum { max_measurement: 10 }).unwrap();
        let ctx = vdaf_context(&TaskId::random());
        assert!(vdaf.shard(&ctx, &Measurement::Sum(11), &[0; 16]).is_err());
        assert!(vdaf.shard(&ctx, &Measurement::Count(true), &[0; 16]).is_err());
        assert!(Vdaf::new(&VdafConfig::Prio3Histogram { length: 0, chunk_length: 1 }).is_err());
    }

    #[test]
    fn verify_state_survives_storage() {
        let vdaf = Vdaf::new(&VdafConfig::Prio3Histogram { length: 5, chunk_length: 2 }).unwrap();
        let key = VerifyKey::random();
        let ctx = vdaf_context(&TaskId::random());
        let nonce = [3u8; 16];
        let (public, [ls, hs]) = vdaf.shard(&ctx, &Measurement::Histogram(2), &nonce).unwrap();
        let (state, msg) = vdaf.leader_init(&key, &ctx, &nonce, &public, &ls).unwrap();
        let state = vdaf.decode_verify_state(0, &state.get_encoded().unwrap()).unwrap();
        let Transition::FinishedWithOutbound { outbound, .. } =
            vdaf.helper_init(&key, &ctx, &nonce, &public, &hs, &msg).unwrap()
        else {
            panic!()
        };
        assert!(matches!(vdaf.leader_continued(&ctx, state, &outbound).unwrap(), Transition::Finished { .. }));
    }

    #[test]
    fn measurement_parsing_and_agg_param() {
        let c = VdafConfig::Prio3SumVec { length: 3, max_measurement: 9, chunk_length: 1 };
        assert_eq!(Measurement::parse(&c, "1, 2,3").unwrap(), Measurement::SumVec(vec![1, 2, 3]));
        assert_eq!(Measurement::parse(&VdafConfig::Prio3Count, "1").unwrap(), Measurement::Count(true));
        assert!(Measurement::parse(&VdafConfig::Prio3Count, "2").is_err());
        let vdaf = Vdaf::new(&VdafConfig::Prio3Count).unwrap();
        assert!(vdaf.is_agg_param_valid(&[]));
        assert!(!vdaf.is_agg_param_valid(&[0]));
        assert_eq!(format!("{:?}", VerifyKey::random()), "VerifyKey([redacted])");
        let k = VerifyKey::random();
        assert_eq!(VerifyKey::from_base64(&k.to_base64()).unwrap(), k);
    }

    #[test]
    fn vdaf_config_encodings() {
        use crate::messages::test_util::*;
        // Appendix "VDAF Configuration Encodings": vdaf_type, then the opaque configuration.
        let cases: [(VdafConfig, &str); 5] = [
            (VdafConfig::Prio3Count, "00000001 0000"),
            (VdafConfig::Prio3Sum { max_measurement: 1000 }, "00000002 0008 00000000000003e8"),
            (
                VdafConfig::Prio3SumVec { length: 8, max_measurement: 15, chunk_length: 3 },
                "00000003 0010 00000008 000000000000000f 00000003",
            ),
            (VdafConfig::Prio3Histogram { length: 10, chunk_length: 3 }, "00000004 0008 0000000a 00000003"),
            (
                VdafConfig::Prio3MultihotCountVec { length: 10, chunk_length: 3, max_weight: 4 },
                "00000005 0010 0000000a 00000003 0000000000000004",
            ),
        ];
        for (config, hex_str) in cases {
            let encoded = config.get_encoded().unwrap();
            assert_eq!(hex(&encoded), hex(&unhex(hex_str)));
            assert_eq!(VdafConfig::get_decoded(&encoded).unwrap(), config);
            for cut in 0..encoded.len() {
                assert!(VdafConfig::get_decoded(&encoded[..cut]).is_err());
            }
        }
        // Poplar1 and unknown types are refused; so is a configuration with trailing bytes.
        assert!(VdafConfig::get_decoded(&unhex("00000006 0002 0010")).is_err());
        assert!(VdafConfig::get_decoded(&unhex("00000001 0001 00")).is_err());
    }
}
