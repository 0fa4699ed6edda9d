//! Which backend holds attachments: S3 when `INDABA_S3_BUCKET` is set, else the directory
//! `INDABA_STORAGE_DIR` (or the caller's default: the single-node program passes
//! `<data dir>/uploads`), else none (attachments answer `unsupported`).

use std::path::{Path, PathBuf};

use bus::config::{flag, required, ConfigError};
use proto::env;

/// The attachment backend's configuration.
#[derive(Debug, Clone)]
pub enum StorageSettings {
    None,
    Local { dir: PathBuf },
    S3(S3Settings),
}

/// An S3-compatible bucket.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub endpoint: String,
    pub public_endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl StorageSettings {
    /// Reads the settings through `get`; `default_dir` is the directory used when no
    /// backend is named (`None`: no attachments).
    pub fn from_source(
        get: &impl Fn(&str) -> Option<String>,
        default_dir: Option<&Path>,
    ) -> Result<StorageSettings, ConfigError> {
        let set = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(bucket) = set(env::S3_BUCKET) {
            let region = set(env::S3_REGION).unwrap_or_else(|| "us-east-1".into());
            let custom = set(env::S3_ENDPOINT);
            let endpoint = custom
                .clone()
                .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
            let secret_access_key = required(get, env::S3_SECRET_ACCESS_KEY)?;
            if env::is_placeholder(&secret_access_key) {
                return Err(ConfigError(format!(
                    "{} is the example placeholder; set the real secret",
                    env::S3_SECRET_ACCESS_KEY
                )));
            }
            return Ok(StorageSettings::S3(S3Settings {
                bucket,
                endpoint,
                public_endpoint: set(env::S3_PUBLIC_ENDPOINT),
                path_style: flag(get, env::S3_PATH_STYLE, custom.is_some())?,
                region,
                access_key_id: required(get, env::S3_ACCESS_KEY_ID)?,
                secret_access_key,
            }));
        }
        Ok(match set(env::STORAGE_DIR).map(PathBuf::from) {
            Some(dir) => StorageSettings::Local { dir },
            None => match default_dir {
                Some(dir) => StorageSettings::Local {
                    dir: dir.to_owned(),
                },
                None => StorageSettings::None,
            },
        })
    }
}
