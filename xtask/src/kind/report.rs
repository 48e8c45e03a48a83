//! Reading what the probes print (the forms `xsteer probe` documents) and what the agents
//! report, into the numbers `cargo xtask kind test` judges by.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One check of `xsteer probe check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `icmp`, `tcp` or `udp`.
    pub proto: String,
    /// The address checked.
    pub to: Ipv4Addr,
    /// `None` when it answered; why not otherwise.
    pub failure: Option<String>,
}

/// The checks in `xsteer probe check`'s output (`ok PROTO IP`, `FAILED PROTO IP: why`).
pub fn checks(output: &str) -> Result<Vec<Check>> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let bad = || format!("not a check result: {l:?}");
            let (ok, rest) = l.split_once(' ').with_context(bad)?;
            let (proto, rest) = rest.split_once(' ').with_context(bad)?;
            let (to, failure) = match (ok, rest.split_once(": ")) {
                ("ok", None) => (rest, None),
                ("FAILED", Some((to, why))) => (to, Some(why.to_owned())),
                _ => bail!(bad()),
            };
            Ok(Check {
                proto: proto.to_owned(),
                to: to.parse().with_context(bad)?,
                failure,
            })
        })
        .collect()
}

/// What one node sent on its uplink, from `xsteer probe capture`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// ESP packets.
    pub esp: u64,
    /// Other IPv4 packets.
    pub other: u64,
    /// Pod packets between nodes outside ESP: must be 0.
    pub plaintext: u64,
}

/// The census in `xsteer probe capture`'s output (`sent on IF: esp=N other=N plaintext=N`).
pub fn census(output: &str) -> Result<Census> {
    let line = output
        .lines()
        .find(|l| l.starts_with("sent on "))
        .with_context(|| format!("no census in the capture's output: {output:?}"))?;
    let mut census = Census::default();
    for (key, field) in [
        ("esp", &mut census.esp),
        ("other", &mut census.other),
        ("plaintext", &mut census.plaintext),
    ] {
        *field = value(line, key)?;
    }
    Ok(census)
}

/// What one stream saw, from `xsteer probe stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams that did not come back.
    pub lost: u64,
}

/// The result in `xsteer probe stream`'s output (`stream to IP: sent=N echoed=N lost=N`).
pub fn stream(output: &str) -> Result<Stream> {
    let line = output
        .lines()
        .find(|l| l.starts_with("stream to "))
        .with_context(|| format!("no result in the stream's output: {output:?}"))?;
    Ok(Stream {
        sent: value(line, "sent")?,
        lost: value(line, "lost")?,
    })
}

fn value(line: &str, key: &str) -> Result<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key}= in {line:?}"))?
        .parse()
        .with_context(|| format!("{key}= in {line:?} is not a number"))
}

/// The generation `xsteer keys rotate` added (`FILE: added key generation N (key ...)`).
pub fn rotated_generation(output: &str) -> Result<u8> {
    output
        .lines()
        .find_map(|l| l.split_once("added key generation ")?.1.split(' ').next())
        .with_context(|| format!("xsteer keys rotate said {output:?}"))?
        .parse()
        .context("the generation xsteer keys rotate added")
}

/// From `xsteer status --output json`: the peers that do not send with `generation` yet.
pub fn peers_not_sending(status_json: &str, generation: u8) -> Result<Vec<String>> {
    let status: Value = serde_json::from_str(status_json).context("xsteer status --output json")?;
    let peers = status["peers"]
        .as_array()
        .context("xsteer status has no peers list")?;
    if peers.is_empty() {
        bail!("the agent knows no peer");
    }
    Ok(peers
        .iter()
        .filter(|p| p["sending_generation"].as_u64() != Some(u64::from(generation)))
        .map(|p| p["name"].as_str().unwrap_or("?").to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_read_line_by_line() {
        let out = "ok icmp 10.244.1.2\nok tcp 10.244.1.2\nFAILED udp 10.244.1.2: no UDP echo from 10.244.1.2\n";
        let checks = checks(out).unwrap();
        assert_eq!(checks.len(), 3);
        assert_eq!(checks[0].failure, None);
        assert_eq!(checks[2].proto, "udp");
        assert_eq!(
            checks[2].failure.as_deref(),
            Some("no UDP echo from 10.244.1.2")
        );
        assert!(super::checks("hello world\n").is_err());
    }

    #[test]
    fn census_stream_and_rotation_lines_are_read() {
        let capture = "capturing what this node sends on eth0 for 45 s\n\
                       sent on eth0: esp=1200 other=35 plaintext=0\n";
        assert_eq!(
            census(capture).unwrap(),
            Census {
                esp: 1200,
                other: 35,
                plaintext: 0
            }
        );
        assert!(census("capturing ...\n").is_err());
        assert_eq!(
            stream("stream to 10.244.2.3: sent=36000 echoed=35998 lost=2\n").unwrap(),
            Stream {
                sent: 36000,
                lost: 2
            }
        );
        assert_eq!(
            rotated_generation(
                "/t/keys: added key generation 4 (key 1a2b3c4d)\ndropped the oldest generation, 2\n"
            )
            .unwrap(),
            4
        );
    }

    #[test]
    fn peers_not_yet_on_the_new_generation_are_named() {
        let status = r#"{"node":"a","peers":[
            {"name":"b","sending_generation":4},
            {"name":"c","sending_generation":3}]}"#;
        assert_eq!(peers_not_sending(status, 4).unwrap(), ["c"]);
        assert!(peers_not_sending(status, 3).unwrap() == ["b"]);
        assert!(peers_not_sending(r#"{"peers":[]}"#, 4).is_err());
    }
}
