//! Configuration: one [`Config`] read from TOML, then overridden by
//! `SCALEMESH_<SECTION>__<KEY>` environment variables, then checked.
//!
//! Every key has a default, so `scalemesh serve` runs in an empty directory. A bad
//! value never gets past [`Config::load`]: the error names the key (`builder.runner`)
//! and what is wrong with it. `config.example.toml` at the top of the repository lists
//! the same keys and defaults; a unit test keeps the two in step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "SCALEMESH_";

/// Why a configuration could not be loaded. Every variant names the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub logs: LogsConfig,
    pub builder: BuilderConfig,
    pub proxy: ProxyConfig,
    pub auth: AuthConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Memory for hot files of deployments, in MiB.
    pub cache_mb: u64,
    /// Seconds a client may take to send a request's headers (slowloris guard).
    pub header_timeout_secs: u64,
    /// Seconds a response may make no progress (the client reads nothing) before the
    /// connection is closed.
    pub send_timeout_secs: u64,
    /// Connections served at once; past it new ones get 503 and are closed.
    pub max_connections: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            cache_mb: 64,
            header_timeout_secs: 10,
            send_timeout_secs: 60,
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// One listener for dashboard, API and every deployment.
    pub listen: String,
    /// Deployments are served at `<label>.<base_domain>`; exactly this host is the dashboard.
    pub base_domain: String,
    /// How users reach ScaleMesh; its scheme and port build every URL the API returns.
    pub public_url: String,
    /// Where the embedded defaults keep their files (SQLite database, artifacts).
    pub data_dir: PathBuf,
    /// Seconds a request to the API may take before it gets 408.
    pub request_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            base_domain: "localhost".into(),
            public_url: "http://localhost:8080".into(),
            data_dir: PathBuf::from("./data"),
            request_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://user:pass@host/db`; empty means `sqlite://<data_dir>/scalemesh.db`.
    pub url: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `file://PATH`, `s3://bucket/prefix` or `memory://`; empty means `file://<data_dir>/artifacts`.
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBusKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    pub bus: LogBusKind,
    pub redis_url: String,
    /// Lines of build output kept per deployment; later ones are dropped with a notice.
    pub max_lines: u64,
    /// Bytes of build output kept per deployment, in MiB.
    pub max_mb: u64,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            bus: LogBusKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            max_lines: 100_000,
            max_mb: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    Docker,
    Ecs,
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildNetwork {
    Bridge,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuilderConfig {
    pub runner: RunnerKind,
    /// Empty: `DOCKER_HOST` or the local default socket.
    pub docker_host: String,
    /// Builds at once in this process; 0 runs none here.
    pub concurrency: usize,
    pub timeout_secs: u64,
    pub default_image: String,
    pub memory_mb: u64,
    pub cpus: f64,
    pub network: BuildNetwork,
    /// Permits `file://` URLs and local paths as git URLs (development and tests).
    pub allow_local_git: bool,
    /// Most files one deployment's output may hold.
    pub max_files: u64,
    /// Largest total size of one deployment's output, in MiB.
    pub max_output_mb: u64,
    /// Where workspaces are made; empty: `<data_dir>/builds`.
    pub work_dir: String,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        BuilderConfig {
            runner: RunnerKind::Docker,
            docker_host: String::new(),
            concurrency: 2,
            timeout_secs: 900,
            default_image: "node:22-bookworm-slim".into(),
            memory_mb: 2048,
            cpus: 1.0,
            network: BuildNetwork::Bridge,
            allow_local_git: false,
            max_files: 20_000,
            max_output_mb: 1024,
            work_dir: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The first account can always be created (and is admin); later ones only when true.
    pub allow_signup: bool,
}

impl Config {
    /// Reads `path` (or `./scalemesh.toml` when it exists, or nothing), applies the
    /// environment, and checks the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let default_file = Path::new("scalemesh.toml");
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None if default_file.exists() => Some(default_file.to_path_buf()),
            None => None,
        };
        let text = match &path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?,
            None => String::new(),
        };
        let vars: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::from_sources(&text, path.as_deref(), &vars)
    }

    /// The pure part of [`Config::load`]: file text and environment in, checked config out.
    pub fn from_sources(
        text: &str,
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.unwrap_or(Path::new("<text>")).to_path_buf(),
                    message: e.message().to_string(),
                })?;
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        for (name, raw) in env {
            apply_env(&mut tree, &defaults, name, raw)?;
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(tree))
            .map_err(|e| ConfigError::key(e.path().to_string(), e.inner().message()))?;
        config.resolved()
    }

    /// Fills the derived defaults and checks what serde cannot.
    fn resolved(mut self) -> Result<Config, ConfigError> {
        self.listen_addr()?;
        let base = self
            .server
            .base_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if base.is_empty() || base.split('.').any(|l| !crate::names::is_dns_label(l)) {
            return Err(ConfigError::key(
                "server.base_domain",
                format!("'{}' is not a DNS name", self.server.base_domain),
            ));
        }
        self.server.base_domain = base;
        let public = url::Url::parse(&self.server.public_url)
            .map_err(|e| ConfigError::key("server.public_url", format!("not a URL ({e})")))?;
        if !matches!(public.scheme(), "http" | "https") || public.host_str().is_none() {
            return Err(ConfigError::key(
                "server.public_url",
                "must be an http:// or https:// URL with a host",
            ));
        }
        if self.database.url.is_empty() {
            self.database.url = format!(
                "sqlite://{}",
                self.server.data_dir.join("scalemesh.db").display()
            );
        } else if !["sqlite:", "postgres:", "postgresql:"]
            .iter()
            .any(|s| self.database.url.starts_with(s))
        {
            return Err(ConfigError::key(
                "database.url",
                "must start with sqlite:// or postgres://",
            ));
        }
        if self.storage.url.is_empty() {
            self.storage.url = format!(
                "file://{}",
                absolute(&self.server.data_dir.join("artifacts")).display()
            );
        } else if !["file://", "s3://", "memory://"]
            .iter()
            .any(|s| self.storage.url.starts_with(s))
        {
            return Err(ConfigError::key(
                "storage.url",
                "must start with file://, s3:// or memory://",
            ));
        }
        if self.logs.bus == LogBusKind::Redis && !self.logs.redis_url.starts_with("redis") {
            return Err(ConfigError::key(
                "logs.redis_url",
                "must be a redis:// or rediss:// URL",
            ));
        }
        let b = &self.builder;
        if b.timeout_secs == 0 {
            return Err(ConfigError::key(
                "builder.timeout_secs",
                "must be at least 1",
            ));
        }
        if b.memory_mb < 64 {
            return Err(ConfigError::key("builder.memory_mb", "must be at least 64"));
        }
        if !(b.cpus > 0.0 && b.cpus <= 1024.0) {
            return Err(ConfigError::key("builder.cpus", "must be above 0"));
        }
        if b.default_image.trim().is_empty() {
            return Err(ConfigError::key(
                "builder.default_image",
                "must not be empty",
            ));
        }
        if self.proxy.header_timeout_secs == 0 {
            return Err(ConfigError::key(
                "proxy.header_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.proxy.send_timeout_secs == 0 {
            return Err(ConfigError::key(
                "proxy.send_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.proxy.max_connections == 0 {
            return Err(ConfigError::key(
                "proxy.max_connections",
                "must be at least 1",
            ));
        }
        if self.server.request_timeout_secs == 0 {
            return Err(ConfigError::key(
                "server.request_timeout_secs",
                "must be at least 1",
            ));
        }
        Ok(self)
    }

    /// Where build workspaces are made (`builder.work_dir`, else `<data_dir>/builds`).
    pub fn work_dir(&self) -> PathBuf {
        if self.builder.work_dir.is_empty() {
            absolute(&self.server.data_dir.join("builds"))
        } else {
            PathBuf::from(&self.builder.work_dir)
        }
    }

    /// The parsed `server.listen`.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            ConfigError::key(
                "server.listen",
                format!(
                    "'{}' is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            )
        })
    }
}

/// Puts one `SCALEMESH_SECTION__KEY=value` into the tree, typed like the default of that key.
fn apply_env(
    tree: &mut toml::Table,
    defaults: &toml::Table,
    name: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let rest = &name[ENV_PREFIX.len()..];
    let Some((section, key)) = rest.split_once("__") else {
        return Err(ConfigError::key(
            name,
            "environment overrides take the form SCALEMESH_<SECTION>__<KEY>",
        ));
    };
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    let dotted = format!("{section}.{key}");
    let Some(default) = defaults
        .get(&section)
        .and_then(|s| s.as_table())
        .and_then(|s| s.get(&key))
    else {
        return Err(ConfigError::key(
            format!("{dotted} (from {name})"),
            "unknown key",
        ));
    };
    let bad =
        |what: &str| ConfigError::key(&dotted, format!("'{raw}' is not {what} (from {name})"));
    let value = match default {
        toml::Value::Integer(_) => {
            toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
        }
        toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err(bad("true or false")),
        }),
        _ => toml::Value::String(raw.to_string()),
    };
    let table = tree
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match table.as_table_mut() {
        Some(t) => {
            t.insert(key, value);
            Ok(())
        }
        None => Err(ConfigError::key(
            &dotted,
            "its section is not a table in the file",
        )),
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(text: &str, vars: &[(&str, &str)]) -> String {
        Config::from_sources(text, None, &env(vars))
            .expect_err("config should be rejected")
            .to_string()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_sources("", None, &env(&[])).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.database.url, "sqlite://./data/scalemesh.db");
        assert!(c.storage.url.starts_with("file:///"));
        assert!(c.storage.url.ends_with("/data/artifacts"));
        assert_eq!(c.builder.concurrency, 2);
    }

    #[test]
    fn env_beats_file_beats_default() {
        let file = "[server]\nlisten = \"127.0.0.1:9000\"\nbase_domain = \"file.test\"\n";
        let c = Config::from_sources(
            file,
            None,
            &env(&[("SCALEMESH_SERVER__LISTEN", "127.0.0.1:9100")]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9100", "env wins over the file");
        assert_eq!(
            c.server.base_domain, "file.test",
            "file wins over the default"
        );
        assert_eq!(c.builder.timeout_secs, 900, "default stays");
        let c = Config::from_sources(
            "",
            None,
            &env(&[
                ("SCALEMESH_BUILDER__CONCURRENCY", "0"),
                ("SCALEMESH_AUTH__ALLOW_SIGNUP", "true"),
                ("SCALEMESH_BUILDER__CPUS", "0.5"),
            ]),
        )
        .unwrap();
        assert_eq!(c.builder.concurrency, 0);
        assert!(c.auth.allow_signup);
        assert_eq!(c.builder.cpus, 0.5);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert!(err("[builder]\nrunner = \"podman\"\n", &[]).contains("builder.runner"));
        assert!(err("[server]\nlisten = \"nonsense\"\n", &[]).contains("server.listen"));
        assert!(err("[server]\nlisten_port = 1\n", &[]).contains("listen_port"));
        assert!(err("[nosuch]\nx = 1\n", &[]).contains("nosuch"));
        assert!(
            err("", &[("SCALEMESH_BUILDER__CONCURRENCY", "many")]).contains("builder.concurrency")
        );
        assert!(err("", &[("SCALEMESH_BUILDER__NOPE", "1")]).contains("builder.nope"));
        assert!(err("", &[("SCALEMESH_LOGS__BUS", "kafka")]).contains("logs.bus"));
        assert!(err("[database]\nurl = \"mysql://x\"\n", &[]).contains("database.url"));
        assert!(err("[server]\nbase_domain = \"a b\"\n", &[]).contains("server.base_domain"));
        assert!(err("[builder]\ntimeout_secs = \"x\"\n", &[]).contains("builder.timeout_secs"));
        assert!(err("not toml [", &[]).contains("not valid TOML"));
    }

    #[test]
    fn example_file_lists_every_key_with_its_default() {
        let text = include_str!("../config.example.toml");
        let example: toml::Table = text.parse().unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            for (key, value) in keys.as_table().unwrap() {
                let got = example
                    .get(section)
                    .and_then(|s| s.get(key))
                    .unwrap_or_else(|| panic!("config.example.toml lacks {section}.{key}"));
                if !value.as_str().is_some_and(str::is_empty) {
                    assert_eq!(got, value, "{section}.{key} differs from its default");
                }
            }
        }
        Config::from_sources(text, None, &env(&[])).expect("the example loads");
    }
}
