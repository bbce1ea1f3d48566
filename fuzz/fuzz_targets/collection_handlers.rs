//! The leader's collection job and the helper's aggregate share handlers, in process on SQLite,
//! with the right tokens: any body gets an answer below 500.
#![no_main]

use duet_tests::inprocess::{call, servers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = servers();
    let t = s.task_id;
    let cj = call(
        &s.leader,
        format!("/tasks/{t}/collection_jobs"),
        duet_common::media_type::COLLECTION_JOB_REQ,
        &s.collector_token,
        data.to_vec(),
    );
    assert!(cj < 500, "collection job answered {cj}");
    let share = call(
        &s.helper,
        format!("/tasks/{t}/aggregate_shares"),
        duet_common::media_type::AGGREGATE_SHARE_REQ,
        &s.aggregator_token,
        data.to_vec(),
    );
    assert!(share < 500, "aggregate share answered {share}");
});
