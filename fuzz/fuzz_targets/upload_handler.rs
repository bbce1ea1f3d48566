//! The leader's upload handler, in process on SQLite: any body gets an answer below 500.
#![no_main]

use duet_tests::inprocess::{call, servers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = servers();
    let status = call(
        &s.leader,
        format!("/tasks/{}/reports", s.task_id),
        duet_common::media_type::UPLOAD_REQ,
        "",
        data.to_vec(),
    );
    assert!(status < 500, "upload answered {status}");
});
