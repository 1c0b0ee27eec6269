//! A secured endpoint (Basic256Sha256, SignAndEncrypt) with username login on a real
//! OPC UA server (asyncua): the server's unknown certificate is refused with the
//! documented log line and written to the rejected directory; copying it into the
//! trusted directory makes the next connect succeed, and data flows.

mod agent_opcua_common;

use agent_opcua_common::*;
use linewatch_schemas::{Flag, Quality};
use linewatch_testkit::kinesis::KinesisPeer;
use linewatch_testkit::peers::opcua_server::{write, UaOptions, UaServer};
use linewatch_testkit::{wait, Scratch};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_untrusted_server_is_refused_until_its_certificate_is_trusted() {
    let scratch = Scratch::new("opcua-security");
    let k = kinesalite(&scratch).await;
    let mut ua = UaServer::start(
        UaOptions {
            security: "secure",
            users: vec![("operator".into(), "s3cret-pw".into())],
            pki: Some(scratch.path().join("server-pki")),
            ..UaOptions::default()
        },
        scratch.path(),
    );
    let pki = scratch.path().join("agent-pki");
    let sources = ua_source(
        &ua.endpoint(),
        &pki,
        "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\nlogin = { type = \"username\", username = \"operator\", password_env = \"LW_TEST_UA_PASSWORD\" }",
        &group("main", "100ms", "", &[filler_tag("Filler.Double")]),
    );
    let mut agent = start_agent(
        scratch.path(),
        &k.endpoint(),
        &sources,
        &[("LW_TEST_UA_PASSWORD", "s3cret-pw")],
    );

    // Refused, logged with the path to copy, the certificate in rejected/.
    let rejected = wait::until_blocking(
        "the rejected server certificate",
        Duration::from_secs(60),
        || {
            let log = std::fs::read_to_string(scratch.path().join("agent.log")).unwrap_or_default();
            if !log.contains("opcua server certificate rejected: to trust it, copy") {
                return Err("no rejection logged yet".to_owned());
            }
            let files: Vec<_> = std::fs::read_dir(pki.join("rejected"))
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.path())
                .collect();
            match files.as_slice() {
                [one] => Ok(one.clone()),
                other => Err(format!("rejected/ holds {other:?}")),
            }
        },
    );
    let log = std::fs::read_to_string(scratch.path().join("agent.log")).unwrap_or_default();
    assert!(
        log.contains(&rejected.display().to_string()),
        "the log names the file:\n{log}"
    );
    assert!(
        log.contains("thumbprint"),
        "the client's thumbprint is logged"
    );
    assert!(
        !log.contains("s3cret-pw"),
        "the password never reaches the log"
    );
    ua.set(&[write("Filler.Double", 1.5)]);
    let pts = k.read_all(STREAM).await;
    let pts = linewatch_testkit::points::decode(&pts);
    assert!(
        of(&pts, "double")
            .iter()
            .all(|p| p.point.quality == Quality::Bad),
        "nothing but Syn while untrusted"
    );

    // Trust it: copy (not move) into trusted/.
    let name = rejected.file_name().expect("a file name");
    std::fs::copy(&rejected, pki.join("trusted").join(name)).expect("copy into trusted/");
    ua.set(&[write("Filler.Double", 2.5)]);
    let pts = wait_stream(
        &k,
        "data over the secured session",
        Duration::from_secs(60),
        |p| {
            of(p, "double")
                .iter()
                .any(|p| p.json["value"] == json!(2.5))
                .then(|| p.to_vec())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
    let good = of(&pts, "double")
        .into_iter()
        .find(|p| p.point.quality == Quality::Ok)
        .expect("a good point");
    assert!(good.point.meta.flags.contains(Flag::Fst), "{}", good.json);
    agent.assert_running();
    agent.terminate(Duration::from_secs(10));
}
