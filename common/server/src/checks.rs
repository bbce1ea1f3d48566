//! The checks both aggregators run on a report share (DAP-18 "Input Share Decryption" and
//! "Input Share Validation"), in one place so that leader and helper cannot drift apart. The
//! leader runs them twice: the cheap ones at upload ("Uploading Reports"), the rest when it opens
//! its share for aggregation; the helper runs them all when a job initialises.
//!
//! The deliberate differences between the two roles, all the spec's:
//! - A report outside the task interval is *dropped* at upload (`report_dropped`, "Uploading
//!   Reports"), but *rejected* during aggregation as `task_not_started` or `task_expired`
//!   ("Input Share Validation"): [`check_upload_time`] against [`check_report_time`].
//! - At upload an unknown HPKE config is `outdated_config`, so that the client refetches the
//!   configuration and tries again; once a share is being opened for aggregation it is
//!   `hpke_decrypt_error`, on either aggregator ([`open_input_share`]).
//! - The leader refuses public extensions at upload already (it recognises none), and both refuse
//!   any extension when they open their share; duet recognises no report extension yet, so any is
//!   "unrecognised", hence `invalid_message`.
//!
//! Alike on both: a report older than the task's report expiry age is `report_dropped`, at
//! upload and at aggregation: the replay records it would be checked against may be gone
//! ("Input Share Validation", and "Reducing Storage Requirements").

use duet_common::hpke::{open, HpkeApplicationInfo, HpkeKeypair};
use duet_common::messages::{
    HpkeCiphertext, InputShareAad, PlaintextInputShare, ReportError, ReportMetadata, Role, TaskId,
};
use duet_common::time::{Duration, Interval, Time};
use duet_common::Decode;

/// Too early: more than `skew` past the aggregator's `now` ("a few minutes ahead").
fn too_early(time: Time, now: Time, skew: Duration) -> bool {
    now.checked_add(skew).is_some_and(|limit| time > limit)
}

/// Too old: before the `oldest` report time the task takes ([`expired`]).
fn expired(time: Time, oldest: Option<Time>) -> bool {
    oldest.is_some_and(|oldest| time < oldest)
}

/// The time checks of "Input Share Validation" (2 to 4, and a report too old to check for
/// replays), at aggregation.
pub fn check_report_time(
    task_interval: Option<Interval>,
    time: Time,
    now: Time,
    skew: Duration,
    oldest: Option<Time>,
) -> Result<(), ReportError> {
    if too_early(time, now, skew) {
        return Err(ReportError::ReportTooEarly);
    }
    if expired(time, oldest) {
        return Err(ReportError::ReportDropped);
    }
    if let Some(interval) = task_interval {
        if time < interval.start {
            return Err(ReportError::TaskNotStarted);
        }
        if !interval.contains(time) {
            return Err(ReportError::TaskExpired);
        }
    }
    Ok(())
}

/// The time checks of "Uploading Reports", at the leader's upload.
pub fn check_upload_time(
    task_interval: Option<Interval>,
    time: Time,
    now: Time,
    skew: Duration,
    oldest: Option<Time>,
) -> Result<(), ReportError> {
    if too_early(time, now, skew) {
        return Err(ReportError::ReportTooEarly);
    }
    if expired(time, oldest) || task_interval.is_some_and(|i| !i.contains(time)) {
        return Err(ReportError::ReportDropped);
    }
    Ok(())
}

/// Public extensions: duet recognises none.
pub fn check_public_extensions(meta: &ReportMetadata) -> Result<(), ReportError> {
    if meta.public_extensions.is_empty() {
        Ok(())
    } else {
        Err(ReportError::InvalidMessage)
    }
}

/// The task-level inputs of opening a share.
pub struct ShareContext<'a> {
    pub task_id: &'a TaskId,
    /// The encoded `TaskConfiguration`, bound into the associated data.
    pub configuration_encoded: &'a [u8],
    /// The aggregator opening the share.
    pub role: Role,
}

/// Decrypts the aggregator's input share ("Input Share Decryption") and checks its extensions
/// ("Input Share Validation" 5 to 7): the plaintext share, or the report's error.
pub fn open_input_share(
    cx: &ShareContext<'_>,
    keys: &[HpkeKeypair],
    meta: &ReportMetadata,
    public_share: &[u8],
    share: &HpkeCiphertext,
) -> Result<PlaintextInputShare, ReportError> {
    // The spec asks for hpke_decrypt_error both for an unknown config ID and a failed open.
    let kp = keys.iter().find(|k| k.config().id == share.config_id).ok_or(ReportError::HpkeDecryptError)?;
    let aad = InputShareAad::encode_parts(cx.task_id, cx.configuration_encoded, meta, public_share)
        .map_err(|_| ReportError::InvalidMessage)?;
    let plain = open(kp, &HpkeApplicationInfo::InputShare { recipient: cx.role }, share, &aad)
        .map_err(|_| ReportError::HpkeDecryptError)?;
    let plain = PlaintextInputShare::get_decoded(&plain).map_err(|_| ReportError::InvalidMessage)?;
    // Any extension is unrecognised, so unsorted or repeated ones are refused with it.
    check_public_extensions(meta)?;
    if !plain.private_extensions.is_empty() {
        return Err(ReportError::InvalidMessage);
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_common::hpke::seal;
    use duet_common::messages::{Extension, ExtensionType, HpkeConfigId, ReportId};
    use duet_common::time::TimePrecision;
    use duet_common::Encode;

    fn t(units: u64) -> Time {
        Time::from_units(units)
    }

    #[test]
    fn report_times_at_aggregation_and_at_upload() {
        let skew = Duration::from_seconds_ceil(300, TimePrecision::from_seconds(60).unwrap());
        let interval = Some(Interval::new(t(100), Duration::from_units(50)));
        let now = t(120);
        // Within the skew: fine; past it: too early, at both steps.
        assert_eq!(check_report_time(interval, t(125), now, skew, None), Ok(()));
        assert_eq!(check_report_time(interval, t(126), now, skew, None), Err(ReportError::ReportTooEarly));
        assert_eq!(check_upload_time(interval, t(126), now, skew, None), Err(ReportError::ReportTooEarly));
        // Outside the task interval: rejected with the reason at aggregation, dropped at upload.
        assert_eq!(check_report_time(interval, t(99), now, skew, None), Err(ReportError::TaskNotStarted));
        assert_eq!(check_upload_time(interval, t(99), now, skew, None), Err(ReportError::ReportDropped));
        let later = t(160);
        assert_eq!(check_report_time(interval, t(150), later, skew, None), Err(ReportError::TaskExpired));
        assert_eq!(check_upload_time(interval, t(150), later, skew, None), Err(ReportError::ReportDropped));
        assert_eq!(check_upload_time(None, t(1), now, skew, None), Ok(()));
        // Older than the task takes: dropped, at both steps; the oldest time itself is taken.
        let oldest = Some(t(110));
        assert_eq!(check_report_time(interval, t(109), now, skew, oldest), Err(ReportError::ReportDropped));
        assert_eq!(check_upload_time(interval, t(109), now, skew, oldest), Err(ReportError::ReportDropped));
        assert_eq!(check_report_time(interval, t(110), now, skew, oldest), Ok(()));
        assert_eq!(check_upload_time(None, t(110), now, skew, oldest), Ok(()));
    }

    #[test]
    fn opening_a_share_and_its_errors() {
        let task_id = TaskId::random();
        let config = b"task configuration".to_vec();
        let kp = HpkeKeypair::generate_default(HpkeConfigId(4));
        let public = vec![1, 2, 3];
        let meta = ReportMetadata { report_id: ReportId::random(), time: t(7), public_extensions: vec![] };
        let make = |meta: &ReportMetadata, role: Role, private_extensions: Vec<Extension>| {
            let aad = InputShareAad::encode_parts(&task_id, &config, meta, &public).unwrap();
            let plain = PlaintextInputShare { private_extensions, payload: vec![9; 8] }.get_encoded().unwrap();
            seal(kp.config(), &HpkeApplicationInfo::InputShare { recipient: role }, &plain, &aad).unwrap()
        };
        let helper = ShareContext { task_id: &task_id, configuration_encoded: &config, role: Role::Helper };
        let keys = std::slice::from_ref(&kp);

        let ct = make(&meta, Role::Helper, vec![]);
        assert_eq!(open_input_share(&helper, keys, &meta, &public, &ct).unwrap().payload, vec![9; 8]);
        // Another key, another recipient, or other metadata: hpke_decrypt_error.
        assert_eq!(open_input_share(&helper, &[], &meta, &public, &ct).err(), Some(ReportError::HpkeDecryptError));
        let leader = ShareContext { role: Role::Leader, ..helper };
        assert_eq!(open_input_share(&leader, keys, &meta, &public, &ct).err(), Some(ReportError::HpkeDecryptError));
        let moved = ReportMetadata { time: t(8), ..meta.clone() };
        assert_eq!(open_input_share(&helper, keys, &moved, &public, &ct).err(), Some(ReportError::HpkeDecryptError));
        // Any extension, public or private, is unrecognised: invalid_message.
        let ext = Extension { extension_type: ExtensionType(0xfe00), extension_data: vec![] };
        let ct = make(&meta, Role::Helper, vec![ext.clone()]);
        assert_eq!(open_input_share(&helper, keys, &meta, &public, &ct).err(), Some(ReportError::InvalidMessage));
        let public_ext = ReportMetadata { public_extensions: vec![ext], ..meta.clone() };
        let ct = make(&public_ext, Role::Helper, vec![]);
        assert_eq!(open_input_share(&helper, keys, &public_ext, &public, &ct).err(), Some(ReportError::InvalidMessage));
        assert_eq!(check_public_extensions(&public_ext), Err(ReportError::InvalidMessage));
    }
}
