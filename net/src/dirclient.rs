//! HTTP client for the directory authority's API.
//!
//! Plain HTTP is enough: every document is signed, and what it carries is public.

use crate::Error;
use protocol::topology::Signed;
use std::time::Duration;

/// Talks to one directory authority.
#[derive(Clone, Debug)]
pub struct DirectoryClient {
    base: String,
    http: reqwest::Client,
}

impl DirectoryClient {
    /// A client for the authority at `base` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .map_err(|e| Error::Connect(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// Registers a signed node descriptor. The error carries the authority's reason.
    pub async fn register(&self, descriptor: &Signed) -> Result<(), Error> {
        let resp = self
            .http
            .post(format!("{}/v1/descriptors", self.base))
            .json(descriptor)
            .send()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(Error::Connect(format!(
            "directory refused descriptor ({status}): {body}"
        )))
    }

    /// Fetches the signed topology of the current epoch (`next = false`) or the next one.
    pub async fn topology(&self, next: bool) -> Result<Signed, Error> {
        let path = if next {
            "/v1/topology/next"
        } else {
            "/v1/topology"
        };
        let resp = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(Error::Connect(format!(
                "directory answered {}",
                resp.status()
            )));
        }
        resp.json().await.map_err(|e| Error::Connect(e.to_string()))
    }

    /// The authority's public key, for testnets that do not pin it in advance.
    pub async fn authority_key(&self) -> Result<[u8; 32], Error> {
        let text = self
            .http
            .get(format!("{}/v1/authority", self.base))
            .send()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?
            .text()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out).map_err(|e| Error::Connect(e.to_string()))?;
        Ok(out)
    }
}
