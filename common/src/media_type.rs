//! The `application/ppm-dap;message=...` media types of DAP-18's IANA section, in one place.

pub const HPKE_CONFIG_LIST: &str = "application/ppm-dap;message=hpke-config-list";
pub const UPLOAD_REQ: &str = "application/ppm-dap;message=upload-req";
pub const UPLOAD_ERRORS: &str = "application/ppm-dap;message=upload-errors";
pub const AGGREGATION_JOB_INIT_REQ: &str = "application/ppm-dap;message=aggregation-job-init-req";
pub const AGGREGATION_JOB_RESP: &str = "application/ppm-dap;message=aggregation-job-resp";
pub const AGGREGATION_JOB_CONTINUE_REQ: &str = "application/ppm-dap;message=aggregation-job-continue-req";
pub const AGGREGATE_SHARE_REQ: &str = "application/ppm-dap;message=aggregate-share-req";
pub const AGGREGATE_SHARE: &str = "application/ppm-dap;message=aggregate-share";
pub const COLLECTION_JOB_REQ: &str = "application/ppm-dap;message=collection-job-req";
pub const COLLECTION_JOB_RESP: &str = "application/ppm-dap;message=collection-job-resp";
/// RFC 9457 problem details.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Whether a `Content-Type` value denotes the DAP media type `expected` (one of the constants
/// above). Type and parameter names are case-insensitive and whitespace around `;` and `=` is
/// allowed (RFC 9110, Section 8.3.1); other parameters are ignored.
pub fn matches(content_type: &str, expected: &str) -> bool {
    let (exp_type, exp_msg) = split(expected);
    let (got_type, got_msg) = split(content_type);
    // DAP types must carry the same `message`; types without one (problem+json) match on
    // their essence alone.
    got_type.eq_ignore_ascii_case(&exp_type) && got_msg == exp_msg
}

fn split(value: &str) -> (String, Option<String>) {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().to_string();
    let message = parts.find_map(|p| {
        let (name, val) = p.split_once('=')?;
        name.trim().eq_ignore_ascii_case("message").then(|| val.trim().trim_matches('"').to_string())
    });
    (essence, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_matching() {
        assert!(matches(UPLOAD_REQ, UPLOAD_REQ));
        assert!(matches("Application/PPM-DAP; message=\"upload-req\"", UPLOAD_REQ));
        assert!(matches("application/ppm-dap ; charset=x; message = upload-req", UPLOAD_REQ));
        assert!(!matches("application/ppm-dap;message=upload-errors", UPLOAD_REQ));
        assert!(!matches("application/ppm-dap", UPLOAD_REQ));
        assert!(!matches("application/json", UPLOAD_REQ));
        assert!(!matches(AGGREGATE_SHARE_REQ, AGGREGATE_SHARE));
        assert!(matches("application/problem+json", PROBLEM_JSON));
        assert!(matches("Application/Problem+JSON; charset=utf-8", PROBLEM_JSON));
        assert!(!matches("application/problem+json", UPLOAD_REQ));
    }
}
