//! A Kubernetes API server for the tests, as a tower service for kube's client: enough of
//! `/api/v1/nodes` for a list, a watch and a status patch, answering with the JSON a real one
//! sends (a `NodeList`, watch events one JSON object per line, `Status` objects for errors), and
//! able to misbehave as one does: close or break a watch, expire resource versions (`410 Gone`),
//! fail patches.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use serde_json::{Value, json};
use tokio::sync::watch;

type Body = UnsyncBoxBody<Bytes, io::Error>;
type Chunks = mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>;

/// A request the server answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query's parameters.
    pub query: BTreeMap<String, String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body, as JSON, if it had one.
    pub body: Option<Value>,
}

/// The fake server; clones share it.
#[derive(Clone)]
pub struct FakeApi {
    server: Arc<Mutex<Server>>,
    /// While true, watch requests wait (the client is cut off from the server).
    paused: Arc<watch::Sender<bool>>,
}

#[derive(Default)]
struct Server {
    /// Node objects by name.
    nodes: BTreeMap<String, Value>,
    /// The resource version of the last change.
    version: u64,
    /// The watch events by resource version, for a watch that starts behind.
    history: Vec<(u64, String)>,
    /// A watch that starts from a version older than this gets `410 Gone`.
    oldest: u64,
    /// The open watches.
    watches: Vec<Chunks>,
    /// Every request, in order.
    requests: Vec<Recorded>,
    /// Status patches still to fail, with 500.
    failing_patches: usize,
}

impl FakeApi {
    /// A server holding `nodes`.
    pub fn new(nodes: impl IntoIterator<Item = Value>) -> FakeApi {
        let api = FakeApi {
            server: Arc::default(),
            paused: Arc::new(watch::channel(false).0),
        };
        for node in nodes {
            api.put(node);
        }
        api
    }

    fn server(&self) -> MutexGuard<'_, Server> {
        self.server.lock().unwrap()
    }

    /// A client of this server.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |request| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.answer(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Adds or replaces a Node; open watches get `ADDED` or `MODIFIED`.
    pub fn put(&self, mut node: Value) {
        let mut server = self.server();
        let name = node["metadata"]["name"].as_str().unwrap().to_owned();
        let kind = if server.nodes.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        server.version += 1;
        node["metadata"]["resourceVersion"] = json!(server.version.to_string());
        server.nodes.insert(name, node.clone());
        server.event(kind, node);
    }

    /// Deletes a Node; open watches get `DELETED`.
    pub fn delete(&self, name: &str) {
        let mut server = self.server();
        let mut node = server.nodes.remove(name).unwrap();
        server.version += 1;
        node["metadata"]["resourceVersion"] = json!(server.version.to_string());
        server.event("DELETED", node);
    }

    /// Other objects change: the resource version moves on with no Node event.
    pub fn advance(&self, by: u64) {
        self.server().version += by;
    }

    /// Forgets the history: a watch that resumes from an older version gets `410 Gone`.
    pub fn compact(&self) {
        let mut server = self.server();
        server.oldest = server.version;
        server.history.clear();
    }

    /// Sends a `BOOKMARK` at the current version on every open watch.
    pub fn bookmark(&self) {
        let server = self.server();
        let line = event(
            "BOOKMARK",
            &json!({
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": { "resourceVersion": server.version.to_string() }
            }),
        );
        server.send(&line);
    }

    /// Ends every open watch with an `ERROR` event, `410 Gone`, as a server whose history has
    /// moved past a watch does.
    pub fn gone(&self) {
        let mut server = self.server();
        let line = event("ERROR", &gone(server.version, server.version + 1));
        server.send(&line);
        server.watches.clear();
    }

    /// Closes every open watch, as a server that restarts, or ends a watch at its timeout, does.
    pub fn close_watches(&self) {
        self.server().watches.clear();
    }

    /// Breaks every open watch mid-stream, as a connection reset does.
    pub fn break_watches(&self) {
        let mut server = self.server();
        for watch in server.watches.drain(..) {
            let _ = watch.unbounded_send(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset by the fake API server",
            )));
        }
    }

    /// Holds new watches back (`true`) until released (`false`): the client cannot reach the
    /// server meanwhile.
    pub fn pause_watches(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// The next `n` status patches fail with 500.
    pub fn fail_patches(&self, n: usize) {
        self.server().failing_patches = n;
    }

    /// The Node named `name`, as stored.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.server().nodes.get(name).cloned()
    }

    /// How many watches are open.
    pub fn open_watches(&self) -> usize {
        let mut server = self.server();
        server.watches.retain(|w| !w.is_closed());
        server.watches.len()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.server().requests.clone()
    }

    async fn answer(&self, request: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.unwrap();
        let query: BTreeMap<String, String> = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let recorded = Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: query.clone(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned()),
            body: serde_json::from_slice(&body).ok(),
        };
        self.server().requests.push(recorded.clone());
        let rest = recorded.path.strip_prefix("/api/v1/nodes");
        match (recorded.method.as_str(), rest) {
            ("GET", Some("")) if query.get("watch").map(String::as_str) == Some("true") => {
                let from: u64 = query["resourceVersion"].parse().unwrap();
                let mut paused = self.paused.subscribe();
                paused.wait_for(|paused| !*paused).await.unwrap();
                self.watch(from)
            }
            ("GET", Some("")) => self.list(),
            ("PATCH", Some(rest)) => {
                let name = rest
                    .strip_prefix('/')
                    .and_then(|r| r.strip_suffix("/status"))
                    .unwrap();
                self.patch(name, &recorded)
            }
            _ => full(
                404,
                &status(404, "NotFound", "the server could not find it"),
            ),
        }
    }

    fn list(&self) -> Response<Body> {
        let server = self.server();
        // Items of a list carry no kind or apiVersion: the list does.
        let items: Vec<Value> = server
            .nodes
            .values()
            .map(|node| {
                let mut item = node.clone();
                let object = item.as_object_mut().unwrap();
                object.remove("kind");
                object.remove("apiVersion");
                item
            })
            .collect();
        full(
            200,
            &json!({
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": { "resourceVersion": server.version.to_string() },
                "items": items,
            }),
        )
    }

    fn watch(&self, from: u64) -> Response<Body> {
        let mut server = self.server();
        let (chunks, body) = mpsc::unbounded();
        if from < server.oldest {
            // A real server answers 200 and ends the stream with the error.
            let line = event("ERROR", &gone(from, server.oldest));
            let _ = chunks.unbounded_send(Ok(Frame::data(Bytes::from(line))));
            return streamed(body);
        }
        for (_, line) in server.history.iter().filter(|(v, _)| *v > from) {
            let _ = chunks.unbounded_send(Ok(Frame::data(Bytes::from(line.clone()))));
        }
        server.watches.push(chunks);
        streamed(body)
    }

    fn patch(&self, name: &str, request: &Recorded) -> Response<Body> {
        let mut server = self.server();
        if request.content_type.as_deref() != Some("application/merge-patch+json") {
            return full(
                415,
                &status(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format",
                ),
            );
        }
        if server.failing_patches > 0 {
            server.failing_patches -= 1;
            return full(
                500,
                &status(500, "InternalError", "etcdserver: request timed out"),
            );
        }
        let Some(node) = server.nodes.get(name) else {
            return full(
                404,
                &status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            );
        };
        let mut node = node.clone();
        merge(&mut node, request.body.as_ref().unwrap());
        server.version += 1;
        node["metadata"]["resourceVersion"] = json!(server.version.to_string());
        server.nodes.insert(name.to_owned(), node.clone());
        server.event("MODIFIED", node.clone());
        full(200, &node)
    }
}

impl Server {
    /// Records a watch event and sends it to every open watch.
    fn event(&mut self, kind: &str, object: Value) {
        let line = event(kind, &object);
        self.history.push((self.version, line.clone()));
        self.send(&line);
    }

    fn send(&self, line: &str) {
        for watch in &self.watches {
            let _ = watch.unbounded_send(Ok(Frame::data(Bytes::from(line.to_owned()))));
        }
    }
}

/// A watch event: one JSON object on one line.
fn event(kind: &str, object: &Value) -> String {
    format!("{}\n", json!({ "type": kind, "object": object }))
}

/// The `Status` of an error.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// The `Status` a watch from `from` gets once the server's history starts at `oldest`.
fn gone(from: u64, oldest: u64) -> Value {
    status(
        410,
        "Expired",
        &format!("too old resource version: {from} ({oldest})"),
    )
}

fn full(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

fn streamed(chunks: mpsc::UnboundedReceiver<Result<Frame<Bytes>, io::Error>>) -> Response<Body> {
    Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(chunks).boxed_unsync())
        .unwrap()
}

/// A JSON merge patch (RFC 7386) of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            target.as_object_mut().unwrap().remove(key);
        } else {
            merge(&mut target[key], value);
        }
    }
}

/// A Node as a kind cluster's API server shows it, with pod CIDR `pod_cidr`, InternalIP `ip`,
/// and annotation `record` if given.
pub fn node(name: &str, pod_cidr: Option<&str>, ip: &str, record: Option<&str>) -> Value {
    let mut annotations = json!({
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    });
    if let Some(record) = record {
        annotations[super::RECORD_ANNOTATION] = json!(record);
    }
    let mut spec = json!({ "providerID": format!("kind://docker/kind/{name}") });
    if let Some(cidr) = pod_cidr {
        spec["podCIDR"] = json!(cidr);
        spec["podCIDRs"] = json!([cidr]);
    }
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": format!("6f1c2b7e-0000-4000-8000-{:012x}", name.len()),
            "resourceVersion": "0",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
            },
            "annotations": annotations,
        },
        "spec": spec,
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": ip },
                { "type": "Hostname", "address": name },
            ],
            "allocatable": { "cpu": "2", "memory": "8026468Ki", "pods": "110" },
            "capacity": { "cpu": "2", "memory": "8026468Ki", "pods": "110" },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": "2026-12-01T10:05:00Z",
                    "lastTransitionTime": "2026-12-01T10:01:00Z",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "0b0e6f3c-5b5e-4e8e-9a53-2f1e0c1d2e3f",
                "containerRuntimeVersion": "containerd://2.1.1",
                "kernelVersion": "6.12.57+deb13-amd64",
                "kubeProxyVersion": "",
                "kubeletVersion": "v1.33.1",
                "machineID": "3c1d9a7b1f2e4d5c8b9a0f1e2d3c4b5a",
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": "3c1d9a7b-1f2e-4d5c-8b9a-0f1e2d3c4b5a",
            },
        },
    })
}
