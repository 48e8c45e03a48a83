//! The commands: ADD attaches the classifier to a new pod's host veth, DEL unpins its link,
//! CHECK confirms it is attached, STATUS says whether an ADD could succeed now, GC unpins the
//! links of veths that went without a DEL, VERSION says which versions the plugin speaks.
//!
//! Whatever the command, stdout carries exactly one JSON document (the result, the version
//! answer or the error) and nothing else; what the plugin did goes to stderr, which runtimes
//! log.

use std::{io::Read, path::Path};

use aya::programs::{SchedClassifier, TcAttachType};
use xsteer_common::programs;

use super::{
    node::{self, Node},
    spec::{self, CURRENT_VERSION, CniError, Command, Env, NetConf},
};
use crate::{
    dataplane::links::{self, Attached, LinkError},
    kernel::routing,
};

/// What an invocation prints on stdout, and its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The result, version answer or error JSON; empty for a DEL, CHECK, STATUS or GC that
    /// succeeded.
    pub stdout: String,
    /// 0 on success, 1 with an error JSON.
    pub exit_code: i32,
}

/// Runs one invocation: `var` reads the environment, `stdin` holds the network config.
pub fn invoke(var: impl Fn(&str) -> Option<String>, stdin: impl Read) -> Outcome {
    let mut version = CURRENT_VERSION.to_owned();
    match run(var, stdin, &mut version) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(error) => {
            eprintln!("xsteer-cni: {error}");
            Outcome {
                stdout: error.to_json(&version),
                exit_code: 1,
            }
        }
    }
}

/// Runs the command; `version` becomes the config's CNI version once it is known, for the
/// error JSON.
fn run(
    var: impl Fn(&str) -> Option<String>,
    mut stdin: impl Read,
    version: &mut String,
) -> Result<String, CniError> {
    // Read whatever the command and before any error: a runtime writes the config (for
    // VERSION, `{"cniVersion"}`) and may report a plugin that left it unread as failed.
    let mut text = Vec::new();
    stdin.read_to_end(&mut text).map_err(CniError::Stdin)?;
    let env = Env::from_vars(var)?;
    // VERSION answers whatever the config says.
    let mut conf = || {
        let conf = NetConf::parse(&text)?;
        version.clone_from(&conf.cni_version);
        Ok::<_, CniError>(conf)
    };
    let container = env.container_id.as_deref().unwrap_or("?");
    match env.command {
        Command::Version => Ok(spec::version_json()),
        Command::Add => add(&conf()?, container),
        Command::Del => del(&conf()?, container).map(|()| String::new()),
        Command::Check => check(&conf()?, container).map(|()| String::new()),
        Command::Status => status(&conf()?).map(|()| String::new()),
        Command::Gc => gc(&conf()?).map(|()| String::new()),
    }
}

/// A current-thread runtime for the netlink queries.
fn runtime() -> Result<tokio::runtime::Runtime, CniError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CniError::Kernel {
            what: "starting the netlink runtime".into(),
            error,
        })
}

/// ADD: requires a loaded, guarded dataplane; attaches the pinned classifier to each host veth
/// of the previous result; prints that result unchanged.
fn add(conf: &NetConf, container: &str) -> Result<String, CniError> {
    let prev = conf.required_prev_result()?;
    let hosts = spec::host_interfaces(prev)?;
    let pin_dir = &conf.pin_dir;
    let mut program = node::pod_classifier(pin_dir)?;
    runtime()?.block_on(async {
        let node = Node::connect()?;
        let uplink = node.guarded_uplink(pin_dir).await?;
        for name in pod_veths(&node, &hosts, &uplink, container).await? {
            let how = classify(&mut program, pin_dir, &name)?;
            eprintln!("xsteer-cni: container {container}: pod veth {name}: {how}");
        }
        Ok::<_, CniError>(())
    })?;
    Ok(prev.to_string())
}

/// The pod veths among the host interfaces `hosts` of a result: those that exist on this node
/// and are veths. A bridge (cni0) is not a pod's veth; the uplink can be a veth too (a lab, a
/// nested node), but it is the wire, never a pod. One that does not exist is the main plugin's
/// concern (its CHECK runs first); it is skipped and said on stderr.
async fn pod_veths(
    node: &Node,
    hosts: &[String],
    uplink: &str,
    container: &str,
) -> Result<Vec<String>, CniError> {
    let mut veths = Vec::new();
    for name in hosts {
        match node.link(name).await? {
            None => eprintln!(
                "xsteer-cni: container {container}: {name} is named by the previous result but \
                 does not exist on this node: skipped"
            ),
            Some(link) if routing::is_veth(&link) && name != uplink => veths.push(name.clone()),
            Some(_) => {}
        }
    }
    Ok(veths)
}

/// Attaches `program` to the ingress of `veth` and pins the link where the agent pins its own,
/// so that the agent adopts it. A live link already pinned there (the agent was quicker) is
/// kept as it is.
fn classify(
    program: &mut SchedClassifier,
    pin_dir: &Path,
    veth: &str,
) -> Result<&'static str, CniError> {
    let attach_error = |error| CniError::Attach {
        interface: veth.to_owned(),
        error: Box::new(error),
    };
    let _held = links::lock(pin_dir).map_err(attach_error)?;
    if node::tc_link_attached(
        pin_dir,
        programs::POD_CLASSIFIER,
        veth,
        TcAttachType::Ingress,
    )? {
        return Ok("already classified");
    }
    // No pin, or the pin of a dead link (a veth of the same name that went away): attach.
    match links::tc(
        program,
        programs::POD_CLASSIFIER,
        veth,
        TcAttachType::Ingress,
        pin_dir,
    )
    .map_err(attach_error)?
    {
        Attached::New => Ok("classifier attached"),
        Attached::Adopted => Ok("classifier attached to the pinned link"),
    }
}

/// DEL: unpins the classifier link of each host interface of the previous result, which
/// detaches it. Nothing to find is success: the veth, the pins or the result may be gone.
fn del(conf: &NetConf, container: &str) -> Result<(), CniError> {
    let Some(prev) = &conf.prev_result else {
        return Ok(());
    };
    let hosts = spec::host_interfaces(prev)?;
    if hosts.is_empty() {
        return Ok(());
    }
    let pin_dir = &conf.pin_dir;
    let Some(_held) = lock_links(pin_dir)? else {
        return Ok(());
    };
    for name in &hosts {
        if unpin_classifier(pin_dir, name)? {
            eprintln!(
                "xsteer-cni: container {container}: pod veth {name}: classifier link unpinned"
            );
        }
    }
    Ok(())
}

/// Takes the links lock under `pin_dir`; `None` when there is no links directory, so nothing
/// pinned to clean up.
fn lock_links(pin_dir: &Path) -> Result<Option<links::LinksLock>, CniError> {
    match links::lock(pin_dir) {
        Ok(held) => Ok(Some(held)),
        Err(LinkError::Files { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(CniError::Link(Box::new(e))),
    }
}

/// Removes the classifier link pinned on `veth`; whether there was one.
fn unpin_classifier(pin_dir: &Path, veth: &str) -> Result<bool, CniError> {
    let path = links::pin_path(pin_dir, programs::POD_CLASSIFIER, veth);
    if !path.exists() {
        return Ok(false);
    }
    links::unpin(pin_dir, programs::POD_CLASSIFIER, veth).map_err(|error| CniError::Kernel {
        what: format!("removing {}", path.display()),
        error,
    })?;
    Ok(true)
}

/// STATUS: whether an ADD would find the node ready, the dataplane loaded and guarded. If not,
/// error 50 (the plugin cannot serve ADD) with the reason ADD would give; a runtime that asks
/// can keep the node's network not ready instead of starting pods that would be refused.
fn status(conf: &NetConf) -> Result<(), CniError> {
    let pin_dir = &conf.pin_dir;
    let ready = || {
        node::pod_classifier(pin_dir)?;
        runtime()?.block_on(async { Node::connect()?.guarded_uplink(pin_dir).await })
    };
    match ready() {
        Ok(_) => Ok(()),
        Err(CniError::NotReady(why)) => Err(CniError::Unavailable(why)),
        Err(e) => Err(e),
    }
}

/// GC: unpins the classifier links of pod veths that no longer exist, which their DEL would
/// have unpinned had it come. The runtime's list of valid attachments is not needed: the pins
/// are by veth, and a live veth's pin is never stale (ADD replaces a dead link on it).
fn gc(conf: &NetConf) -> Result<(), CniError> {
    let pin_dir = &conf.pin_dir;
    let Some(_held) = lock_links(pin_dir)? else {
        return Ok(());
    };
    runtime()?.block_on(async {
        let node = Node::connect()?;
        for name in links::pinned_interfaces(pin_dir, programs::POD_CLASSIFIER) {
            if node.link(&name).await?.is_none() && unpin_classifier(pin_dir, &name)? {
                eprintln!("xsteer-cni: GC: pod veth {name} is gone: classifier link unpinned");
            }
        }
        Ok(())
    })
}

/// CHECK: the dataplane is loaded and guarded, and every host veth of the previous result
/// runs the classifier through its pinned link.
fn check(conf: &NetConf, container: &str) -> Result<(), CniError> {
    if !conf.allows_check() {
        return Err(CniError::CheckNotAllowed {
            version: conf.cni_version.clone(),
        });
    }
    let prev = conf.required_prev_result()?;
    let hosts = spec::host_interfaces(prev)?;
    let pin_dir = &conf.pin_dir;
    node::pod_classifier(pin_dir)?;
    runtime()?.block_on(async {
        let node = Node::connect()?;
        let uplink = node.guarded_uplink(pin_dir).await?;
        for name in pod_veths(&node, &hosts, &uplink, container).await? {
            if !node::tc_link_attached(
                pin_dir,
                programs::POD_CLASSIFIER,
                &name,
                TcAttachType::Ingress,
            )? {
                return Err(CniError::NotClassified {
                    interface: name.clone(),
                    problem: format!(
                        "no attached classifier link pinned at {}",
                        links::pin_path(pin_dir, programs::POD_CLASSIFIER, &name).display()
                    ),
                });
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn call(command: &str, stdin: &Value) -> (Value, i32) {
        let vars = [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        let var = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        parsed(invoke(var, stdin.to_string().as_bytes()))
    }

    const MISSING: &str = "/nonexistent/xsteer-cni-unit";

    fn prev() -> Value {
        json!({"cniVersion": "1.0.0", "interfaces": [{"name": "veth0"}]})
    }

    #[test]
    fn add_without_a_loaded_dataplane_is_try_again_later() {
        let (error, code) = call(
            "ADD",
            &json!({"cniVersion": "1.0.0", "type": "xsteer-cni", "pinDir": MISSING, "prevResult": prev()}),
        );
        assert_eq!(code, 1);
        assert_eq!(error["code"], spec::code::TRY_AGAIN_LATER);
        let msg = error["msg"].as_str().unwrap();
        assert!(
            msg.contains(&format!("{MISSING}/programs/pod_classifier")),
            "{msg}"
        );
    }

    #[test]
    fn del_without_pins_or_previous_result_succeeds_silently() {
        for stdin in [
            json!({"cniVersion": "0.3.1", "type": "xsteer-cni", "pinDir": MISSING}),
            json!({"cniVersion": "0.3.1", "type": "xsteer-cni", "pinDir": MISSING, "prevResult": prev()}),
        ] {
            assert_eq!(call("DEL", &stdin), (Value::Null, 0));
        }
    }

    #[test]
    fn status_without_a_loaded_dataplane_is_not_available() {
        // The runtime calls STATUS with the network's config and no container.
        let (error, code) = invoke_bare(
            "STATUS",
            &json!({"cniVersion": "1.1.0", "name": "kindnet", "type": "xsteer-cni", "pinDir": MISSING}),
        );
        assert_eq!(code, 1);
        assert_eq!(error["code"], spec::code::NOT_AVAILABLE);
        assert_eq!(error["cniVersion"], "1.1.0");
        let msg = error["msg"].as_str().unwrap();
        assert!(
            msg.contains(&format!("{MISSING}/programs/pod_classifier")),
            "{msg}"
        );
    }

    #[test]
    fn gc_without_pins_succeeds_silently() {
        let stdin = json!({
            "cniVersion": "1.1.0", "name": "kindnet", "type": "xsteer-cni", "pinDir": MISSING,
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        });
        assert_eq!(invoke_bare("GC", &stdin), (Value::Null, 0));
    }

    /// The outcome's stdout as JSON (null when empty), and its exit code.
    fn parsed(outcome: Outcome) -> (Value, i32) {
        let stdout = if outcome.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&outcome.stdout).unwrap()
        };
        (stdout, outcome.exit_code)
    }

    /// Runs `command` with `CNI_COMMAND` and `CNI_PATH` alone in the environment, as a runtime
    /// calls STATUS and GC.
    fn invoke_bare(command: &str, stdin: &Value) -> (Value, i32) {
        let var = |name: &str| match name {
            "CNI_COMMAND" => Some(command.to_owned()),
            "CNI_PATH" => Some("/opt/cni/bin".to_owned()),
            _ => None,
        };
        parsed(invoke(var, stdin.to_string().as_bytes()))
    }

    #[test]
    fn check_needs_0_4_0_and_a_previous_result() {
        let (error, code) = call(
            "CHECK",
            &json!({"cniVersion": "0.3.1", "type": "xsteer-cni", "prevResult": prev()}),
        );
        assert_eq!((error["code"].as_u64(), code), (Some(1), 1));
        assert_eq!(error["cniVersion"], "0.3.1");
        let (error, _) = call(
            "CHECK",
            &json!({"cniVersion": "0.4.0", "type": "xsteer-cni", "pinDir": MISSING}),
        );
        assert_eq!(error["code"], spec::code::INVALID_CONFIG);
    }

    #[test]
    fn errors_answer_in_the_config_version_when_it_is_supported() {
        let (error, _) = call("ADD", &json!({"cniVersion": "0.3.1", "type": "xsteer-cni"}));
        assert_eq!(error["cniVersion"], "0.3.1");
        assert_eq!(error["code"], spec::code::INVALID_CONFIG);
        let (error, _) = call("ADD", &json!({"cniVersion": "9.9.9", "type": "xsteer-cni"}));
        assert_eq!(error["cniVersion"], CURRENT_VERSION);
        assert_eq!(error["code"], spec::code::INCOMPATIBLE_VERSION);
    }
}
