//! The database: connecting (SQLite by default, PostgreSQL by URL), migrating, the
//! entities, and the few queries more than one module needs.
//!
//! The database is the source of truth for everything but artifacts: the build queue,
//! the logs and the domains table all live here, so any process holding the same URL
//! sees the same world.

pub mod entities;

use std::str::FromStr;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use sea_orm_migration::MigratorTrait;

pub use entities::*;

/// Opens the database named by `url` and applies every pending migration.
///
/// For SQLite the file (and its directory) is created when missing, with WAL and a busy
/// timeout so readers never block the writer and short write bursts queue instead of
/// failing.
pub async fn connect_and_migrate(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url).await?;
    scalemesh_migrations::Migrator::up(&db, None).await?;
    Ok(db)
}

/// Opens the database without migrating it.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10));
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.split('?').next().unwrap_or_default();
        if let Some(dir) = std::path::Path::new(path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", dir.display())))?;
        }
        opts.max_connections(8).map_sqlx_sqlite_opts(|o| {
            o.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    } else {
        opts.max_connections(16);
    }
    Database::connect(opts).await
}

/// Where a deployment is in its life. Stored as its lowercase name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    Queued,
    Building,
    Ready,
    Failed,
    Canceled,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Queued => "queued",
            DeploymentStatus::Building => "building",
            DeploymentStatus::Ready => "ready",
            DeploymentStatus::Failed => "failed",
            DeploymentStatus::Canceled => "canceled",
        }
    }

    /// Ready, failed and canceled deployments never change status again.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            DeploymentStatus::Ready | DeploymentStatus::Failed | DeploymentStatus::Canceled
        )
    }
}

impl FromStr for DeploymentStatus {
    type Err = DbErr;

    fn from_str(s: &str) -> Result<Self, DbErr> {
        Ok(match s {
            "queued" => DeploymentStatus::Queued,
            "building" => DeploymentStatus::Building,
            "ready" => DeploymentStatus::Ready,
            "failed" => DeploymentStatus::Failed,
            "canceled" => DeploymentStatus::Canceled,
            other => return Err(DbErr::Custom(format!("unknown deployment status {other}"))),
        })
    }
}

impl deployment::Model {
    /// The stored status; an unknown one (a newer schema) reads as failed.
    pub fn status(&self) -> DeploymentStatus {
        self.status.parse().unwrap_or(DeploymentStatus::Failed)
    }
}

pub mod domains;
pub mod queries;
