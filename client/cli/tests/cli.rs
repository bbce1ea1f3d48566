//! The `duet` binary's command line: help, and plain errors with the documented exit codes.

use std::process::Command;

fn duet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_duet")).args(args).output().unwrap()
}

#[test]
fn help_lists_the_commands() {
    let out = duet(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["keygen", "task", "upload", "collect", "demo"] {
        assert!(text.contains(command), "{command} missing from:\n{text}");
    }
}

#[test]
fn a_missing_file_is_a_usage_error_with_a_plain_message() {
    let out = duet(&["upload", "--task", "/nonexistent/task.json", "--measurement", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/task.json"), "{err}");
}
