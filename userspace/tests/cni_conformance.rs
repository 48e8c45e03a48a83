//! The `xsteer-cni` binary against the CNI specification's rules for a chained plugin, as a
//! runtime calls it: command and container in the environment, config on stdin, one JSON
//! document on stdout, a non-zero exit with the error JSON. Nothing here needs root: every case
//! fails, or has nothing to do, before the kernel is asked.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use serde_json::{Value, json};

/// A pin dir that does not exist.
const NO_PINS: &str = "/nonexistent/xsteer-cni-conformance";

/// Runs the plugin with `command` (none when `None`) and the usual variables, `stdin` as the
/// config; returns the exit code and stdout.
fn plugin(command: Option<&str>, stdin: &[u8]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xsteer-cni"));
    cmd.env_clear()
        .env("CNI_CONTAINERID", "0123abcd")
        .env("CNI_NETNS", "/var/run/netns/cni-test")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(command) = command {
        cmd.env("CNI_COMMAND", command);
    }
    let mut child = cmd.spawn().unwrap();
    // A plugin may exit without reading its config: the runtime's write then fails, which it
    // ignores, as here.
    match child.stdin.take().unwrap().write_all(stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        written => written.unwrap(),
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// Asserts that the plugin failed with the error JSON of `code`, its msg containing `names`.
fn assert_error(command: Option<&str>, stdin: &[u8], code: u64, names: &str) {
    let (exit, stdout) = plugin(command, stdin);
    assert_ne!(exit, 0, "{command:?} must fail: {stdout}");
    let error: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout:?}"));
    assert_eq!(error["code"], code, "{stdout}");
    assert!(error["cniVersion"].is_string(), "{stdout}");
    let msg = error["msg"].as_str().unwrap();
    assert!(msg.contains(names), "the msg must name {names:?}: {msg}");
}

fn conf(extra: Value) -> Vec<u8> {
    let mut conf = json!({"cniVersion": "1.0.0", "name": "kindnet", "type": "xsteer-cni"});
    conf.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    conf.to_string().into_bytes()
}

fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "veth1a2b3c4d", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/cni-test"},
        ],
        "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
    })
}

#[test]
fn version_lists_the_supported_versions() {
    let (exit, stdout) = plugin(Some("VERSION"), br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(exit, 0);
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        answer,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn add_without_a_previous_result_is_refused() {
    let stdin = conf(json!({"pinDir": NO_PINS}));
    assert_error(Some("ADD"), &stdin, 7, "missing prevResult");
    assert_error(Some("ADD"), &stdin, 7, "chained plugin");
    assert_error(Some("CHECK"), &stdin, 7, "missing prevResult");
}

#[test]
fn an_unsupported_version_is_incompatible() {
    for version in ["0.2.0", "1.2.0", "2.0.0"] {
        let stdin =
            json!({"cniVersion": version, "type": "xsteer-cni", "prevResult": prev_result()});
        for command in ["ADD", "DEL", "CHECK"] {
            assert_error(
                Some(command),
                stdin.to_string().as_bytes(),
                1,
                &format!("cniVersion \"{version}\" is not supported"),
            );
        }
    }
    // CHECK came with 0.4.0.
    let stdin = json!({"cniVersion": "0.3.1", "type": "xsteer-cni", "prevResult": prev_result()});
    assert_error(
        Some("CHECK"),
        stdin.to_string().as_bytes(),
        1,
        "does not allow CHECK",
    );
}

#[test]
fn status_on_a_node_without_the_dataplane_is_not_available_and_gc_finds_nothing() {
    let stdin = json!({"cniVersion": "1.1.0", "name": "kindnet", "type": "xsteer-cni",
        "pinDir": NO_PINS, "cni.dev/valid-attachments": []});
    let stdin = stdin.to_string();
    assert_error(
        Some("STATUS"),
        stdin.as_bytes(),
        50,
        "the xsteer dataplane is not loaded on this node",
    );
    assert_eq!(plugin(Some("GC"), stdin.as_bytes()), (0, String::new()));
}

#[test]
fn bad_json_fails_to_decode() {
    for stdin in [&b"{\"cniVersion\": \"1.0.0\","[..], b"", b"not json"] {
        for command in ["ADD", "DEL", "CHECK"] {
            assert_error(Some(command), stdin, 6, "decoding the network config");
        }
    }
}

#[test]
fn a_missing_or_unknown_command_is_an_invalid_environment() {
    let stdin = conf(json!({"prevResult": prev_result()}));
    assert_error(None, &stdin, 4, "CNI_COMMAND is not set");
    assert_error(Some("FROB"), &stdin, 4, "unknown CNI_COMMAND \"FROB\"");
}

#[test]
fn del_is_idempotent_without_pins_or_previous_result() {
    for stdin in [
        conf(json!({"pinDir": NO_PINS})),
        conf(json!({"pinDir": NO_PINS, "prevResult": prev_result()})),
        conf(json!({"cniVersion": "0.3.1", "pinDir": NO_PINS, "prevResult": null})),
    ] {
        for _ in 0..2 {
            let (exit, stdout) = plugin(Some("DEL"), &stdin);
            assert_eq!((exit, stdout.as_str()), (0, ""));
        }
    }
}

#[test]
fn add_on_a_node_without_the_dataplane_is_try_again_later() {
    let stdin = conf(json!({"pinDir": NO_PINS, "prevResult": prev_result()}));
    assert_error(
        Some("ADD"),
        &stdin,
        11,
        &format!("no pinned pod classifier at {NO_PINS}/programs/pod_classifier"),
    );
    assert_error(
        Some("CHECK"),
        &stdin,
        11,
        "the xsteer dataplane is not loaded",
    );
}
