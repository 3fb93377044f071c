//! An in-memory Kubernetes API server for controller tests that run longer than a scripted
//! exchange can follow (a benchmark from start to report).
//!
//! It keeps objects by (group, resource, namespace, name) and answers what the controllers
//! send: get, list with equality label selectors, create, delete, server-side apply (as a
//! deep merge, which is what apply does for objects with one field manager), JSON merge
//! patch, replace with resourceVersion checks, and the `/status` subresource. It stamps uid, resourceVersion, generation (on
//! spec changes) and creationTimestamp. Every request is checked against the operator's
//! RBAC table; requests it does not grant are collected in [`FakeApi::forbidden`].

// Not every test uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use meshbench_operator::k8s::rbac;
use serde_json::{Value, json};

/// (group, resource, namespace, name)
type Key = (String, String, String, String);

/// The fake server.
#[derive(Default)]
pub struct FakeApi {
    objects: Mutex<BTreeMap<Key, Value>>,
    version: AtomicU64,
    /// Requests the RBAC table does not grant.
    pub forbidden: Mutex<Vec<String>>,
    /// Every request, as `METHOD path`.
    pub log: Mutex<Vec<String>>,
}

struct Parsed {
    group: String,
    version: String,
    resource: String,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse(path: &str) -> Option<Parsed> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] => (ns.to_string(), rest),
        other => (String::new(), other),
    };
    let (resource, name, sub) = match rest {
        [r] => (r.to_string(), None, None),
        [r, n] => (r.to_string(), Some(n.to_string()), None),
        [r, n, s] => (r.to_string(), Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Parsed {
        group,
        version,
        resource,
        namespace,
        name,
        sub,
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'%' if i + 2 < b.len() => {
                        let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("20");
                        out.push(u8::from_str_radix(hex, 16).unwrap_or(b' '));
                        i += 3;
                    }
                    b'+' => {
                        out.push(b' ');
                        i += 1;
                    }
                    c => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    })
}

/// Equality-based selectors (`a=b,c=d`, `a!=b`) and `k notin (x,y)`, as the operator
/// sends them.
fn matches_selector(labels: &Value, selector: &str) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        terms.push(cur);
    }
    terms.iter().all(|t| {
        let t = t.trim();
        if let Some((k, set)) = t.split_once(" notin ") {
            let set: Vec<&str> = set
                .trim_matches(|c| c == '(' || c == ')')
                .split(',')
                .map(str::trim)
                .collect();
            return label(k.trim()).is_none_or(|v| !set.contains(&v.as_str()));
        }
        if let Some((k, v)) = t.split_once("!=") {
            return label(k) != Some(v.to_string());
        }
        if let Some((k, v)) = t.split_once('=') {
            return label(k.trim_end_matches('=')) == Some(v.trim_start_matches('=').to_string());
        }
        label(t).is_some()
    })
}

/// Deep merge of `patch` into `target` (JSON merge patch: null deletes).
pub fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "configmaps" => "ConfigMap",
        "services" => "Service",
        "secrets" => "Secret",
        "deployments" => "Deployment",
        "horizontalpodautoscalers" => "HorizontalPodAutoscaler",
        "jobs" => "Job",
        "events" => "Event",
        "servicemeshes" => "ServiceMesh",
        "benchmarks" => "Benchmark",
        "leases" => "Lease",
        _ => "Unknown",
    }
}

fn status_body(code: u16, reason: &str, message: String) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
}

impl FakeApi {
    /// A new, empty server.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A client talking to this server, with `namespace` as its default.
    pub fn client(self: &Arc<Self>, namespace: &str) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        Client::new(service, namespace)
    }

    fn next_version(&self) -> String {
        (self.version.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    /// Stores `obj` as if created by a user (`kubectl apply`), stamping its metadata.
    pub fn create(&self, group: &str, resource: &str, obj: Value) -> Value {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = (group.to_string(), resource.to_string(), ns, name);
        let mut objects = self.objects.lock().unwrap();
        let stored = self.stamp(None, obj);
        objects.insert(key, stored.clone());
        stored
    }

    /// Replaces the spec of a stored object (a user's `kubectl apply` of a change).
    pub fn update_spec(&self, group: &str, resource: &str, ns: &str, name: &str, spec: Value) {
        let key = (group.into(), resource.into(), ns.into(), name.into());
        let mut objects = self.objects.lock().unwrap();
        let old = objects.get(&key).cloned().expect("object to update");
        let mut new = old.clone();
        new["spec"] = spec;
        let stored = self.stamp(Some(&old), new);
        objects.insert(key, stored);
    }

    /// Sets the status of a stored object (what another controller would write).
    pub fn set_status(&self, group: &str, resource: &str, ns: &str, name: &str, status: Value) {
        let key = (group.into(), resource.into(), ns.into(), name.into());
        let mut objects = self.objects.lock().unwrap();
        if let Some(o) = objects.get_mut(&key) {
            o["status"] = status;
            o["metadata"]["resourceVersion"] = json!(self.next_version());
        }
    }

    /// One stored object.
    pub fn get(&self, group: &str, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let key = (group.into(), resource.into(), ns.into(), name.into());
        self.objects.lock().unwrap().get(&key).cloned()
    }

    /// Every stored object of a resource, in name order.
    pub fn all(&self, group: &str, resource: &str) -> Vec<Value> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((g, r, _, _), _)| g == group && r == resource)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn stamp(&self, old: Option<&Value>, mut obj: Value) -> Value {
        let version = self.next_version();
        let meta = &mut obj["metadata"];
        match old {
            None => {
                meta["uid"] = json!(format!("uid-{version}"));
                meta["generation"] = json!(1);
                meta["creationTimestamp"] = json!("2026-11-30T00:00:00Z");
            }
            Some(old) => {
                for k in ["uid", "creationTimestamp"] {
                    meta[k] = old["metadata"][k].clone();
                }
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = old.get("spec") != obj.get("spec");
                obj["metadata"]["generation"] = json!(if changed { g + 1 } else { g });
            }
        }
        obj["metadata"]["resourceVersion"] = json!(version);
        obj
    }

    async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body.collect_bytes().await.unwrap_or_default();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        let method = parts.method.as_str().to_string();
        self.log.lock().unwrap().push(format!("{method} {path}"));
        match rbac::request_attributes(&method, &path, &query) {
            Some((g, r, v)) if rbac::allows(&g, &r, &v) => {}
            other => self
                .forbidden
                .lock()
                .unwrap()
                .push(format!("{method} {path}?{query} needs {other:?}")),
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let (code, value) = self.answer(&method, &path, &query, &content_type, &bytes);
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&value).unwrap()))
            .unwrap()
    }

    fn answer(
        &self,
        method: &str,
        path: &str,
        query: &str,
        content_type: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let Some(p) = parse(path) else {
            return (
                StatusCode::NOT_FOUND,
                status_body(404, "NotFound", format!("no route {path}")),
            );
        };
        let not_found = |name: &str| {
            (
                StatusCode::NOT_FOUND,
                status_body(
                    404,
                    "NotFound",
                    format!("{} {name:?} not found", p.resource),
                ),
            )
        };
        let mut objects = self.objects.lock().unwrap();
        let key = |name: &str| {
            (
                p.group.clone(),
                p.resource.clone(),
                p.namespace.clone(),
                name.to_string(),
            )
        };
        let api_version = if p.group.is_empty() {
            p.version.clone()
        } else {
            format!("{}/{}", p.group, p.version)
        };
        match (method, &p.name) {
            ("GET", Some(name)) => match objects.get(&key(name)) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => not_found(name),
            },
            ("GET", None) => {
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|((g, r, ns, _), _)| {
                        *g == p.group
                            && *r == p.resource
                            && (p.namespace.is_empty() || *ns == p.namespace)
                    })
                    .map(|(_, v)| v)
                    .filter(|v| {
                        selector.is_empty() || matches_selector(&v["metadata"]["labels"], &selector)
                    })
                    .cloned()
                    .collect();
                (
                    StatusCode::OK,
                    json!({
                        "apiVersion": api_version,
                        "kind": format!("{}List", kind_of(&p.resource)),
                        "metadata": {"resourceVersion": self.version.load(Ordering::Relaxed).to_string()},
                        "items": items,
                    }),
                )
            }
            ("POST", _) => {
                let mut obj: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let name = match obj["metadata"]["name"].as_str() {
                    Some(n) => n.to_string(),
                    None => {
                        // generateName (Events).
                        let n = format!(
                            "{}{}",
                            obj["metadata"]["generateName"].as_str().unwrap_or("obj-"),
                            self.version.load(Ordering::Relaxed)
                        );
                        obj["metadata"]["name"] = json!(n);
                        n
                    }
                };
                if objects.contains_key(&key(&name)) {
                    return (
                        StatusCode::CONFLICT,
                        status_body(409, "AlreadyExists", format!("{name} already exists")),
                    );
                }
                obj["metadata"]["namespace"] = json!(p.namespace);
                let stored = self.stamp(None, obj);
                objects.insert(key(&name), stored.clone());
                (StatusCode::CREATED, stored)
            }
            ("PATCH", Some(name)) => {
                let patch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let existing = objects.get(&key(name)).cloned();
                let apply = content_type.starts_with("application/apply-patch");
                let status_only = p.sub.as_deref() == Some("status");
                let mut new = match (&existing, apply) {
                    (Some(o), _) => o.clone(),
                    (None, true) if !status_only => json!({}),
                    _ => return not_found(name),
                };
                if status_only {
                    if let Some(s) = patch.get("status") {
                        // Apply of a whole status replaces what this manager owned: here,
                        // all of it.
                        new["status"] = s.clone();
                    }
                } else {
                    merge(&mut new, &patch);
                    new["metadata"]["namespace"] = json!(p.namespace);
                    new["metadata"]["name"] = json!(name);
                }
                let stored = self.stamp(existing.as_ref(), new);
                objects.insert(key(name), stored.clone());
                (StatusCode::OK, stored)
            }
            ("PUT", Some(name)) => {
                // Replace with optimistic concurrency: the resourceVersion read must still
                // be current.
                let obj: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                let Some(existing) = objects.get(&key(name)).cloned() else {
                    return not_found(name);
                };
                let sent = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if sent
                    != existing["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or("")
                {
                    return (
                        StatusCode::CONFLICT,
                        status_body(409, "Conflict", format!("{name} was modified")),
                    );
                }
                let stored = self.stamp(Some(&existing), obj);
                objects.insert(key(name), stored.clone());
                (StatusCode::OK, stored)
            }
            ("DELETE", Some(name)) => match objects.remove(&key(name)) {
                Some(o) => (StatusCode::OK, o),
                None => not_found(name),
            },
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status_body(405, "MethodNotAllowed", format!("{method} {path}")),
            ),
        }
    }
}
