//! Writes to the domains table, the proxy's only source of truth: which hostname label
//! serves which deployment. Each function is one transaction, so a reader sees the old
//! route or the new one, never neither.

use chrono::Utc;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};

use super::{deployment, domain, project};

/// What a hostname is to its project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainKind {
    /// `<project>-<short_id>`: one deployment, forever.
    Deployment,
    /// `<project>`: moves on promote and rollback.
    Production,
    /// `<project>-git-<branch>`: the latest ready deployment of a branch.
    Branch,
}

impl DomainKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainKind::Deployment => "deployment",
            DomainKind::Production => "production",
            DomainKind::Branch => "branch",
        }
    }
}

/// Points `hostname` at `deployment_id`, unless another project holds it (then `false`).
pub async fn point(
    db: &impl ConnectionTrait,
    hostname: &str,
    project_id: i32,
    deployment_id: &str,
    kind: DomainKind,
) -> Result<bool, DbErr> {
    if let Some(existing) = domain::Entity::find_by_id(hostname.to_string())
        .one(db)
        .await?
        && existing.project_id != project_id
    {
        return Ok(false);
    }
    domain::Entity::insert(domain::ActiveModel {
        hostname: Set(hostname.to_string()),
        project_id: Set(project_id),
        deployment_id: Set(deployment_id.to_string()),
        kind: Set(kind.as_str().to_string()),
        created_at: Set(Utc::now()),
    })
    .on_conflict(
        OnConflict::column(domain::Column::Hostname)
            .update_columns([domain::Column::DeploymentId, domain::Column::Kind])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(true)
}

/// Makes `d` the production deployment of `p`: the `<project>` hostname and the
/// project's `production_deployment_id` move together.
pub async fn set_production(
    db: &DatabaseConnection,
    p: &project::Model,
    d: &deployment::Model,
) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    move_production(&txn, p, d).await?;
    txn.commit().await
}

async fn move_production(
    db: &impl ConnectionTrait,
    p: &project::Model,
    d: &deployment::Model,
) -> Result<(), DbErr> {
    point(db, &p.name, p.id, &d.id, DomainKind::Production).await?;
    project::Entity::update_many()
        .col_expr(
            project::Column::ProductionDeploymentId,
            Expr::value(d.id.clone()),
        )
        .col_expr(project::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(project::Column::Id.eq(p.id))
        .exec(db)
        .await?;
    Ok(())
}

/// The hostnames of a deployment that just became ready (inside the caller's
/// transaction): `<project>-<short_id>` always; then `<project>` for the production
/// branch, or `<project>-git-<branch>` for another, unless a newer deployment already
/// holds it (a slow old build never moves an alias backwards).
pub async fn allocate_ready(
    db: &impl ConnectionTrait,
    p: &project::Model,
    d: &deployment::Model,
) -> Result<(), DbErr> {
    let own = crate::names::deployment_label(&p.name, &d.short_id);
    if !point(db, &own, p.id, &d.id, DomainKind::Deployment).await? {
        tracing::warn!(hostname = %own, "hostname held by another project; not allocated");
    }
    let alias = if d.git_ref == p.production_branch {
        p.name.clone()
    } else {
        crate::names::branch_label(&p.name, &d.git_ref)
    };
    if let Some(current) = domain::Entity::find_by_id(alias.clone()).one(db).await?
        && current.project_id == p.id
        && let Some(holder) = deployment::Entity::find_by_id(current.deployment_id)
            .one(db)
            .await?
        && holder.created_at > d.created_at
    {
        return Ok(());
    }
    if d.git_ref == p.production_branch {
        move_production(db, p, d).await
    } else {
        if !point(db, &alias, p.id, &d.id, DomainKind::Branch).await? {
            tracing::warn!(hostname = %alias, "hostname held by another project; not allocated");
        }
        Ok(())
    }
}
