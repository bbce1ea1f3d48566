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
//!
//! The checks of a collection's request that need no storage are here too
//! ([`check_collection_job_req`]): the leader's of "Collection Job Initialization" on the
//! collector's `CollectionJobReq`, the helper's of "Obtaining Aggregate Shares" on the one the
//! leader passes on. They differ, as the spec says, in one answer: an aggregation parameter the
//! VDAF refuses is `invalidAggregationParameter` from the leader (the collector chose it), but
//! `invalidMessage` from the helper (it is not the one the leader aggregated with). The helper
//! checks the leader's batch selector against the query beside it (`batchInvalid` if it is not
//! within it), which has no counterpart at the leader.

use crate::storage::Task;
use duet_common::hpke::{open, HpkeApplicationInfo, HpkeKeypair};
use duet_common::messages::{
    strictly_increasing, CollectionJobReq, HpkeCiphertext, InputShareAad, PlaintextInputShare, Query, ReportError,
    ReportMetadata, Role, TaskId,
};
use duet_common::problem::{DapError, DapProblemType};
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

/// The checks of a collection's request that need no storage, by the aggregator `role` that
/// reads it (the differences between the two are in the module's doc).
pub fn check_collection_job_req(role: Role, task: &Task, req: &CollectionJobReq) -> Result<(), DapError> {
    let tid = Some(task.id);
    if req.query.batch_mode() != task.configuration.batch_mode {
        return Err(DapError::invalid_message(tid, "the query's batch mode is not the task's"));
    }
    if !task.vdaf.is_agg_param_valid(&req.agg_param) {
        let detail = "Prio3 takes an empty aggregation parameter";
        return Err(match role {
            Role::Helper => DapError::invalid_message(tid, format!("{detail}: not the one aggregated with")),
            _ => DapError::dap(DapProblemType::InvalidAggregationParameter, tid, detail),
        });
    }
    if !strictly_increasing(req.extensions.iter().map(|e| e.extension_type)) {
        return Err(DapError::dap(DapProblemType::InvalidExtension, tid, "collection job extensions out of order"));
    }
    if !req.extensions.is_empty() {
        return Err(DapError::UnsupportedExtension {
            task_id: tid,
            extensions: req.extensions.iter().map(|e| e.extension_type.0).collect(),
        });
    }
    if let Query::TimeInterval(q) = &req.query {
        let interval = q.batch_interval;
        if interval.duration.units() == 0 || interval.end().is_none() {
            return Err(DapError::dap(DapProblemType::BatchInvalid, tid, "the batch interval is empty"));
        }
        if task.configuration.task_interval().is_some_and(|t| !interval.overlaps(&t)) {
            return Err(DapError::dap(DapProblemType::BatchInvalid, tid, "the batch interval is outside the task"));
        }
    }
    Ok(())
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

    /// A Prio3Count task of `role` over units 10 to 20 of an hour each.
    fn task(role: Role) -> Task {
        use duet_common::task::{hpke_config_to_b64, AggregatorTaskRequest, TaskParameters};
        let parameters = TaskParameters {
            task_id: TaskId::random(),
            task_info: "checks".into(),
            leader_endpoint: "https://leader.example/".into(),
            helper_endpoint: "https://helper.example/".into(),
            time_precision: 3600,
            min_batch_size: 1,
            batch_mode: duet_common::messages::BatchMode::TimeInterval,
            vdaf: duet_common::vdaf::VdafConfig::Prio3Count,
            task_interval_seconds: Some((10 * 3600, 20 * 3600)),
            dp: None,
        };
        let collector = HpkeKeypair::generate_default(HpkeConfigId(1));
        let req = AggregatorTaskRequest {
            parameters,
            vdaf_verify_key: duet_common::vdaf::VerifyKey::random().to_base64(),
            aggregator_auth_token: "aggregator-token-of-at-least-32-bytes".into(),
            collector_auth_token: (role == Role::Leader).then(|| "collector-token-of-at-least-32-bytes".into()),
            collector_hpke_config: hpke_config_to_b64(collector.config()),
            max_batch_size: None,
            report_expiry_age: None,
        };
        Task::from_request(role, &req).unwrap()
    }

    fn query(start: u64, units: u64) -> CollectionJobReq {
        use duet_common::messages::TimeIntervalQueryConfig;
        let batch_interval = Interval::new(t(start), Duration::from_units(units));
        CollectionJobReq {
            query: Query::TimeInterval(TimeIntervalQueryConfig { batch_interval }),
            agg_param: vec![],
            extensions: vec![],
        }
    }

    fn problem(role: Role, task: &Task, req: &CollectionJobReq) -> Option<DapProblemType> {
        check_collection_job_req(role, task, req).err().map(|e| e.kind().expect("a DAP problem"))
    }

    #[test]
    fn collection_requests_at_either_aggregator() {
        use duet_common::messages::{CollectionJobExtension, CollectionJobExtensionType, LeaderSelectedQueryConfig};
        for role in [Role::Leader, Role::Helper] {
            let task = task(role);
            assert!(check_collection_job_req(role, &task, &query(12, 2)).is_ok(), "{role:?}");
            // Another batch mode: invalidMessage.
            let other = CollectionJobReq { query: Query::LeaderSelected(LeaderSelectedQueryConfig), ..query(12, 2) };
            assert_eq!(problem(role, &task, &other), Some(DapProblemType::InvalidMessage), "{role:?}");
            // An empty interval, or one wholly outside the task's: batchInvalid; one that
            // overlaps it is taken.
            assert_eq!(problem(role, &task, &query(12, 0)), Some(DapProblemType::BatchInvalid), "{role:?}");
            assert_eq!(problem(role, &task, &query(20, 3)), Some(DapProblemType::BatchInvalid), "{role:?}");
            assert_eq!(problem(role, &task, &query(8, 2)), Some(DapProblemType::BatchInvalid), "{role:?}");
            assert!(check_collection_job_req(role, &task, &query(8, 3)).is_ok(), "{role:?}");
            // Extensions: out of order is invalidExtension; any other is unsupported.
            let ext =
                |t| CollectionJobExtension { extension_type: CollectionJobExtensionType(t), extension_data: vec![] };
            let unsorted = CollectionJobReq { extensions: vec![ext(2), ext(1)], ..query(12, 2) };
            assert_eq!(problem(role, &task, &unsorted), Some(DapProblemType::InvalidExtension), "{role:?}");
            let one = CollectionJobReq { extensions: vec![ext(7)], ..query(12, 2) };
            assert_eq!(problem(role, &task, &one), Some(DapProblemType::UnsupportedExtension), "{role:?}");
        }
        // The one difference: an aggregation parameter Prio3 refuses.
        let param = CollectionJobReq { agg_param: vec![1], ..query(12, 2) };
        assert_eq!(
            problem(Role::Leader, &task(Role::Leader), &param),
            Some(DapProblemType::InvalidAggregationParameter)
        );
        assert_eq!(problem(Role::Helper, &task(Role::Helper), &param), Some(DapProblemType::InvalidMessage));
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
