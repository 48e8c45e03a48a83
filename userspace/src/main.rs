//! The `xsteer` command.

use std::{
    io::{self, Write as _},
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xsteer::{
    agent::{
        self, AgentOptions, PodVeths,
        cni::{self as agent_cni, CniOptions},
    },
    apply::{self, ApplyOptions, DEFAULT_PIN_DIR, DEFAULT_STATE_DIR},
    cni::{conflist::PLUGIN_TYPE, install as cni_install},
    config::{Config, DEFAULT_ROUTE_TABLE},
    dataplane::{Dataplane, MAPS},
    foreign,
    inputs::{self, Access},
    kernel::xfrm::REQID,
    keys::{self, Generation},
    lab::{
        self,
        capture::Capture,
        probe::{self, ECHO_PORT, Proto},
    },
    status, uninstall, wireshark,
};
use xsteer_common::programs;

#[derive(Parser)]
#[command(
    name = "xsteer",
    version,
    about = "eBPF-accelerated IPsec steering for Kubernetes pod traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF programs into this kernel (verifier included) without attaching them.
    Check,
    /// Make the kernel hold the SAs, policies, rules, routes and map entries a config calls for,
    /// changing only what differs; prints each change and a summary.
    Apply {
        /// The node's TOML config (see docs/examples/xsteer.toml).
        #[arg(long)]
        config: PathBuf,
        /// Print the changes that would be made, and make none.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Run the node agent: reconcile, attach the programs, follow pod veths and config or key
    /// changes; on SIGTERM exit leaving the dataplane pinned and running.
    Agent {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        dirs: Dirs,
        /// Pod veths are the interfaces whose names start with this (repeatable); default:
        /// every veth whose peer is in another network namespace.
        #[arg(long = "pod-veth-prefix")]
        pod_veth_prefixes: Vec<String>,
        /// Seconds between reconciles without a change.
        #[arg(long, default_value_t = 30)]
        resync: u64,
        /// Where to serve /metrics and /healthz ("off" to serve nothing).
        #[arg(long, default_value = "127.0.0.1:9478")]
        metrics_addr: String,
        /// Seconds an old key generation stays installed after every peer has moved past it,
        /// for packets in flight and peers that read node records late.
        #[arg(long, default_value_t = agent::rotation::DEFAULT_GRACE.as_secs())]
        rotation_grace: u64,
        /// Re-key (take a new epoch, moving every peer onto new SAs) once an SA in use has sent
        /// this many packets: well before 2^32, where an SA without ESN stops.
        #[arg(long, default_value_t = agent::rekey::DEFAULT_AFTER_PACKETS,
              value_parser = clap::value_parser!(u64).range(1..))]
        rekey_after_packets: u64,
        #[command(flatten)]
        cni: CniDirs,
        /// The `xsteer-cni` binary to copy into --cni-bin-dir (default: `xsteer-cni` beside
        /// this executable).
        #[arg(long, requires = "cni_conf_dir")]
        cni_plugin: Option<PathBuf>,
    },
    /// A cluster on this machine out of network namespaces, one agent per node.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Make and rotate IPsec keys; print the SAs' keys for Wireshark.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The node records every agent learns its peers from.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Peers that are not xsteer (docs/interop.md).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Show peers, key generations (fingerprints only), SA traffic and counters.
    Status {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// `table` for people, `json` for scripts.
        #[arg(long, default_value = "table")]
        output: OutputFormat,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Reachability probes that a deployment's tests run from the xsteer image itself.
    #[command(subcommand)]
    Probe(ProbeCommand),
    /// Remove everything xsteer owns on this node (links, SAs, policies, rule, routes, maps; with
    /// the CNI dirs, the chained plugin) and nothing else. Pod traffic between nodes is no
    /// longer encrypted afterwards.
    Uninstall {
        /// The node's config, for its route table (default: table 200).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        dirs: Dirs,
        #[command(flatten)]
        cni: CniDirs,
    },
}

/// The node's CNI directories, where the chained plugin `xsteer-cni` is installed: both or
/// neither (then nothing is installed or removed).
#[derive(clap::Args)]
struct CniDirs {
    /// The node's CNI config dir (/etc/cni/net.d): the agent chains `xsteer-cni` into the
    /// network config there, uninstall takes it out.
    #[arg(long, requires = "cni_bin_dir")]
    cni_conf_dir: Option<PathBuf>,
    /// The node's CNI bin dir (/opt/cni/bin): where the `xsteer-cni` binary goes.
    #[arg(long, requires = "cni_conf_dir")]
    cni_bin_dir: Option<PathBuf>,
}

impl CniDirs {
    fn dirs(self) -> Option<cni_install::Dirs> {
        Some(cni_install::Dirs {
            conf: self.cni_conf_dir?,
            bin: self.cni_bin_dir?,
        })
    }
}

/// Where xsteer keeps what outlives it.
#[derive(clap::Args)]
struct Dirs {
    /// Where maps and links are pinned (bpffs).
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Where xsteer keeps its state: the ledger of outbound keys it has used (kept by
    /// uninstall: it must outlive reinstalls), retired key generations, epochs.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn main() -> std::process::ExitCode {
    // One line naming what went wrong, with its causes; no backtrace for operators.
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Check => check(),
        Command::Apply {
            config,
            dry_run,
            dirs,
        } => run_apply(
            &config,
            ApplyOptions {
                dry_run,
                pin_dir: dirs.pin_dir,
                state_dir: dirs.state_dir,
            },
        ),
        Command::Agent {
            config,
            dirs,
            pod_veth_prefixes,
            resync,
            metrics_addr,
            rotation_grace,
            rekey_after_packets,
            cni,
            cni_plugin,
        } => {
            let cni = match cni.dirs() {
                Some(dirs) => Some(CniOptions {
                    dirs,
                    plugin: match cni_plugin {
                        Some(plugin) => plugin,
                        None => agent_cni::default_plugin()
                            .context("finding xsteer-cni beside this executable")?,
                    },
                }),
                None => None,
            };
            let metrics = match metrics_addr.as_str() {
                "off" => None,
                addr => Some(addr.parse().with_context(|| {
                    format!("--metrics-addr {addr:?}: not an address such as 127.0.0.1:9478")
                })?),
            };
            let opts = AgentOptions {
                config,
                pin_dir: dirs.pin_dir,
                state_dir: dirs.state_dir,
                pod_veths: PodVeths {
                    prefixes: pod_veth_prefixes,
                },
                poll: Duration::from_secs(1),
                resync: Duration::from_secs(resync.max(1)),
                metrics,
                rotation_grace: Duration::from_secs(rotation_grace),
                rekey_after_packets,
                cni,
            };
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_target(false)
                .init();
            runtime()?.block_on(agent::run(opts))?;
            Ok(())
        }
        Command::Lab(command) => {
            let size = |s: &LabSize| lab::topology::Size {
                nodes: s.nodes,
                pods: s.pods,
            };
            let stack = |s: &LabSize| match (s.dual_stack, s.ipv6_node_ips) {
                (_, true) => lab::topology::Stack::Ipv6Nodes,
                (true, false) => lab::topology::Stack::Dual,
                (false, false) => lab::topology::Stack::V4,
            };
            let plan = |s: &LabSize| lab::LabPlan {
                size: size(s),
                stack: stack(s),
                nat: s.nat.clone(),
            };
            let settings = |s: &LabSize| -> Result<lab::agents::AgentSettings> {
                Ok(lab::agents::AgentSettings {
                    per_cpu_sas: s.per_cpu_sas,
                    esp_in_udp: s.esp_in_udp,
                    ingress_hook: match s.ingress_hook.as_str() {
                        "auto" => None,
                        hook => Some(hook.parse().map_err(anyhow::Error::msg)?),
                    },
                })
            };
            match command {
                LabCommand::Up { size: s, dir } => lab::up(&plan(&s), &dir.dir, settings(&s)?),
                LabCommand::Test { dir } => lab::test(&dir.dir),
                LabCommand::Down { dir } => lab::down(&dir.dir),
                LabCommand::Status { dir } => lab::status(&dir.dir),
                LabCommand::Run { size: s, dir } => lab::run(&plan(&s), &dir.dir, settings(&s)?),
                LabCommand::Pod(LabPodCommand::Add { name, dir }) => lab::pod_add(&dir.dir, &name),
                LabCommand::Pod(LabPodCommand::Del { name, dir }) => lab::pod_del(&dir.dir, &name),
                LabCommand::Exec { name, command } => {
                    let code = lab::exec(&name, &command)?;
                    std::process::exit(code);
                }
            }
        }
        Command::Keys(KeysCommand::Generate { spi }) => {
            let generation = Generation::new(spi)
                .with_context(|| format!("--spi {spi}: a generation is 1..=15"))?;
            // Printing the key is what was asked for; it goes nowhere else.
            println!("{}", keys::generate_gcm_line(generation)?.as_str());
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate { key_file }) => {
            let rotated = keys::rotate(&key_file)?;
            println!(
                "{}: added key generation {} (key {})",
                key_file.display(),
                rotated.generation,
                rotated.fingerprint
            );
            if let Some(oldest) = rotated.dropped {
                println!("dropped the oldest generation, {oldest}, to keep the file unambiguous");
            }
            Ok(())
        }
        Command::Keys(KeysCommand::Wireshark) => print_esp_sa_table(),
        Command::Peer(PeerCommand::Export {
            name,
            config,
            key_file,
            secrets,
            state_dir,
        }) => export_peer(&name, &config, key_file.as_deref(), secrets, &state_dir),
        Command::Node(NodeCommand::Remove { config, name }) => {
            let dir = inputs::remove_node(&config, &name)?;
            println!(
                "node {name} removed from {}: its peers forget it at their next read",
                dir.display()
            );
            Ok(())
        }
        Command::Status {
            config,
            output,
            dirs,
        } => {
            // What the agent reconciles: the config, its state, the node records.
            let inputs = inputs::load(&config, &dirs.state_dir, Access::ReadOnly)?;
            for refused in &inputs.refused {
                eprintln!("warning: {refused}");
            }
            let status = runtime()?.block_on(status::collect(
                &inputs.view,
                &inputs.keys,
                &inputs.retired,
                &dirs.pin_dir,
            ))?;
            match output {
                OutputFormat::Table => print!("{}", status.table()),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            }
            Ok(())
        }
        Command::Probe(command) => run_probe(command),
        Command::Uninstall { config, dirs, cni } => {
            let table = match config {
                Some(path) => Config::from_path(&path)?.route_table,
                None => DEFAULT_ROUTE_TABLE,
            };
            // The plugin goes first, while the dataplane it hands pods to is still there: with
            // the dataplane gone first, the plugin, still chained, would fail every new pod's
            // ADD until it went too. With the plugin gone first, a pod started meanwhile is not
            // classified, but the guards are still attached and drop its traffic to other
            // nodes rather than let it out in plaintext, until they go last.
            let mut cni_steps = 0;
            if let Some(cni_dirs) = cni.dirs() {
                let removed = cni_install::uninstall(&cni_dirs)?;
                for (file, exact) in &removed.configs {
                    let how = if *exact {
                        ""
                    } else {
                        " (it had been reformatted or moved: taken out as an element)"
                    };
                    println!("remove xsteer-cni from {}{how}", file.display());
                }
                if removed.binary_removed {
                    println!("remove {}", cni_dirs.bin.join(PLUGIN_TYPE).display());
                }
                cni_steps = removed.configs.len() + usize::from(removed.binary_removed);
            }
            let steps = cni_steps
                + runtime()?.block_on(uninstall::uninstall(
                    &dirs.pin_dir,
                    &dirs.state_dir,
                    table,
                    |step| println!("{step}"),
                ))?;
            println!("{steps} changes; pod traffic between nodes is no longer encrypted");
            Ok(())
        }
    }
}

/// `xsteer lab ...`.
#[derive(Subcommand)]
enum LabCommand {
    /// Build the lab and start its agents.
    Up {
        #[command(flatten)]
        size: LabSize,
        #[command(flatten)]
        dir: LabDir,
    },
    /// Check every cross-node pod pair over ICMP, TCP and UDP and prove the wire carries only
    /// ESP between pods; ends with `plaintext packets: N`.
    Test {
        #[command(flatten)]
        dir: LabDir,
    },
    /// Stop the agents and remove the lab.
    Down {
        #[command(flatten)]
        dir: LabDir,
    },
    /// List the lab's namespaces, their addresses and agents.
    Status {
        #[command(flatten)]
        dir: LabDir,
    },
    /// Create or delete a pod through its node's CNI plugins, as a container runtime does.
    #[command(subcommand)]
    Pod(LabPodCommand),
    /// Run a command inside a lab namespace, as `docker exec` does.
    Exec {
        /// The namespace, as `xsteer lab status` lists it.
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Up, test, show the remote-CIDR map with bpftool, down.
    Run {
        #[command(flatten)]
        size: LabSize,
        #[command(flatten)]
        dir: LabDir,
    },
}

/// `xsteer lab pod ...`.
#[derive(Subcommand)]
enum LabPodCommand {
    /// CNI ADD through the node's conflist; a plugin's refusal is the error, and the pod is
    /// cleaned up so that it can be added again.
    Add {
        /// The pod's namespace, as `xsteer lab status` lists it.
        name: String,
        #[command(flatten)]
        dir: LabDir,
    },
    /// CNI DEL through the node's conflist, then the pod's namespace goes.
    Del {
        /// The pod's namespace, as `xsteer lab status` lists it.
        name: String,
        #[command(flatten)]
        dir: LabDir,
    },
}

/// The size of a lab.
#[derive(clap::Args)]
struct LabSize {
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u8,
    /// Pods per node.
    #[arg(long, default_value_t = 2)]
    pods: u8,
    /// IPv4 and IPv6: each node also gets an IPv6 pod CIDR (fd00:10:244:K::/64) in the pod
    /// space fd00:10:244::/48, each pod an IPv6 address, and `lab test` checks both families.
    #[arg(long)]
    dual_stack: bool,
    /// As --dual-stack, and the nodes' tunnels join their IPv6 addresses (fd00:192:168:100::K):
    /// IPv6 node IPs, every tunnel ESP over IPv6.
    #[arg(long)]
    ipv6_node_ips: bool,
    /// Every agent sends on per-CPU SAs (`per_cpu_sas = true`): one SA per CPU towards each
    /// peer, so ESP is encrypted on every core.
    #[arg(long)]
    per_cpu_sas: bool,
    /// Where every agent runs the ingress guard (`ingress_hook`): `auto` (tc, on the lab's veth
    /// uplinks), `xdp` or `tc`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "xdp", "tc"])]
    ingress_hook: String,
    /// Every agent speaks ESP in UDP (`encap = "udp"`) rather than bare ESP.
    #[arg(long)]
    esp_in_udp: bool,
    /// Puts node K (`nodeK` or `K`) behind a masquerading router that maps its ESP in UDP to
    /// another port, as a NAT at an edge site would; implies --esp-in-udp. Repeatable; IPv4
    /// labs only.
    #[arg(long = "nat", value_name = "NODE", value_parser = parse_lab_node)]
    nat: Vec<u8>,
}

/// A lab node as `--nat` names it: `nodeK` or `K`.
fn parse_lab_node(text: &str) -> Result<u8, String> {
    text.strip_prefix("node")
        .unwrap_or(text)
        .parse()
        .map_err(|_| format!("{text:?} is not a lab node (node1, node2, ... or 1, 2, ...)"))
}

/// Where a lab keeps its files.
#[derive(clap::Args)]
struct LabDir {
    /// The lab's directory.
    #[arg(long, default_value = lab::DEFAULT_DIR)]
    dir: PathBuf,
}

/// `xsteer keys ...`.
#[derive(Subcommand)]
enum KeysCommand {
    /// Print a fresh key-file line (a random AES-GCM key and salt, 128-bit ICV) on stdout.
    Generate {
        /// The key generation (SPI) of the line, 1..=15.
        #[arg(long, default_value_t = 1)]
        spi: u8,
    },
    /// Add the next key generation to a key file, atomically, keeping it mode 0600.
    Rotate {
        /// The key file.
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Print the keys of xsteer's SAs in this network namespace as Wireshark 4.0 `esp_sa` lines,
    /// to decrypt a capture. Needs root; the output is secret.
    Wireshark,
}

/// `xsteer peer ...`.
#[derive(Subcommand)]
enum PeerCommand {
    /// Print the shell script that gives a peer that is not xsteer its side of the pair: its
    /// SAs, xfrm policies and routes as `ip` commands (docs/interop.md). Keys only with
    /// --secrets. Needs root: it probes the kernel's ESP and reads this node's SAs.
    Export {
        /// The peer, one of the config's [[peers]].
        name: String,
        /// This node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// A key file to derive the keys from instead of the config's: the next one, before
        /// this node reads it, so that the peer can receive its new generation first.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Print the keys. The script is then secret.
        #[arg(long)]
        secrets: bool,
        /// This node's state directory (its epochs).
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// `xsteer node ...`.
#[derive(Subcommand)]
enum NodeCommand {
    /// Remove a node from the cluster for good: every agent forgets it and removes its SAs,
    /// policies, routes and map entries. (A node whose record merely disappears is kept with
    /// its last good record.) Its agent, should it publish again, rejoins.
    Remove {
        /// A config whose nodes_dir holds the records.
        #[arg(long)]
        config: PathBuf,
        /// The node's name.
        name: String,
    },
}

/// `xsteer probe ...`: what `cargo xtask kind test` runs in its pods. Each prints one line per
/// result, in the forms its parser reads (xtask/src/kind/report.rs).
#[derive(Subcommand)]
enum ProbeCommand {
    /// Answer TCP and UDP echoes on every address of this network namespace until killed.
    Serve {
        /// The port, TCP and UDP.
        #[arg(long, default_value_t = ECHO_PORT)]
        port: u16,
    },
    /// Check each address over ICMP, TCP and UDP: `ok PROTO IP` or `FAILED PROTO IP: why`;
    /// fails if any check failed.
    Check {
        /// An address with `xsteer probe serve` behind it (repeatable).
        #[arg(long = "to", required = true)]
        to: Vec<Ipv4Addr>,
        /// The echo port.
        #[arg(long, default_value_t = ECHO_PORT)]
        port: u16,
    },
    /// Count what this node sends on an interface for a while (needs CAP_NET_RAW): prints
    /// `capturing ...` at the start and `sent on IF: esp=N other=N plaintext=N` at the end, where
    /// plaintext counts pod packets between nodes outside ESP (pods in 10.244.0.0/16, a /24 per
    /// node, as the lab and the kind cluster give them).
    Capture {
        /// The interface.
        #[arg(long, default_value = "eth0")]
        interface: String,
        /// How long.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Stream sequence-numbered UDP datagrams to an echo server and count those that do not
    /// come back: `stream to IP: sent=N echoed=N lost=N`.
    Stream {
        /// The address of `xsteer probe serve`.
        #[arg(long)]
        to: Ipv4Addr,
        /// The echo port.
        #[arg(long, default_value_t = ECHO_PORT)]
        port: u16,
        /// Datagrams a second.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// How long.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn run_probe(command: ProbeCommand) -> Result<()> {
    match command {
        ProbeCommand::Serve { port } => {
            let _servers = probe::serve_here(port)?;
            println!("serving TCP and UDP echo on port {port}");
            loop {
                std::thread::park();
            }
        }
        ProbeCommand::Check { to, port } => {
            let mut failed = 0;
            for dst in &to {
                for proto in Proto::ALL {
                    match probe::reach(*dst, port, proto) {
                        Ok(()) => println!("ok {} {dst}", proto.name()),
                        Err(e) => {
                            failed += 1;
                            println!("FAILED {} {dst}: {e:#}", proto.name());
                        }
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} of {} checks failed", to.len() * Proto::ALL.len());
            }
            Ok(())
        }
        ProbeCommand::Capture { interface, seconds } => {
            let capture = Capture::here(&interface)?;
            println!("capturing what this node sends on {interface} for {seconds} s");
            io::stdout().flush()?;
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut total = lab::Census::default();
            loop {
                // Taken often, so that a burst does not overflow the socket's buffer.
                let seen = lab::census(&capture.take()?);
                total.esp += seen.esp;
                total.other += seen.other;
                total.plaintext += seen.plaintext;
                if Instant::now() >= end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            println!(
                "sent on {interface}: esp={} other={} plaintext={}",
                total.esp, total.other, total.plaintext
            );
            Ok(())
        }
        ProbeCommand::Stream {
            to,
            port,
            rate,
            seconds,
        } => {
            let report = probe::stream(to, port, rate, Duration::from_secs(seconds))?;
            println!(
                "stream to {to}: sent={} echoed={} lost={}",
                report.sent,
                report.echoed,
                report.lost()
            );
            Ok(())
        }
    }
}

/// Output formats of `xsteer status`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// `xsteer apply`: validates everything, then reconciles once.
fn run_apply(config_path: &std::path::Path, opts: ApplyOptions) -> Result<()> {
    // The same inputs the agent reconciles: its epochs (the configured one's keys may be used
    // up), without the generations it retired (their outbound keys must not come back), with
    // the peers of the node records. Read only: nothing is written before the checks of the
    // apply itself have passed (an identity is allocated by the agent's first start).
    let inputs = inputs::load(config_path, &opts.state_dir, Access::ReadOnly)?;
    for refused in &inputs.refused {
        eprintln!("warning: {refused}");
    }
    let runtime = runtime()?;
    let verb = if opts.dry_run { "would " } else { "" };
    let applied = runtime.block_on(apply::apply(&inputs.view, &inputs.keys, &opts, |change| {
        println!("{verb}{change}");
    }))?;
    for notice in &applied.notices {
        eprintln!("warning: {notice}");
    }
    let n = applied.changes.len();
    let plural = if n == 1 { "" } else { "s" };
    if opts.dry_run {
        println!("{n} change{plural} (dry run: none made)");
    } else {
        println!("{n} change{plural}");
    }
    Ok(())
}

/// `xsteer keys wireshark`: the `esp_sa` lines on stdout, the warning about them on stderr.
fn export_peer(
    name: &str,
    config: &std::path::Path,
    key_file: Option<&std::path::Path>,
    secrets: bool,
    state_dir: &std::path::Path,
) -> Result<()> {
    let inputs = inputs::load(config, state_dir, Access::ReadOnly)?;
    let keys = match key_file {
        // The generations this node retired stay out, as they do of the config's key file.
        Some(path) => {
            let file = keys::KeyFile::load(path)?;
            file.retain(|g| !inputs.retired.contains(&g.generation()))
        }
        None => inputs.keys,
    };
    let side = runtime()?.block_on(foreign::export(&inputs.view, &keys, name))?;
    let script = side.script(secrets);
    eprintln!(
        "{name} sends with key generation {}",
        side.sending_generation
    );
    if side.sending_generation != side.newest_generation {
        eprintln!(
            "note: this node holds no IN SA of generation {newest} from {name} yet, so {name} \
             keeps sending with {}; export again once this node's agent has read the key file \
             with {newest}",
            side.sending_generation,
            newest = side.newest_generation
        );
    }
    if secrets {
        eprintln!(
            "warning: the script on stdout holds the keys of every SA between {name} and this \
             node: keep it secret, delete it once {name} has run it"
        );
    }
    let mut stdout = io::stdout().lock();
    // The whole script ends in a newline: it goes straight to the file descriptor, never into
    // stdout's buffer (which is not wiped).
    stdout
        .write_all(script.as_bytes())
        .context("writing to stdout")?;
    stdout.flush().context("writing to stdout")
}

fn print_esp_sa_table() -> Result<()> {
    let table = runtime()?.block_on(wireshark::table())?;
    for left_out in &table.left_out {
        eprintln!("warning: {left_out}");
    }
    if table.lines.is_empty() {
        eprintln!("no SAs of xsteer's (reqid {REQID:#x}) in this network namespace");
        return Ok(());
    }
    if table.esn > 0 {
        eprintln!(
            "note: {} of the SAs use extended sequence numbers; Wireshark decrypts their packets \
             but computes their ICV without the high sequence bits (wireshark#19658), so it \
             shows the ICV as bad",
            table.esn
        );
    }
    eprintln!(
        "warning: the {} lines on stdout hold secret keys: with them, anyone who has a capture of \
         this node's traffic can read it. Keep them out of tickets and chats, delete them after use.",
        table.lines.len()
    );
    let mut stdout = io::stdout().lock();
    for line in &table.lines {
        // Nothing else is printed on stdout, so its buffer is empty and a whole line ending in
        // a newline goes straight to the file descriptor, never into that buffer (never wiped).
        stdout
            .write_all(line.as_bytes())
            .context("writing to stdout")?;
    }
    stdout.flush().context("writing to stdout")
}

/// Proves the kernel accepts the dataplane: maps created, every program verified.
fn check() -> Result<()> {
    let mut dataplane = Dataplane::load().context("creating the maps")?;
    dataplane
        .load_programs()
        .context("verifying the programs")?;
    println!("{:<16} {:<4} attach point", "program", "type");
    for (name, kind, point) in [
        (
            programs::POD_CLASSIFIER,
            "tc",
            "ingress of each pod's host-side veth",
        ),
        (programs::EGRESS_GUARD, "tc", "egress of the uplink"),
        (programs::INGRESS_GUARD, "xdp", "the uplink (a NIC)"),
        (
            programs::INGRESS_GUARD_TC,
            "tc",
            "ingress of the uplink (a veth)",
        ),
    ] {
        println!("{name:<16} {kind:<4} {point}");
    }
    println!("maps: {}", MAPS.join(", "));
    println!("ok: this kernel accepts every xsteer program");
    Ok(())
}
