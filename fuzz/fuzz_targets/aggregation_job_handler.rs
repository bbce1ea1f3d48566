//! The helper's aggregation job handlers (init and continue), in process on SQLite, with the
//! leader's token: any body gets an answer below 500.
#![no_main]

use duet_tests::inprocess::{call, servers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = servers();
    let t = s.task_id;
    let init = call(
        &s.helper,
        format!("/tasks/{t}/aggregation_jobs"),
        duet_common::media_type::AGGREGATION_JOB_INIT_REQ,
        &s.aggregator_token,
        data.to_vec(),
    );
    assert!(init < 500, "init answered {init}");
    let job = duet_common::messages::AggregationJobId::from_bytes([7; 16]);
    let cont = call(
        &s.helper,
        format!("/tasks/{t}/aggregation_jobs/{job}"),
        duet_common::media_type::AGGREGATION_JOB_CONTINUE_REQ,
        &s.aggregator_token,
        data.to_vec(),
    );
    assert!(cont < 500, "continue answered {cont}");
});
