//! A pod's volumes as directories of its own, and the env entries that read the API:
//! ConfigMap and Secret keys, the Downward API, projected service-account tokens. As the
//! kubelet, a missing ConfigMap or Secret that is not optional keeps the pod waiting
//! (`CreateContainerConfigError`) and is tried again on the next sync.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, EnvVar, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use super::spec::{PodFacts, Refusal};

/// Why a pod's files or env could not be made yet.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// Retried on the next sync (a missing object, an API error).
    #[error("{0}")]
    Retry(String),
    /// Never runs.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Reads objects of the pod's namespace, once per pod start.
struct Fetch<'a> {
    client: &'a Client,
    ns: String,
}

impl Fetch<'_> {
    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, NotReady> {
        Api::<ConfigMap>::namespaced(self.client.clone(), &self.ns)
            .get_opt(name)
            .await
            .map_err(|e| NotReady::Retry(format!("configmap {:?}: {e}", name)))
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>, NotReady> {
        Api::<Secret>::namespaced(self.client.clone(), &self.ns)
            .get_opt(name)
            .await
            .map_err(|e| NotReady::Retry(format!("secret {:?}: {e}", name)))
    }

    /// A ConfigMap's keys as bytes; `None` when missing.
    async fn config_map_data(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, NotReady> {
        Ok(self.config_map(name).await?.map(|cm| {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            out.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            out
        }))
    }

    async fn secret_data(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, NotReady> {
        Ok(self.secret(name).await?.map(|s| {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            out.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            out
        }))
    }
}

/// Writes every volume of `pod` under `dir/<volume>/`; returns the directory of each.
pub async fn materialize(
    client: &Client,
    facts: &PodFacts<'_>,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, NotReady> {
    let pod = facts.pod;
    let fetch = Fetch {
        client,
        ns: pod.namespace().unwrap_or_default(),
    };
    let mut dirs = BTreeMap::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let vdir = dir.join(&v.name);
        let files = volume_files(&fetch, facts, v).await?;
        write_files(&vdir, &files).map_err(|e| {
            NotReady::Retry(format!("volume {:?} in {}: {e}", v.name, vdir.display()))
        })?;
        dirs.insert(v.name.clone(), vdir);
    }
    Ok(dirs)
}

async fn volume_files(
    fetch: &Fetch<'_>,
    facts: &PodFacts<'_>,
    v: &Volume,
) -> Result<BTreeMap<String, Vec<u8>>, NotReady> {
    if v.empty_dir.is_some() {
        return Ok(BTreeMap::new());
    }
    if let Some(cm) = &v.config_map {
        let data = fetch.config_map_data(&cm.name).await?;
        return keyed(
            data,
            cm.items.as_deref(),
            cm.optional,
            "configmap",
            &cm.name,
        );
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = fetch.secret_data(&name).await?;
        return keyed(data, s.items.as_deref(), s.optional, "secret", &name);
    }
    if let Some(d) = &v.downward_api {
        return downward(facts, d.items.as_deref().unwrap_or_default());
    }
    let Some(p) = &v.projected else {
        return Err(Refusal::new("UnsupportedVolume", format!("volume {:?}", v.name)).into());
    };
    let mut out = BTreeMap::new();
    for src in p.sources.iter().flatten() {
        if let Some(cm) = &src.config_map {
            let data = fetch.config_map_data(&cm.name).await?;
            out.extend(keyed(
                data,
                cm.items.as_deref(),
                cm.optional,
                "configmap",
                &cm.name,
            )?);
        }
        if let Some(s) = &src.secret {
            let data = fetch.secret_data(&s.name).await?;
            out.extend(keyed(
                data,
                s.items.as_deref(),
                s.optional,
                "secret",
                &s.name,
            )?);
        }
        if let Some(d) = &src.downward_api {
            out.extend(downward(facts, d.items.as_deref().unwrap_or_default())?);
        }
        if let Some(t) = &src.service_account_token {
            let token =
                service_account_token(fetch, facts.pod, t.audience.clone(), t.expiration_seconds)
                    .await?;
            out.insert(t.path.clone(), token.into_bytes());
        }
    }
    Ok(out)
}

/// A ConfigMap's or Secret's keys as files (all, or the listed `items` at their paths).
fn keyed(
    data: Option<BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    kind: &str,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, NotReady> {
    let Some(mut data) = data else {
        return if optional == Some(true) {
            Ok(BTreeMap::new())
        } else {
            Err(NotReady::Retry(format!("{kind} {name:?} not found")))
        };
    };
    let Some(items) = items else {
        return Ok(data);
    };
    let mut out = BTreeMap::new();
    for item in items {
        match data.remove(&item.key) {
            Some(v) => {
                out.insert(item.path.clone(), v);
            }
            None if optional == Some(true) => {}
            None => {
                return Err(NotReady::Retry(format!(
                    "{kind} {name:?} has no key {:?}",
                    item.key
                )));
            }
        }
    }
    Ok(out)
}

fn downward(
    facts: &PodFacts<'_>,
    items: &[DownwardAPIVolumeFile],
) -> Result<BTreeMap<String, Vec<u8>>, NotReady> {
    let mut out = BTreeMap::new();
    for item in items {
        let Some(f) = &item.field_ref else {
            return Err(Refusal::new(
                "UnsupportedVolume",
                format!(
                    "downwardAPI item {:?}: only fieldRef is supported",
                    item.path
                ),
            )
            .into());
        };
        out.insert(item.path.clone(), facts.field(&f.field_path)?.into_bytes());
    }
    Ok(out)
}

/// A token of the pod's ServiceAccount bound to the pod, as the kubelet requests it.
async fn service_account_token(
    fetch: &Fetch<'_>,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: Option<i64>,
) -> Result<String, NotReady> {
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration_seconds.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        },
        ..TokenRequest::default()
    };
    let answer: TokenRequest = Api::<ServiceAccount>::namespaced(fetch.client.clone(), &fetch.ns)
        .create_subresource("token", &sa, &PostParams::default(), &request)
        .await
        .map_err(|e| NotReady::Retry(format!("token of serviceaccount {sa:?}: {e}")))?;
    answer
        .status
        .map(|s| s.token)
        .ok_or_else(|| NotReady::Retry(format!("token of serviceaccount {sa:?}: empty answer")))
}

/// Writes `files` (relative paths, no `..`) into `dir`, each through a temporary file
/// and a rename, so a program never reads half a file.
fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (rel, content) in files {
        let rel_path = Path::new(rel);
        let safe = rel_path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("file path {rel:?} must be relative and stay in the volume"),
            ));
        }
        let path = dir.join(rel_path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("meshbench-tmp");
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// Resolves the env entries that read a Secret or ConfigMap key, and `envFrom`.
pub async fn api_env(
    client: &Client,
    pod: &Pod,
    entry: &EnvVar,
) -> Result<Option<String>, NotReady> {
    let fetch = Fetch {
        client,
        ns: pod.namespace().unwrap_or_default(),
    };
    let Some(src) = &entry.value_from else {
        return Ok(None);
    };
    let (data, key, optional, kind, name) = if let Some(s) = &src.secret_key_ref {
        (
            fetch.secret_data(&s.name).await?,
            &s.key,
            s.optional,
            "secret",
            &s.name,
        )
    } else if let Some(c) = &src.config_map_key_ref {
        (
            fetch.config_map_data(&c.name).await?,
            &c.key,
            c.optional,
            "configmap",
            &c.name,
        )
    } else {
        return Ok(None);
    };
    match data.and_then(|mut d| d.remove(key)) {
        Some(v) => String::from_utf8(v)
            .map(Some)
            .map_err(|_| NotReady::Retry(format!("{kind} {name:?} key {key:?} is not UTF-8 text"))),
        None if optional == Some(true) => Ok(None),
        None => Err(NotReady::Retry(format!(
            "env {:?}: {kind} {name:?} has no key {key:?} (or does not exist)",
            entry.name
        ))),
    }
}

/// The `envFrom` entries of a container, resolved (earlier sources lose to later ones
/// and to `env`, which the caller appends after these).
pub async fn env_from(
    client: &Client,
    pod: &Pod,
    sources: &[k8s_openapi::api::core::v1::EnvFromSource],
) -> Result<Vec<(String, String)>, NotReady> {
    let fetch = Fetch {
        client,
        ns: pod.namespace().unwrap_or_default(),
    };
    let mut out = Vec::new();
    for src in sources {
        let prefix = src.prefix.clone().unwrap_or_default();
        let data = if let Some(c) = &src.config_map_ref {
            match fetch.config_map_data(&c.name).await? {
                Some(d) => d,
                None if c.optional == Some(true) => continue,
                None => return Err(NotReady::Retry(format!("configmap {:?} not found", c.name))),
            }
        } else if let Some(s) = &src.secret_ref {
            match fetch.secret_data(&s.name).await? {
                Some(d) => d,
                None if s.optional == Some(true) => continue,
                None => return Err(NotReady::Retry(format!("secret {:?} not found", s.name))),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            if let Ok(v) = String::from_utf8(v) {
                out.push((format!("{prefix}{k}"), v));
            }
        }
    }
    Ok(out)
}
