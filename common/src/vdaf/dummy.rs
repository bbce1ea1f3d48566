//! A VDAF of as many rounds as asked, for tests only (cargo feature `test-vdaf`): prio's dummy
//! VDAF, which adds bytes modulo 256 and proves nothing. Prio3 verifies in one round, so without
//! it no aggregation job would ever reach DAP-18's continuation phase; with it, the tests drive
//! continuation steps between real servers (a lost answer to a continuation, step skew).
//! A production build (without the feature) knows no such VDAF.

use super::{AggregateShare, OutputShare, Transition, VdafFailure, VerifyState};
use prio::codec::{Decode, Encode};
use prio::topology::ping_pong::{PingPongMessage, PingPongState, PingPongTopology};
use prio::vdaf::dummy::{self, AggregationParam, InputShare, VerifierState};
use prio::vdaf::Collector;

/// The VDAF's codepoint: the first of the VDAF registry's private-use range, as prio uses it.
pub const DUMMY_VDAF_TYPE: u32 = 0xFFFF_0000;

/// The task's aggregation parameter: duet sends the empty one, which stands for 0 here.
const PARAM: AggregationParam = AggregationParam(0);

pub(super) fn new(rounds: u32) -> Result<dummy::Vdaf, VdafFailure> {
    if !(1..=16).contains(&rounds) {
        return Err(VdafFailure::BadConfig(format!("the test VDAF runs 1 to 16 rounds, not {rounds}")));
    }
    Ok(dummy::Vdaf::new(rounds))
}

fn to_transition(state: PingPongState<VerifierState, dummy::OutputShare>) -> Result<Transition, VdafFailure> {
    Ok(match state {
        PingPongState::Continued(c) => {
            Transition::Continued { state: VerifyState::Dummy(c.verifier_state), outbound: c.message.get_encoded()? }
        }
        PingPongState::FinishedWithOutbound { output_share, message } => Transition::FinishedWithOutbound {
            out_share: OutputShare::Dummy(output_share),
            outbound: message.get_encoded()?,
        },
        PingPongState::Finished { output_share } => {
            Transition::Finished { out_share: OutputShare::Dummy(output_share) }
        }
    })
}

pub(super) fn leader_init(
    v: &dummy::Vdaf,
    ctx: &[u8],
    nonce: &[u8; 16],
    input_share: &[u8],
) -> Result<(VerifyState, Vec<u8>), VdafFailure> {
    let input = InputShare::get_decoded(input_share)?;
    let continued = v.leader_initialized(&[], ctx, &PARAM, nonce, &(), &input)?;
    Ok((VerifyState::Dummy(continued.verifier_state), continued.message.get_encoded()?))
}

pub(super) fn helper_init(
    v: &dummy::Vdaf,
    ctx: &[u8],
    nonce: &[u8; 16],
    input_share: &[u8],
    inbound: &[u8],
) -> Result<Transition, VdafFailure> {
    let input = InputShare::get_decoded(input_share)?;
    let inbound = PingPongMessage::get_decoded(inbound)?;
    to_transition(v.helper_initialized(&[], ctx, &PARAM, nonce, &(), &input, &inbound)?.evaluate(ctx, v)?)
}

pub(super) fn continued(
    v: &dummy::Vdaf,
    is_leader: bool,
    ctx: &[u8],
    state: VerifyState,
    inbound: &[u8],
) -> Result<Transition, VdafFailure> {
    let VerifyState::Dummy(state) = state else { return Err(VdafFailure::StateMismatch) };
    let inbound = PingPongMessage::get_decoded(inbound)?;
    let continuation = if is_leader {
        v.leader_continued(ctx, &PARAM, state, &inbound)?
    } else {
        v.helper_continued(ctx, &PARAM, state, &inbound)?
    };
    to_transition(continuation.evaluate(ctx, v)?)
}

pub(super) fn decode_state(bytes: &[u8]) -> Result<VerifyState, VdafFailure> {
    Ok(VerifyState::Dummy(VerifierState::get_decoded(bytes)?))
}

pub(super) fn decode_output_share(bytes: &[u8]) -> Result<OutputShare, VdafFailure> {
    Ok(OutputShare::Dummy(dummy::OutputShare::get_decoded(bytes)?))
}

pub(super) fn aggregate_init() -> AggregateShare {
    AggregateShare::Dummy(dummy::AggregateShare(0))
}

pub(super) fn decode_aggregate_share(bytes: &[u8]) -> Result<AggregateShare, VdafFailure> {
    Ok(AggregateShare::Dummy(dummy::AggregateShare::get_decoded(bytes)?))
}

pub(super) fn unshard(v: &dummy::Vdaf, shares: [&AggregateShare; 2], n: usize) -> Result<u64, VdafFailure> {
    let typed = shares
        .iter()
        .map(|s| match s {
            AggregateShare::Dummy(a) => Ok(*a),
            _ => Err(VdafFailure::StateMismatch),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(v.unshard(&PARAM, typed, n)?)
}

#[cfg(test)]
mod tests {
    use super::super::{vdaf_context, Measurement, Transition, Vdaf, VdafConfig, VerifyKey};
    use crate::messages::TaskId;

    /// Runs one report through DAP-18's ping-pong as the two servers do; returns the number of
    /// continuation steps the leader sends and the two output shares' sum.
    fn run(rounds: u32, m: u8) -> (usize, u64) {
        let vdaf = Vdaf::new(&VdafConfig::Dummy { rounds }).unwrap();
        let (key, ctx, nonce) = (VerifyKey::random(), vdaf_context(&TaskId::random()), [7u8; 16]);
        let (public, [ls, hs]) = vdaf.shard(&ctx, &Measurement::Dummy(m), &nonce).unwrap();
        let (mut leader, to_helper) = vdaf.leader_init(&key, &ctx, &nonce, &public, &ls).unwrap();
        let mut helper = vdaf.helper_init(&key, &ctx, &nonce, &public, &hs, &to_helper).unwrap();
        let (mut steps, mut leader_out, mut helper_out) = (0, None, None);
        loop {
            // The helper's answer to the last request.
            let inbound = match helper {
                Transition::Continued { ref outbound, .. } => outbound.clone(),
                Transition::FinishedWithOutbound { ref out_share, ref outbound } => {
                    helper_out = Some(out_share.clone());
                    outbound.clone()
                }
                Transition::Finished { ref out_share } => {
                    helper_out = Some(out_share.clone());
                    break;
                }
            };
            let helper_state = match helper {
                Transition::Continued { state, .. } => Some(state),
                _ => None,
            };
            match vdaf.leader_continued(&ctx, leader, &inbound).unwrap() {
                Transition::Finished { out_share } => {
                    leader_out = Some(out_share);
                    break;
                }
                Transition::Continued { state, outbound } => {
                    steps += 1;
                    leader = state;
                    helper = vdaf.helper_continued(&ctx, helper_state.unwrap(), &outbound).unwrap();
                }
                Transition::FinishedWithOutbound { out_share, outbound } => {
                    steps += 1;
                    leader_out = Some(out_share);
                    helper = vdaf.helper_continued(&ctx, helper_state.unwrap(), &outbound).unwrap();
                    assert!(matches!(helper, Transition::Finished { .. }), "the helper finishes last");
                    helper_out = match helper {
                        Transition::Finished { out_share } => Some(out_share),
                        _ => None,
                    };
                    break;
                }
            }
        }
        let mut agg = vdaf.aggregate_init();
        agg.accumulate(&leader_out.unwrap()).unwrap();
        let mut helper_agg = vdaf.aggregate_init();
        helper_agg.accumulate(&helper_out.unwrap()).unwrap();
        match vdaf.unshard(&agg, &helper_agg, 1).unwrap() {
            super::super::AggregateResult::Scalar(v) => (steps, v),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rounds_take_continuation_steps_and_the_shares_add_up() {
        // One round: no continuation (as Prio3); each two rounds more take one more step.
        assert_eq!(run(1, 200), (0, 200));
        assert_eq!(run(2, 17), (1, 17));
        assert_eq!(run(3, 255), (1, 255));
        assert_eq!(run(4, 0), (2, 0));
        assert!(Vdaf::new(&VdafConfig::Dummy { rounds: 0 }).is_err());
    }
}
