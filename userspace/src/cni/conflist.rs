//! The node's CNI network config, edited as text: `xsteer-cni` goes in as the last plugin of
//! the `plugins` list and comes out again leaving the file byte for byte as it was.
//!
//! The main CNI plugin (kindnet, Calico, ...) owns the file and may rewrite it at any time;
//! xsteer only adds one element. Editing the text rather than writing back the parsed JSON keeps
//! the main plugin's formatting, key order and numbers as they are, so a removal gives back the
//! very bytes the insertion found, and a diff of the file shows one element. A small scanner that
//! knows strings, escapes and nesting finds where the element goes; serde_json parses the file
//! before and after, so nothing that is not a network config list is touched and what comes out
//! is the same network config with exactly the expected entries of xsteer's.
//!
//! Which file: containerd and CRI-O load the first file by name in the config directory that
//! ends in `.conf`, `.conflist` or `.json` ([`load_order`]). Only a `.conflist` chains plugins.
//! A `.conf` or `.json` holds one plugin; chaining into it means writing a list under another
//! name and removing the main plugin's file, behind the main plugin's back, so it is refused
//! ([`Problem::SinglePlugin`], naming the file) rather than done.

use std::{
    ffi::OsStr,
    ops::Range,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

/// The plugin's `type` in the config, which is also its binary's name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "xsteer-cni";

/// What a file in the config directory is to the runtime, by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    /// A `.conflist`: a list of chained plugins.
    List,
    /// A `.conf` or `.json`: a single plugin.
    Single,
}

impl ConfigKind {
    /// The kind of the file named `name`; `None` for a file the runtime does not load.
    pub fn of(name: &OsStr) -> Option<ConfigKind> {
        // The runtimes take the extension as Go's filepath.Ext does: from the last dot, so a
        // hidden `.conflist` counts too.
        let name = name.as_bytes();
        let dot = name.iter().rposition(|&b| b == b'.')?;
        match &name[dot..] {
            b".conflist" => Some(ConfigKind::List),
            b".conf" | b".json" => Some(ConfigKind::Single),
            _ => None,
        }
    }
}

/// The files among `names` (the config directory's, but for its directories) that the runtime
/// loads, in the order it tries them: by name, bytewise as Go sorts. The first is the node's
/// network config.
pub fn load_order<'a>(names: impl IntoIterator<Item = &'a OsStr>) -> Vec<(&'a OsStr, ConfigKind)> {
    let mut files: Vec<_> = names
        .into_iter()
        .filter_map(|name| Some((name, ConfigKind::of(name)?)))
        .collect();
    files.sort_by(|(a, _), (b, _)| a.as_bytes().cmp(b.as_bytes()));
    files
}

/// xsteer's element of the `plugins` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    value: Value,
    text: String,
}

impl Entry {
    /// The entry of `xsteer-cni` reading the dataplane pinned under `pin_dir`.
    pub fn new(pin_dir: &str) -> Entry {
        let value = json!({ "type": PLUGIN_TYPE, "pinDir": pin_dir });
        // Compact, as serde_json writes it: a removal recognises its own text by writing the
        // element it finds the same way.
        let text = value.to_string();
        Entry { value, text }
    }

    /// The entry's text as it is inserted.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Why a config file cannot be edited.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct ConflistError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// It does not parse.
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    /// It parses, but not to an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// The object has no `plugins`: not a network config list.
    #[error("no \"plugins\" list: not a network config list")]
    NoPlugins,
    /// `plugins` is there but is no list.
    #[error("\"plugins\" is not a list")]
    PluginsNotAList,
    /// The runtime reads it as a single plugin, which cannot be chained.
    #[error(
        "a single-plugin config (.conf or .json): xsteer-cni can only be chained into a \
         .conflist; have the CNI write a .conflist, or convert the file to one"
    )]
    SinglePlugin,
    /// The scanner and the parser disagree, or the edit would change more than xsteer's
    /// entry: a bug, and the file is left as it is.
    #[error(
        "the edit of the plugins list came out wrong (a bug in xsteer's scanner); the file is \
         left as it is"
    )]
    Unfaithful,
}

/// What [`insert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Insertion {
    /// The entry is there as given: the text is unchanged.
    AlreadyPresent,
    /// The entry was appended; the new text.
    Appended(Vec<u8>),
    /// Another entry of xsteer's (another pin dir, or several) gave way to this one, appended;
    /// the new text.
    Replaced(Vec<u8>),
}

/// What [`remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The new text.
    pub text: Vec<u8>,
    /// Whether exactly what [`insert`] writes came out, so that the text is the one the
    /// insertion found, byte for byte; `false` when someone reformatted or moved the entry and
    /// it was taken out as an element (with its separator) instead.
    pub exact: bool,
}

/// Adds `entry` as the last plugin of the config list `text` (the contents of `file`, named in
/// errors), unless it is there already; an entry of xsteer's that differs is replaced.
pub fn insert(file: &Path, text: &[u8], entry: &Entry) -> Result<Insertion, ConflistError> {
    let error = |problem| ConflistError {
        file: file.to_owned(),
        problem,
    };
    let parsed = parse(text).map_err(error)?;
    let ours = parsed.ours();
    if let [one] = ours.as_slice()
        && parsed.plugins[*one] == entry.value
    {
        return Ok(Insertion::AlreadyPresent);
    }
    let had_ours = !ours.is_empty();
    let (stripped, _) = strip(text.to_vec()).map_err(error)?;
    let layout = scan(&stripped).ok_or(Problem::Unfaithful).map_err(error)?;
    let (at, insert) = match layout.elements.as_slice() {
        [] => (layout.open + 1, entry.text.clone()),
        [.., last] => {
            // The new element is indented as the last one is: the whitespace between it and
            // the bracket or comma before it.
            let lead_from = match layout.elements.len() {
                1 => layout.open + 1,
                n => comma_after(&stripped, layout.elements[n - 2].end)
                    .ok_or(Problem::Unfaithful)
                    .map_err(error)?,
            };
            let lead = String::from_utf8_lossy(&stripped[lead_from..last.start]);
            (last.end, format!(",{lead}{}", entry.text))
        }
    };
    let mut out = Vec::with_capacity(stripped.len() + insert.len());
    out.extend_from_slice(&stripped[..at]);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(&stripped[at..]);
    // Never write what is not the same network config with our entry last.
    let check = parse(&out).map_err(|_| error(Problem::Unfaithful))?;
    if check.ours() != [check.plugins.len() - 1]
        || check.plugins.last() != Some(&entry.value)
        || check.without_ours() != parsed.without_ours()
    {
        return Err(error(Problem::Unfaithful));
    }
    Ok(if had_ours {
        Insertion::Replaced(out)
    } else {
        Insertion::Appended(out)
    })
}

/// Takes every entry of xsteer's out of the config list `text` (the contents of `file`, named
/// in errors); `None` if it has none.
pub fn remove(file: &Path, text: &[u8]) -> Result<Option<Removal>, ConflistError> {
    let error = |problem| ConflistError {
        file: file.to_owned(),
        problem,
    };
    let parsed = parse(text).map_err(error)?;
    if parsed.ours().is_empty() {
        return Ok(None);
    }
    let (out, exact) = strip(text.to_vec()).map_err(error)?;
    let check = parse(&out).map_err(|_| error(Problem::Unfaithful))?;
    if !check.ours().is_empty() || check.without_ours() != parsed.without_ours() {
        return Err(error(Problem::Unfaithful));
    }
    Ok(Some(Removal { text: out, exact }))
}

/// Takes xsteer's entries out of `text` one at a time, each with one separator; whether each
/// was exactly what [`insert`] writes, where it writes it.
fn strip(mut text: Vec<u8>) -> Result<(Vec<u8>, bool), Problem> {
    let mut exact = true;
    loop {
        let parsed = parse(&text)?;
        let Some(&i) = parsed.ours().first() else {
            return Ok((text, exact));
        };
        let elements = &parsed.layout.elements;
        let element = elements[i].clone();
        let written = &text[element.clone()];
        exact &= i + 1 == elements.len()
            && serde_json::to_string(&parsed.plugins[i]).ok().as_deref()
                == std::str::from_utf8(written).ok();
        let cut = match (i, elements.len()) {
            // The only element: from the bracket, where an insertion into an empty list puts
            // it.
            (0, 1) => {
                exact &= element.start == parsed.layout.open + 1;
                parsed.layout.open + 1..element.end
            }
            // The first of several: up to the next one.
            (0, _) => element.start..elements[1].start,
            // Else: from the end of the one before, which is where the comma goes.
            _ => {
                let before = elements[i - 1].end;
                exact &= text.get(before) == Some(&b',');
                before..element.end
            }
        };
        text.drain(cut);
    }
}

/// The config list as parsed, and where its plugins are in the text.
struct Parsed {
    value: Value,
    plugins: Vec<Value>,
    layout: Layout,
}

impl Parsed {
    /// The indices of xsteer's entries among the plugins.
    fn ours(&self) -> Vec<usize> {
        (0..self.plugins.len())
            .filter(|&i| self.plugins[i]["type"].as_str() == Some(PLUGIN_TYPE))
            .collect()
    }

    /// The config without xsteer's entries: what must not change.
    fn without_ours(&self) -> Value {
        let mut value = self.value.clone();
        if let Some(plugins) = value.get_mut("plugins").and_then(Value::as_array_mut) {
            plugins.retain(|p| p["type"].as_str() != Some(PLUGIN_TYPE));
        }
        value
    }
}

fn parse(text: &[u8]) -> Result<Parsed, Problem> {
    let value: Value = serde_json::from_slice(text).map_err(Problem::NotJson)?;
    let object = value.as_object().ok_or(Problem::NotAnObject)?;
    let plugins = object
        .get("plugins")
        .ok_or(Problem::NoPlugins)?
        .as_array()
        .ok_or(Problem::PluginsNotAList)?
        .clone();
    let layout = scan(text).ok_or(Problem::Unfaithful)?;
    if layout.elements.len() != plugins.len() {
        return Err(Problem::Unfaithful);
    }
    Ok(Parsed {
        value,
        plugins,
        layout,
    })
}

/// Where the `plugins` list lies in the text.
struct Layout {
    /// Its `[`.
    open: usize,
    /// Each element's text.
    elements: Vec<Range<usize>>,
}

/// Finds the top-level `plugins` list in JSON text (already parsed, so well formed); the last
/// one if the key repeats, as serde_json and Go's encoding/json read it.
fn scan(text: &[u8]) -> Option<Layout> {
    let mut at = skip_space(text, 0);
    if text.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut plugins = None;
    loop {
        at = skip_space(text, at);
        match text.get(at)? {
            b'}' => break,
            b',' => {
                at += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = string_end(text, at)?;
        // Decoded, so that an escaped key (`"plugin\u0073"`) is found as the parsers find it.
        let key: String = serde_json::from_slice(&text[at..key_end]).ok()?;
        at = skip_space(text, key_end);
        if text.get(at) != Some(&b':') {
            return None;
        }
        let start = skip_space(text, at + 1);
        if key == "plugins" {
            plugins = Some(start);
        }
        at = value_end(text, start)?;
    }
    list(text, plugins?)
}

/// The layout of the list whose `[` is at `open`.
fn list(text: &[u8], open: usize) -> Option<Layout> {
    if text.get(open) != Some(&b'[') {
        return None;
    }
    let mut elements = Vec::new();
    let mut at = skip_space(text, open + 1);
    if text.get(at) == Some(&b']') {
        return Some(Layout { open, elements });
    }
    loop {
        let end = value_end(text, at)?;
        elements.push(at..end);
        at = skip_space(text, end);
        match text.get(at)? {
            b',' => at = skip_space(text, at + 1),
            b']' => return Some(Layout { open, elements }),
            _ => return None,
        }
    }
}

/// The position just after the comma that follows `at` (past whitespace).
fn comma_after(text: &[u8], at: usize) -> Option<usize> {
    let at = skip_space(text, at);
    (text.get(at) == Some(&b',')).then_some(at + 1)
}

/// The first position at or after `at` that is not JSON whitespace.
fn skip_space(text: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = text.get(at) {
        at += 1;
    }
    at
}

/// The end (exclusive) of the JSON value that starts at `at`.
fn value_end(text: &[u8], at: usize) -> Option<usize> {
    match text.get(at)? {
        b'"' => string_end(text, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            loop {
                match text.get(i)? {
                    // Brackets inside strings are text, not nesting.
                    b'"' => {
                        i = string_end(text, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        // A number, true, false or null: up to the next delimiter or whitespace.
        _ => Some(
            text[at..]
                .iter()
                .position(|b| matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(text.len(), |n| at + n),
        ),
    }
}

/// The end (exclusive) of the string whose opening quote is at `at`.
fn string_end(text: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match text.get(i)? {
            // An escape: the next byte is never the end (`\"`, `\\`).
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/cni/net.d/10-kindnet.conflist";

    fn entry() -> Entry {
        Entry::new("/sys/fs/bpf/xsteer")
    }

    /// kindnetd's conflist as its template renders it (kind's images/kindnetd/cmd/kindnetd/
    /// cni.go): tabs, a leading newline, and the `mtu` line only when it knows eth0's MTU.
    fn kindnet(mtu: Option<u32>) -> String {
        let mtu = match mtu {
            Some(mtu) => format!(",\n\t\t\"mtu\": {mtu}\n\t\t"),
            None => String::new(),
        };
        format!(
            "\n{{\n\t\"cniVersion\": \"0.3.1\",\n\t\"name\": \"kindnet\",\n\t\"plugins\": [\n\t{{\n\
             \t\t\"type\": \"ptp\",\n\t\t\"ipMasq\": false,\n\t\t\"ipam\": {{\n\
             \t\t\t\"type\": \"host-local\",\n\t\t\t\"dataDir\": \"/run/cni-ipam-state\",\n\
             \t\t\t\"routes\": [\n\t\t\t\t{{\n\t\t\t\t\t\"dst\": \"0.0.0.0/0\"\n\t\t\t\t}}\n\t\t\t],\n\
             \t\t\t\"ranges\": [\n\t\t\t[\n\t\t\t\t{{\n\t\t\t\t\t\"subnet\": \"10.244.1.0/24\"\n\
             \t\t\t\t}}\n\t\t\t]\n\t\t]\n\t\t}}\n\t\t{mtu}\n\t}},\n\t{{\n\t\t\"type\": \"portmap\",\n\
             \t\t\"capabilities\": {{\n\t\t\t\"portMappings\": true\n\t\t}}\n\t}}\n\t]\n}}\n"
        )
    }

    fn inserted(text: &str, entry: &Entry) -> String {
        match insert(Path::new(FILE), text.as_bytes(), entry).unwrap() {
            Insertion::Appended(out) => String::from_utf8(out).unwrap(),
            other => panic!("not appended: {other:?}"),
        }
    }

    fn removed(text: &str) -> Removal {
        remove(Path::new(FILE), text.as_bytes()).unwrap().unwrap()
    }

    /// Inserts, checks the text against `expected`, and that removal gives the original back
    /// byte for byte and a second insertion changes nothing.
    fn round_trip(original: &str, expected: &str) {
        let entry = entry();
        let out = inserted(original, &entry);
        assert_eq!(out, expected);
        assert_eq!(
            insert(Path::new(FILE), out.as_bytes(), &entry).unwrap(),
            Insertion::AlreadyPresent
        );
        assert_eq!(
            removed(&out),
            Removal {
                text: original.as_bytes().to_vec(),
                exact: true
            }
        );
        assert_eq!(remove(Path::new(FILE), original.as_bytes()).unwrap(), None);
    }

    #[test]
    fn kindnets_conflist_gets_the_entry_last_indented_like_portmap() {
        let e = entry();
        for mtu in [Some(1500), None] {
            let original = kindnet(mtu);
            let expected = original.replacen(
                "\n\t}\n\t]\n}",
                &format!("\n\t}},\n\t{}\n\t]\n}}", e.text()),
                1,
            );
            assert_ne!(expected, original);
            round_trip(&original, &expected);
            let value: Value = serde_json::from_str(&expected).unwrap();
            let types: Vec<&str> = value["plugins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["type"].as_str().unwrap())
                .collect();
            assert_eq!(types, ["ptp", "portmap", "xsteer-cni"]);
            assert_eq!(value["plugins"][2]["pinDir"], "/sys/fs/bpf/xsteer");
        }
    }

    #[test]
    fn a_one_line_file_stays_on_one_line() {
        let original = r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"}]}"#;
        let expected = format!(
            r#"{{"cniVersion":"1.0.0","name":"net","plugins":[{{"type":"bridge"}},{}]}}"#,
            entry().text()
        );
        round_trip(original, &expected);
    }

    #[test]
    fn an_empty_list_gets_the_entry_right_after_its_bracket() {
        let e = entry();
        round_trip(
            r#"{"name":"n","plugins":[]}"#,
            &format!(r#"{{"name":"n","plugins":[{}]}}"#, e.text()),
        );
        round_trip(
            "{\"name\": \"n\", \"plugins\": [ \n ]}",
            &format!("{{\"name\": \"n\", \"plugins\": [{} \n ]}}", e.text()),
        );
    }

    #[test]
    fn crlf_line_ends_are_kept() {
        let original = "{\r\n  \"cniVersion\": \"0.4.0\",\r\n  \"plugins\": [\r\n    {\r\n      \
                        \"type\": \"calico\"\r\n    },\r\n    {\r\n      \"type\": \"bandwidth\"\r\n    }\r\n  ]\r\n}\r\n";
        let expected = original.replace(
            "\"bandwidth\"\r\n    }",
            &format!("\"bandwidth\"\r\n    }},\r\n    {}", entry().text()),
        );
        round_trip(original, &expected);
    }

    #[test]
    fn brackets_quotes_and_keys_inside_strings_and_nested_lists_are_not_the_list() {
        let original = r#"{"name":"a]}\"plugins\": [","x":"\\\"","nested":{"plugins":[{"type":"no"}]},
"plugins" : [ {"type":"t","args":{"s":"]}{[\"","n":[1,[2,{"k":"}\\"}]],"e":"\u005d"}} ] ,
"after":[{"plugins":[]}], "num": -1.5e3, "t": true, "z": null}"#;
        let expected = original.replace(
            r#""e":"\u005d"}} ]"#,
            // Spaced as the element before it is from its bracket.
            &format!(r#""e":"\u005d"}}}}, {} ]"#, entry().text()),
        );
        round_trip(original, &expected);
        let value: Value = serde_json::from_str(&expected).unwrap();
        assert_eq!(value["nested"]["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(value["plugins"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_key_is_found_as_the_parsers_find_it_escaped_or_repeated() {
        let e = entry();
        round_trip(
            r#"{"plugin\u0073":[{"type":"a"}]}"#,
            &format!(r#"{{"plugin\u0073":[{{"type":"a"}},{}]}}"#, e.text()),
        );
        // The last of a repeated key is the one serde_json and Go's encoding/json keep.
        round_trip(
            r#"{"plugins":[{"type":"a"}],"plugins":[{"type":"b"}]}"#,
            &format!(
                r#"{{"plugins":[{{"type":"a"}}],"plugins":[{{"type":"b"}},{}]}}"#,
                e.text()
            ),
        );
    }

    #[test]
    fn another_pin_dir_or_a_second_entry_is_replaced_by_the_one_given() {
        let original = kindnet(Some(1500));
        let old = inserted(&original, &Entry::new("/sys/fs/bpf/old"));
        let new = entry();
        let Insertion::Replaced(out) = insert(Path::new(FILE), old.as_bytes(), &new).unwrap()
        else {
            panic!("not replaced");
        };
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, inserted(&original, &new));
        assert_eq!(removed(&out).text, original.as_bytes());

        // Two entries (someone copied one in): one stays.
        let twice = out.replacen(
            "\t\"plugins\": [\n",
            &format!("\t\"plugins\": [\n\t{},\n", new.text()),
            1,
        );
        let Insertion::Replaced(once) = insert(Path::new(FILE), twice.as_bytes(), &new).unwrap()
        else {
            panic!("not replaced");
        };
        assert_eq!(String::from_utf8(once).unwrap(), out);
    }

    #[test]
    fn an_entry_reformatted_or_moved_is_still_removed_and_said_so() {
        let original = kindnet(Some(1500));
        let pretty = original.replacen(
            "\n\t}\n\t]\n}",
            "\n\t},\n\t{\n\t\t\"type\": \"xsteer-cni\",\n\t\t\"pinDir\": \"/x\"\n\t}\n\t]\n}",
            1,
        );
        assert_eq!(
            removed(&pretty),
            Removal {
                text: original.as_bytes().to_vec(),
                exact: false
            }
        );
        // First of the list: taken out with the separator after it.
        let first = r#"{"plugins":[{"type":"xsteer-cni"}, {"type":"ptp"}]}"#;
        assert_eq!(
            removed(first),
            Removal {
                text: br#"{"plugins":[{"type":"ptp"}]}"#.to_vec(),
                exact: false
            }
        );
        // In the middle.
        let middle = r#"{"plugins":[{"type":"a"},{"type":"xsteer-cni"},{"type":"b"}]}"#;
        assert_eq!(
            removed(middle).text,
            br#"{"plugins":[{"type":"a"},{"type":"b"}]}"#
        );
    }

    #[test]
    fn what_is_not_a_config_list_is_refused_naming_the_file() {
        let problem = |text: &str| {
            let err = insert(Path::new(FILE), text.as_bytes(), &entry()).unwrap_err();
            assert_eq!(err.file, Path::new(FILE));
            assert!(err.to_string().starts_with(FILE), "{err}");
            assert!(remove(Path::new(FILE), text.as_bytes()).is_err());
            err.problem
        };
        assert!(matches!(problem(""), Problem::NotJson(_)));
        assert!(matches!(problem("{\"plugins\": [}"), Problem::NotJson(_)));
        assert!(matches!(
            problem("{\"plugins\": []} x"),
            Problem::NotJson(_)
        ));
        assert!(matches!(
            problem("[{\"type\": \"a\"}]"),
            Problem::NotAnObject
        ));
        assert!(matches!(
            problem("{\"type\": \"bridge\"}"),
            Problem::NoPlugins
        ));
        assert!(matches!(
            problem("{\"plugins\": {\"type\": \"a\"}}"),
            Problem::PluginsNotAList
        ));
        assert!(matches!(
            problem("\u{feff}{\"plugins\": []}"),
            Problem::NotJson(_)
        ));
    }

    #[test]
    fn the_runtime_takes_the_first_loadable_file_by_name() {
        let pick = |names: &[&str]| {
            load_order(names.iter().map(OsStr::new))
                .first()
                .map(|(name, kind)| (name.to_str().unwrap().to_owned(), *kind))
        };
        assert_eq!(
            pick(&[
                "10-kindnet.conflist",
                "10-kindnet.conflist.temp",
                ".xsteer-cni.42.tmp",
                "README",
                "99-loopback.conf",
            ]),
            Some(("10-kindnet.conflist".into(), ConfigKind::List))
        );
        assert_eq!(
            pick(&["10-calico.conflist", "05-cilium.json"]),
            Some(("05-cilium.json".into(), ConfigKind::Single))
        );
        // Bytewise: upper case before lower case, as Go sorts.
        assert_eq!(
            pick(&["a.conflist", "B.conf"]),
            Some(("B.conf".into(), ConfigKind::Single))
        );
        assert_eq!(pick(&["10-kindnet.conflist.temp", "x.tmp"]), None);
        assert_eq!(
            ConfigKind::of(OsStr::new(".conflist")),
            Some(ConfigKind::List)
        );
    }
}
