//! The daemon's [`SecretStore`]s: a directory (the embedded default) and
//! HashiCorp Vault's KV v2 API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use solstice_core::secrets::{SecretError, SecretStore, is_secret_name, scope_parts};
use solstice_forge::Secret;

/// Largest secret value read.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Secrets in files: `DIR/OWNER/NAME/SECRET` holds the value of `SECRET`
/// for the repository `OWNER/NAME` (one trailing newline is dropped).
#[derive(Debug)]
pub struct FileSecretStore {
    root: PathBuf,
}

impl FileSecretStore {
    /// A store rooted at `root`.
    pub fn new(root: PathBuf) -> FileSecretStore {
        FileSecretStore { root }
    }
}

#[async_trait]
impl SecretStore for FileSecretStore {
    async fn get(
        &self,
        scope: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, SecretError> {
        let (owner, repo) = scope_parts(scope)?;
        let dir = self.root.join(owner).join(repo);
        let mut out = BTreeMap::new();
        for name in names.iter().filter(|n| is_secret_name(n)) {
            let path = dir.join(name);
            let read = async {
                use tokio::io::AsyncReadExt;
                let file = tokio::fs::File::open(&path).await?;
                let mut bytes = Vec::new();
                file.take(MAX_SECRET_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .await?;
                Ok::<_, std::io::Error>(bytes)
            };
            match read.await {
                Ok(bytes) if bytes.len() as u64 > MAX_SECRET_BYTES => {
                    return Err(SecretError::Backend(
                        format!("{} is larger than {MAX_SECRET_BYTES} bytes", path.display())
                            .into(),
                    ));
                }
                Ok(bytes) => {
                    let text = String::from_utf8(bytes).map_err(|_| {
                        SecretError::Backend(format!("{} is not UTF-8", path.display()).into())
                    })?;
                    let value = text.strip_suffix('\n').unwrap_or(&text);
                    out.insert(
                        name.clone(),
                        value.strip_suffix('\r').unwrap_or(value).to_string(),
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SecretError::Backend(Box::new(e))),
            }
        }
        Ok(out)
    }
}

/// Secrets in Vault's KV v2 engine: the secret at
/// `MOUNT/data/PREFIX/OWNER/NAME` holds one key per secret name. Token
/// authentication (`X-Vault-Token`).
#[derive(Debug)]
pub struct VaultSecretStore {
    addr: String,
    mount: String,
    prefix: String,
    token: Secret,
    client: reqwest::Client,
}

impl VaultSecretStore {
    /// A store on the Vault at `addr`.
    pub fn new(addr: &str, mount: &str, prefix: &str, token: Secret) -> VaultSecretStore {
        VaultSecretStore {
            addr: addr.trim_end_matches('/').to_string(),
            mount: mount.trim_matches('/').to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            token,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait]
impl SecretStore for VaultSecretStore {
    async fn get(
        &self,
        scope: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, SecretError> {
        let (owner, repo) = scope_parts(scope)?;
        let path = if self.prefix.is_empty() {
            format!("{owner}/{repo}")
        } else {
            format!("{}/{owner}/{repo}", self.prefix)
        };
        let url = format!("{}/v1/{}/data/{path}", self.addr, self.mount);
        let backend = |e: String| SecretError::Backend(e.into());
        let resp = self
            .client
            .get(&url)
            .header("x-vault-token", self.token.expose())
            .send()
            .await
            .map_err(|e| SecretError::Backend(Box::new(e)))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(BTreeMap::new());
        }
        if !resp.status().is_success() {
            return Err(backend(format!(
                "Vault answered {} for {}",
                resp.status(),
                path
            )));
        }
        if resp.content_length().is_some_and(|n| n > 1 << 20) {
            return Err(backend("Vault's answer is larger than 1 MiB".into()));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| SecretError::Backend(Box::new(e)))?;
        let data = body
            .get("data")
            .and_then(|d| d.get("data"))
            .and_then(|d| d.as_object())
            .ok_or_else(|| {
                backend(
                    "Vault's answer has no data.data object (is the mount KV version 2?)".into(),
                )
            })?;
        Ok(names
            .iter()
            .filter_map(|n| {
                data.get(n)
                    .and_then(|v| v.as_str())
                    .map(|v| (n.clone(), v.to_string()))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_store_conforms() {
        let dir = tempfile::tempdir().expect("dir");
        let put = |scope: &str, name: &str, value: &str| {
            let d = dir.path().join(scope);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join(name), format!("{value}\n")).expect("write");
        };
        put("octo/hello", "API_KEY", "value-of-api-key");
        put("octo/hello", "DEPLOY_TOKEN", "value-of-deploy-token");
        put("octo/other", "API_KEY", "another-api-key");
        // A file beside the scopes that a traversal would reach.
        std::fs::write(dir.path().join("API_KEY"), "root-level-leak").expect("write");
        let store = FileSecretStore::new(dir.path().to_path_buf());
        solstice_core::testing::secrets::run_all(&store).await;
        let odd = store
            .get("octo/hello", &["../../API_KEY".to_string()])
            .await
            .expect("get");
        assert!(
            odd.is_empty(),
            "a name that is not a secret name is not a path"
        );
    }
}

#[cfg(test)]
mod vault_tests {
    use super::*;
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    /// Plays Vault's KV v2 read (`GET /v1/:mount/data/*path`).
    async fn fake_vault() -> (String, tokio::task::JoinHandle<()>) {
        async fn read(
            Path((mount, path)): Path<(String, String)>,
            headers: HeaderMap,
        ) -> axum::response::Response {
            if headers.get("x-vault-token").and_then(|v| v.to_str().ok()) != Some("vault-token") {
                return (
                    StatusCode::FORBIDDEN,
                    axum::Json(serde_json::json!({"errors": ["permission denied"]})),
                )
                    .into_response();
            }
            let data = match (mount.as_str(), path.as_str()) {
                ("secret", "solstice/octo/hello") => {
                    serde_json::json!({"API_KEY": "value-of-api-key", "DEPLOY_TOKEN": "value-of-deploy-token"})
                }
                ("secret", "solstice/octo/other") => {
                    serde_json::json!({"API_KEY": "another-api-key"})
                }
                _ => {
                    return (
                        StatusCode::NOT_FOUND,
                        axum::Json(serde_json::json!({"errors": []})),
                    )
                        .into_response();
                }
            };
            axum::Json(serde_json::json!({
                "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
                "data": {"data": data, "metadata": {"version": 1, "destroyed": false}},
            }))
            .into_response()
        }
        let app = axum::Router::new().route("/v1/{mount}/data/{*path}", axum::routing::get(read));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, task)
    }

    #[tokio::test]
    async fn the_vault_store_conforms() {
        let (url, task) = fake_vault().await;
        let store = VaultSecretStore::new(&url, "secret", "solstice", Secret::new("vault-token"));
        solstice_core::testing::secrets::run_all(&store).await;
        task.abort();
    }

    #[tokio::test]
    async fn a_refused_token_is_an_error_not_an_empty_store() {
        let (url, task) = fake_vault().await;
        let store = VaultSecretStore::new(&url, "secret", "solstice", Secret::new("wrong"));
        let err = store
            .get("octo/hello", &["API_KEY".into()])
            .await
            .expect_err("refused");
        assert!(matches!(err, SecretError::Backend(_)), "{err}");
        assert!(
            !format!("{store:?}").contains("wrong"),
            "the token must not show in Debug"
        );
        task.abort();
    }
}
