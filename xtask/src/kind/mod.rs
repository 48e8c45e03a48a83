//! `cargo xtask kind up | test | down | uninstall | check`: xsteer on a kind cluster, for a
//! machine with docker, kind and kubectl.
//!
//! - `up` creates the cluster from kind/cluster.yaml (if there is none), makes sure each node
//!   has bpffs, builds and loads the image, creates the key Secret from a fresh key (if there is
//!   none), applies kind/manifests and waits for the rollout;
//! - `test` starts an echo pod on every node and a capture pod on every node's network, checks
//!   every cross-node pod pair over ICMP, TCP and UDP, and ends its report with `plaintext
//!   packets: N` as the lab does; then it rotates the key through the Secret under a datagram
//!   stream on every node and reports the loss;
//! - `down` deletes the cluster; `uninstall` runs `xsteer uninstall` on every node once the
//!   DaemonSet is gone; `check` is the deployment level of `cargo xtask test`.
//!
//! Every step is a command line built in commands.rs and pods.rs, where the tests read them.

mod check;
mod commands;
mod pods;
mod report;

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use xsteer_kind::{agent::AgentPod, names};

pub use self::check::run as check;
use self::commands::{CLUSTER, Kube, run, run_quiet};
use crate::image;

/// Options of `cargo xtask kind`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KindCommand,
}

#[derive(Subcommand)]
enum KindCommand {
    /// Create the cluster if absent, load the image, create the key Secret if absent, apply
    /// the manifests, wait for the rollout.
    Up(Cluster),
    /// Check every cross-node pod pair, prove the wire carries no pod plaintext, and rotate
    /// the key through the Secret under a stream.
    Test {
        #[command(flatten)]
        cluster: Cluster,
        /// Seconds each stream runs while the key rotates (the kubelet takes up to about a
        /// minute to update a Secret volume).
        #[arg(long, default_value_t = 180)]
        stream_seconds: u64,
    },
    /// Delete the cluster.
    Down(Cluster),
    /// Run `xsteer uninstall` on every node; the DaemonSet must be deleted first.
    Uninstall {
        #[command(flatten)]
        cluster: Cluster,
        /// A kubeconfig context to use instead of kind's (any cluster the manifests were
        /// applied to).
        #[arg(long)]
        context: Option<String>,
    },
    /// The deployment level of `cargo xtask test`: validate the manifests, build and inspect
    /// the image, run it under podman.
    Check,
}

/// Which kind cluster.
#[derive(clap::Args)]
struct Cluster {
    /// The kind cluster's name.
    #[arg(long, default_value = CLUSTER)]
    name: String,
}

/// Runs `cargo xtask kind ...`.
pub fn run_task(root: &Path, args: Args) -> Result<()> {
    match args.command {
        KindCommand::Up(cluster) => up(root, &cluster.name),
        KindCommand::Test {
            cluster,
            stream_seconds,
        } => test(root, &cluster.name, stream_seconds),
        KindCommand::Down(cluster) => run(&commands::delete_cluster(&cluster.name)),
        KindCommand::Uninstall { cluster, context } => uninstall(
            &context.map_or_else(|| Kube::kind(&cluster.name), |context| Kube { context }),
        ),
        KindCommand::Check => check(root),
    }
}

fn up(root: &Path, name: &str) -> Result<()> {
    let kube = Kube::kind(name);
    let clusters = run_quiet(&commands::clusters(), None)?;
    if !clusters.lines().any(|l| l.trim() == name) {
        run(&commands::create_cluster(
            name,
            &xsteer_kind::cluster_config(),
        ))?;
    }
    for node in run_quiet(&commands::nodes(name), None)?.lines() {
        if run_quiet(&commands::bpffs_type(node), None)?.trim() != "bpf_fs" {
            run(&commands::mount_bpffs(node))?;
        }
    }
    let built = image::run(root, image::Args::default())?;
    run(&commands::load_image(name, &built.path))?;
    if run_quiet(&kube.get_key_secret(), None).is_err() {
        let key = run_quiet(
            &vec![
                built.binary.display().to_string(),
                "keys".into(),
                "generate".into(),
            ],
            None,
        )?;
        let file = secret_file(root, "keys", &key)?;
        let created = run(&kube.create_key_secret(&file));
        fs::remove_file(&file)?;
        created?;
    }
    let existed = run_quiet(&kube.get_daemonset(), None).is_ok();
    run(&kube.apply_dir(&xsteer_kind::manifests_dir()))?;
    if existed {
        // The same tag may hold a new image: the pods must start again to run it.
        run(&kube.rollout_restart())?;
    }
    run(&kube.rollout_status())?;
    println!("xsteer runs on every node of kind cluster {name}; `cargo xtask kind test` checks it");
    Ok(())
}

/// Writes `content` to target/kind/NAME, readable by its owner only (a key).
fn secret_file(root: &Path, name: &str, content: &str) -> Result<PathBuf> {
    let dir = check::work_dir(root);
    fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    let _ = fs::remove_file(&path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(content.as_bytes())?;
    Ok(path)
}

/// A test pod: its name, node and address.
#[derive(Clone, Debug)]
struct TestPod {
    name: String,
    node: String,
    ip: Ipv4Addr,
}

fn node_names(kube: &Kube) -> Result<Vec<String>> {
    let nodes: Value = serde_json::from_str(&run_quiet(&kube.nodes_json(), None)?)?;
    let names: Vec<String> = nodes["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    if names.len() < 2 {
        bail!(
            "the cluster has {} nodes; the test needs two or more",
            names.len()
        );
    }
    Ok(names)
}

fn test_pods(kube: &Kube, namespace: &str, selector: &str) -> Result<Vec<TestPod>> {
    let pods: Value =
        serde_json::from_str(&run_quiet(&kube.pods_json(namespace, selector), None)?)?;
    pods["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let name = p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            Ok(TestPod {
                node: p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ip: p["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("pod {name} has no IPv4 address"))?,
                name,
            })
        })
        .collect()
}

/// Replaces the pods labelled `kind` with `objects`.
fn start_pods(kube: &Kube, kind: &str, objects: &[Value]) -> Result<()> {
    let selector = pods::selector(kind);
    run_quiet(&kube.delete_pods(pods::NAMESPACE, &selector, true), None)?;
    run_quiet(&kube.apply_stdin(), Some(&pods::documents(objects)))?;
    Ok(())
}

fn test(root: &Path, name: &str, stream_seconds: u64) -> Result<()> {
    let kube = Kube::kind(name);
    let nodes = node_names(&kube)?;
    let echo: Vec<Value> = nodes.iter().map(|n| pods::echo(n)).collect();
    start_pods(&kube, pods::ECHO, &echo)?;
    run(&kube.wait_ready(pods::NAMESPACE, &pods::selector(pods::ECHO)))?;
    let echoes = test_pods(&kube, pods::NAMESPACE, &pods::selector(pods::ECHO))?;

    // Capture what every node sends while the checks run.
    const CAPTURE_SECONDS: u64 = 60;
    let captures: Vec<Value> = nodes
        .iter()
        .map(|n| pods::capture(n, CAPTURE_SECONDS))
        .collect();
    start_pods(&kube, pods::CAPTURE, &captures)?;
    for node in &nodes {
        wait_for_log(&kube, &pods::name(pods::CAPTURE, node), "capturing")?;
    }

    let mut report = String::new();
    let mut failures = Vec::new();
    let mut ok: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for from in &echoes {
        let targets: Vec<String> = echoes
            .iter()
            .filter(|to| to.node != from.node)
            .map(|to| to.ip.to_string())
            .collect();
        let mut command = vec!["xsteer", "probe", "check"];
        for ip in &targets {
            command.extend(["--to", ip]);
        }
        let line = kube.exec(pods::NAMESPACE, &from.name, None, &command);
        let (_, output) = run_output(&line)?;
        let checks = report::checks(&output)?;
        let expected = targets.len() * 3;
        if checks.len() != expected {
            failures.push(format!(
                "{}: {} of {expected} checks reported (`{}`)",
                from.name,
                checks.len(),
                line.join(" ")
            ));
        }
        for check in checks {
            let tally = ok.entry(check.proto.clone()).or_default();
            tally.1 += 1;
            match check.failure {
                None => tally.0 += 1,
                Some(why) => failures.push(format!(
                    "{} {} -> {}: {why}",
                    check.proto, from.ip, check.to
                )),
            }
        }
    }
    let mut plaintext = 0;
    let mut censuses = Vec::new();
    for node in &nodes {
        let pod = pods::name(pods::CAPTURE, node);
        run_quiet(
            &kube.wait_succeeded(pods::NAMESPACE, &pod, CAPTURE_SECONDS + 60),
            None,
        )?;
        let census = report::census(&run_quiet(&kube.logs(pods::NAMESPACE, &pod), None)?)?;
        plaintext += census.plaintext;
        censuses.push((node.clone(), census));
    }
    report.push_str(&format!(
        "xsteer kind test: {} nodes, {} pods\n",
        nodes.len(),
        echoes.len()
    ));
    for (proto, (good, all)) in &ok {
        report.push_str(&format!(
            "  cross-node pod pairs over {proto:<4}: {good}/{all} ok\n"
        ));
    }
    for (node, c) in &censuses {
        report.push_str(&format!(
            "  {node} sent on eth0: {} ESP, {} other IPv4, {} cross-node pod packets in plaintext\n",
            c.esp, c.other, c.plaintext
        ));
    }

    // Rotate the key through the Secret while every node streams to the next one.
    let streams: Vec<_> = echoes
        .iter()
        .zip(echoes.iter().cycle().skip(1))
        .map(|(from, to)| {
            let (ip, seconds) = (to.ip.to_string(), stream_seconds.to_string());
            let command = [
                "xsteer",
                "probe",
                "stream",
                "--to",
                &ip,
                "--rate",
                "200",
                "--seconds",
                &seconds,
            ];
            let line = kube.exec(pods::NAMESPACE, &from.name, None, &command);
            commands::spawn(&line).map(|child| (from.ip, to.ip, child))
        })
        .collect::<Result<_>>()?;
    thread::sleep(Duration::from_secs(5));
    let generation = rotate_key(root, &kube)?;
    let rotated = wait_for_generation(&kube, generation, Duration::from_secs(stream_seconds));
    match &rotated {
        Ok(took) => report.push_str(&format!(
            "  key rotated to generation {generation} through the Secret: every node sends with it \
             {:.0} s after the patch\n",
            took.as_secs_f64()
        )),
        Err(e) => failures.push(format!("rotation to generation {generation}: {e:#}")),
    }
    let mut lost = 0;
    for (from, to, child) in streams {
        let out = child.wait_with_output()?;
        let result = report::stream(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("the stream {from} -> {to}"))?;
        lost += result.lost;
        report.push_str(&format!(
            "  stream {from} -> {to} during the rotation: {} sent, {} lost\n",
            result.sent, result.lost
        ));
    }
    for failure in &failures {
        report.push_str(&format!("  FAILED {failure}\n"));
    }
    report.push_str(&format!("plaintext packets: {plaintext}\n"));
    print!("{report}");
    for kind in [pods::ECHO, pods::CAPTURE] {
        let _ = run_quiet(
            &kube.delete_pods(pods::NAMESPACE, &pods::selector(kind), false),
            None,
        );
    }
    if plaintext > 0 || lost > 0 || !failures.is_empty() {
        bail!(
            "kind test failed: {plaintext} plaintext packets, {lost} datagrams lost to the \
             rotation, {} failed checks",
            failures.len()
        );
    }
    Ok(())
}

/// Runs `line` and returns whether it succeeded and its standard output.
fn run_output(line: &commands::Line) -> Result<(bool, String)> {
    let out = Command::new(&line[0])
        .args(&line[1..])
        .output()
        .with_context(|| format!("cannot start {}", line[0]))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn wait_for_log(kube: &Kube, pod: &str, text: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(log) = run_quiet(&kube.logs(pods::NAMESPACE, pod), None)
            && log.contains(text)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pod {pod} never logged {text:?}");
        }
        thread::sleep(Duration::from_secs(1));
    }
}

/// Adds the next key generation to the Secret (`xsteer keys rotate` on a copy of its key
/// file, then a patch); returns the generation added.
fn rotate_key(root: &Path, kube: &Kube) -> Result<u8> {
    let binary = image::build_binary(root)?;
    let keys = run_quiet(&kube.read_keys(), None)?;
    let file = secret_file(root, "keys", &keys)?;
    let rotated = run_quiet(
        &vec![
            binary.display().to_string(),
            "keys".into(),
            "rotate".into(),
            "--key-file".into(),
            file.display().to_string(),
        ],
        None,
    );
    let new_keys = fs::read_to_string(&file);
    fs::remove_file(&file)?;
    let generation = report::rotated_generation(&rotated?)?;
    let patch = json!({"stringData": {names::KEY_SECRET_ENTRY: new_keys?}}).to_string();
    let patch_file = secret_file(root, "keys-patch.json", &patch)?;
    let patched = run(&kube.patch_keys(&patch_file));
    fs::remove_file(&patch_file)?;
    patched?;
    Ok(generation)
}

/// Waits until every agent sends with `generation` to every peer; returns how long it took.
fn wait_for_generation(kube: &Kube, generation: u8, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let agents = test_pods(kube, names::NAMESPACE, names::SELECTOR)?;
        let mut behind = Vec::new();
        for agent in &agents {
            let status = run_quiet(
                &kube.exec(
                    names::NAMESPACE,
                    &agent.name,
                    Some(names::AGENT_CONTAINER),
                    &[
                        "xsteer",
                        "status",
                        "--config",
                        names::CONFIG_PATH,
                        "--output",
                        "json",
                    ],
                ),
                None,
            )?;
            for peer in report::peers_not_sending(&status, generation)? {
                behind.push(format!("{} to {peer}", agent.node));
            }
        }
        if behind.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            bail!(
                "after {} s, still not sending with it: {}",
                timeout.as_secs(),
                behind.join(", ")
            );
        }
        thread::sleep(Duration::from_secs(5));
    }
}

/// Runs `xsteer uninstall` on every node, in a pod with the agent's rights and mounts.
fn uninstall(kube: &Kube) -> Result<()> {
    if run_quiet(&kube.get_daemonset(), None).is_ok() {
        bail!(
            "the DaemonSet {}/{} still runs: delete it first (`kubectl delete -f kind/manifests`), \
             or its agents put everything back",
            names::NAMESPACE,
            names::DAEMONSET
        );
    }
    let agent_pod = AgentPod::load()?;
    let nodes = node_names(kube)?;
    let objects = nodes
        .iter()
        .map(|n| pods::uninstall(&agent_pod, n))
        .collect::<Result<Vec<_>>>()?;
    start_pods(kube, pods::UNINSTALL, &objects)?;
    let mut failed = Vec::new();
    for node in &nodes {
        let pod = pods::name(pods::UNINSTALL, node);
        let done = run_quiet(&kube.wait_succeeded(pods::NAMESPACE, &pod, 120), None);
        let log = run_quiet(&kube.logs(pods::NAMESPACE, &pod), None).unwrap_or_default();
        println!("{node}:\n{log}");
        if done.is_err() {
            failed.push(node.clone());
        }
    }
    run_quiet(
        &kube.delete_pods(pods::NAMESPACE, &pods::selector(pods::UNINSTALL), false),
        None,
    )?;
    if !failed.is_empty() {
        bail!("xsteer uninstall did not finish on {}", failed.join(", "));
    }
    Ok(())
}
