//! The build queue, which is the deployments table itself.
//!
//! A worker claims the oldest `queued` deployment whose project has nothing building,
//! in one statement, and holds it with a lease it renews. On PostgreSQL the claim uses
//! `FOR UPDATE SKIP LOCKED` so workers in many processes never wait on each other; on
//! SQLite the statement is atomic because writes are serialised. A unique partial
//! index (`one building per project`) makes the database refuse a second concurrent
//! build of one project whatever the race.
//!
//! Every transition out of `building` is conditional on the row still being
//! `building` and claimed by the same worker, so a canceled or reaped deployment is
//! never overwritten by a worker that did not notice in time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    Statement,
};

use crate::db::{DeploymentStatus, deployment};

/// How long a claim holds without renewal.
pub const LEASE: Duration = Duration::from_secs(30);

fn lease_end(now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(LEASE).expect("small duration")
}

/// Claims the next deployment for `worker`, or `None` when nothing can start now.
pub async fn claim(
    db: &impl ConnectionTrait,
    worker: &str,
) -> Result<Option<deployment::Model>, DbErr> {
    let backend = db.get_database_backend();
    let (lock, p) = match backend {
        DatabaseBackend::Postgres => ("FOR UPDATE SKIP LOCKED", ["$1", "$2", "$3"]),
        _ => ("", ["?", "?", "?"]),
    };
    let sql = format!(
        "UPDATE deployments SET status = 'building', claimed_by = {}, lease_until = {}, started_at = {} \
         WHERE id = (SELECT d.id FROM deployments d WHERE d.status = 'queued' \
           AND NOT EXISTS (SELECT 1 FROM deployments b WHERE b.project_id = d.project_id AND b.status = 'building') \
           ORDER BY d.created_at, d.id LIMIT 1 {lock}) \
         AND status = 'queued' RETURNING *",
        p[0], p[1], p[2]
    );
    let now = Utc::now();
    let stmt = Statement::from_sql_and_values(
        backend,
        sql,
        [worker.into(), lease_end(now).into(), now.into()],
    );
    match deployment::Entity::find().from_raw_sql(stmt).one(db).await {
        Ok(found) => Ok(found),
        // Another worker won the same project in the same instant: try again later.
        Err(e)
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn ours(id: &str, worker: &str) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(deployment::Column::Id.eq(id))
        .add(deployment::Column::ClaimedBy.eq(worker))
        .add(deployment::Column::Status.eq(DeploymentStatus::Building.as_str()))
}

/// Gives up this worker's lease on a deployment whatever its status now (canceled
/// while it ran): with the lease gone, log streams know every line is stored.
pub async fn release(db: &impl ConnectionTrait, id: &str, worker: &str) -> Result<(), DbErr> {
    deployment::Entity::update_many()
        .col_expr(
            deployment::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(deployment::Column::Id.eq(id))
        .filter(deployment::Column::ClaimedBy.eq(worker))
        .exec(db)
        .await?;
    Ok(())
}

/// Extends the lease; `false` when the deployment is no longer ours to build
/// (canceled, or reaped after a lease lapsed).
pub async fn renew(db: &impl ConnectionTrait, id: &str, worker: &str) -> Result<bool, DbErr> {
    let res = deployment::Entity::update_many()
        .col_expr(
            deployment::Column::LeaseUntil,
            Expr::value(lease_end(Utc::now())),
        )
        .filter(ours(id, worker))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Records the commit that is being built.
pub async fn set_commit(
    db: &impl ConnectionTrait,
    id: &str,
    sha: &str,
    message: &str,
) -> Result<(), DbErr> {
    deployment::Entity::update_many()
        .col_expr(deployment::Column::CommitSha, Expr::value(sha))
        .col_expr(deployment::Column::CommitMessage, Expr::value(message))
        .filter(deployment::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// How a build ended, for [`finish`].
pub struct Finish<'a> {
    pub status: DeploymentStatus,
    pub error: Option<&'a str>,
    pub files: Option<u64>,
    pub bytes: Option<u64>,
}

/// Ends a deployment this worker holds; `false` when it was no longer ours.
pub async fn finish(
    db: &impl ConnectionTrait,
    id: &str,
    worker: &str,
    end: Finish<'_>,
) -> Result<bool, DbErr> {
    let res = deployment::Entity::update_many()
        .col_expr(deployment::Column::Status, Expr::value(end.status.as_str()))
        .col_expr(
            deployment::Column::Error,
            Expr::value(end.error.map(str::to_string)),
        )
        .col_expr(deployment::Column::FinishedAt, Expr::value(Utc::now()))
        .col_expr(
            deployment::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(
            deployment::Column::FileCount,
            Expr::value(end.files.map(|n| n as i64)),
        )
        .col_expr(
            deployment::Column::TotalBytes,
            Expr::value(end.bytes.map(|n| n as i64)),
        )
        .filter(ours(id, worker))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Deployments left `building` by a worker that is gone: its lease lapsed, or (at start)
/// it belonged to an earlier run of this node (`node_prefix`).
pub async fn abandoned(
    db: &impl ConnectionTrait,
    node_prefix: Option<&str>,
) -> Result<Vec<deployment::Model>, DbErr> {
    let mut gone = sea_orm::Condition::any().add(deployment::Column::LeaseUntil.lt(Utc::now()));
    if let Some(prefix) = node_prefix {
        gone = gone.add(deployment::Column::ClaimedBy.starts_with(prefix));
    }
    deployment::Entity::find()
        .filter(deployment::Column::Status.eq(DeploymentStatus::Building.as_str()))
        .filter(gone)
        .all(db)
        .await
}

/// Fails an abandoned deployment, if it is still as it was found.
pub async fn fail_abandoned(
    db: &impl ConnectionTrait,
    d: &deployment::Model,
    message: &str,
) -> Result<bool, DbErr> {
    let mut cond = sea_orm::Condition::all()
        .add(deployment::Column::Id.eq(&d.id))
        .add(deployment::Column::Status.eq(DeploymentStatus::Building.as_str()));
    if let Some(by) = &d.claimed_by {
        cond = cond.add(deployment::Column::ClaimedBy.eq(by));
    }
    let res = deployment::Entity::update_many()
        .col_expr(
            deployment::Column::Status,
            Expr::value(DeploymentStatus::Failed.as_str()),
        )
        .col_expr(deployment::Column::Error, Expr::value(message))
        .col_expr(deployment::Column::FinishedAt, Expr::value(Utc::now()))
        .col_expr(
            deployment::Column::LeaseUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(cond)
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// 1 for the next deployment to be claimed, 2 for the one after it, …
pub async fn position(db: &impl ConnectionTrait, d: &deployment::Model) -> Result<u64, DbErr> {
    let ahead = deployment::Entity::find()
        .filter(deployment::Column::Status.eq(DeploymentStatus::Queued.as_str()))
        .filter(
            sea_orm::Condition::any()
                .add(deployment::Column::CreatedAt.lt(d.created_at))
                .add(
                    sea_orm::Condition::all()
                        .add(deployment::Column::CreatedAt.eq(d.created_at))
                        .add(deployment::Column::Id.lt(&d.id)),
                ),
        )
        .count(db)
        .await?;
    Ok(ahead + 1)
}
