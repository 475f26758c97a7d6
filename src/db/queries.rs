//! Queries used by more than one module (API, UI, builder).

use chrono::Utc;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

use super::{DeploymentStatus, deployment, env_var, project};
use crate::names::SHORT_ID_LEN;

/// The project `name` if `owner_id` owns it. Another user's project reads as absent.
pub async fn owned_project(
    db: &impl ConnectionTrait,
    owner_id: i32,
    name: &str,
) -> Result<Option<project::Model>, DbErr> {
    project::Entity::find()
        .filter(project::Column::Name.eq(name))
        .filter(project::Column::OwnerId.eq(owner_id))
        .one(db)
        .await
}

/// The deployment `id` and its project, if `owner_id` owns the project.
pub async fn owned_deployment(
    db: &impl ConnectionTrait,
    owner_id: i32,
    id: &str,
) -> Result<Option<(deployment::Model, project::Model)>, DbErr> {
    let Some(d) = deployment::Entity::find_by_id(id.to_string())
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let p = project::Entity::find_by_id(d.project_id)
        .filter(project::Column::OwnerId.eq(owner_id))
        .one(db)
        .await?;
    Ok(p.map(|p| (d, p)))
}

/// The env var keys of a project, sorted.
pub async fn env_keys(db: &impl ConnectionTrait, project_id: i32) -> Result<Vec<String>, DbErr> {
    env_var::Entity::find()
        .select_only()
        .column(env_var::Column::Key)
        .filter(env_var::Column::ProjectId.eq(project_id))
        .order_by_asc(env_var::Column::Key)
        .into_tuple()
        .all(db)
        .await
}

/// Queues a deployment of `git_ref`, pinned to `commit_sha` when given (a redeploy).
/// The short id is random (`a-z0-9`, 8 characters);
/// a clash with an existing one, vanishingly rare, is retried.
pub async fn queue_deployment(
    db: &impl ConnectionTrait,
    project_id: i32,
    git_ref: &str,
    commit_sha: Option<&str>,
) -> Result<deployment::Model, DbErr> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let row = deployment::ActiveModel {
            id: Set(uuid::Uuid::new_v4().to_string()),
            short_id: Set(new_short_id()),
            project_id: Set(project_id),
            git_ref: Set(git_ref.to_string()),
            commit_sha: Set(commit_sha.map(str::to_string)),
            commit_message: Set(None),
            status: Set(DeploymentStatus::Queued.as_str().to_string()),
            error: Set(None),
            created_at: Set(Utc::now()),
            started_at: Set(None),
            finished_at: Set(None),
            claimed_by: Set(None),
            lease_until: Set(None),
            file_count: Set(None),
            total_bytes: Set(None),
        };
        match row.insert(db).await {
            Err(e)
                if attempt < 5
                    && matches!(
                        e.sql_err(),
                        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                    ) =>
            {
                continue;
            }
            Ok(new) => {
                supersede(db, &new).await?;
                return Ok(new);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Cancels the queued deployments of the same project and ref that `newer` replaces.
async fn supersede(db: &impl ConnectionTrait, newer: &deployment::Model) -> Result<u64, DbErr> {
    let older = Condition::all()
        .add(deployment::Column::ProjectId.eq(newer.project_id))
        .add(deployment::Column::GitRef.eq(&newer.git_ref))
        .add(deployment::Column::Status.eq(DeploymentStatus::Queued.as_str()))
        .add(deployment::Column::Id.ne(&newer.id))
        .add(deployment::Column::CreatedAt.lte(newer.created_at));
    mark_canceled(db, older, Some(format!("superseded by {}", newer.short_id))).await
}

/// Ends every deployment matching `which` as `canceled`, now, with `error`.
async fn mark_canceled(
    db: &impl ConnectionTrait,
    which: Condition,
    error: Option<String>,
) -> Result<u64, DbErr> {
    let res = deployment::Entity::update_many()
        .col_expr(
            deployment::Column::Status,
            Expr::value(DeploymentStatus::Canceled.as_str()),
        )
        .col_expr(deployment::Column::FinishedAt, Expr::value(Utc::now()))
        .col_expr(deployment::Column::Error, Expr::value(error))
        .filter(which)
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

fn new_short_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..SHORT_ID_LEN)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Ends a deployment `canceled` if it has not finished; `false` when it had. A worker
/// building it sees the status change and stops its container.
pub async fn cancel_deployment(
    db: &impl ConnectionTrait,
    id: &str,
    reason: Option<&str>,
) -> Result<bool, DbErr> {
    let unfinished =
        Condition::all()
            .add(deployment::Column::Id.eq(id))
            .add(deployment::Column::Status.is_in([
                DeploymentStatus::Queued.as_str(),
                DeploymentStatus::Building.as_str(),
            ]));
    Ok(mark_canceled(db, unfinished, reason.map(str::to_string)).await? > 0)
}
