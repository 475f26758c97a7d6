//! The first schema: users, sessions, API tokens, projects, env vars, deployments,
//! log lines and domains (see DESIGN.md, "Data").

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    PasswordHash,
    IsAdmin,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    TokenHash,
    CreatedAt,
    LastUsedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    UserId,
    Name,
    TokenHash,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum Projects {
    Table,
    Id,
    OwnerId,
    Name,
    GitUrl,
    ProductionBranch,
    RootDir,
    InstallCommand,
    BuildCommand,
    OutputDir,
    Image,
    Spa,
    ProductionDeploymentId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum EnvVars {
    Table,
    ProjectId,
    Key,
    Value,
}

#[derive(DeriveIden)]
enum Deployments {
    Table,
    Id,
    ShortId,
    ProjectId,
    GitRef,
    CommitSha,
    CommitMessage,
    Status,
    Error,
    CreatedAt,
    StartedAt,
    FinishedAt,
    ClaimedBy,
    LeaseUntil,
    FileCount,
    TotalBytes,
}

#[derive(DeriveIden)]
enum LogLines {
    Table,
    DeploymentId,
    Seq,
    Ts,
    Stream,
    Text,
}

#[derive(DeriveIden)]
enum Domains {
    Table,
    Hostname,
    ProjectId,
    DeploymentId,
    Kind,
    CreatedAt,
}

fn cascade(fk: &mut ForeignKeyCreateStatement) -> &mut ForeignKeyCreateStatement {
    fk.on_delete(ForeignKeyAction::Cascade)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(pk_auto(Users::Id))
                .col(string_uniq(Users::Email))
                .col(string(Users::PasswordHash))
                .col(boolean(Users::IsAdmin))
                .col(timestamp_with_time_zone(Users::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Sessions::Table)
                .col(pk_auto(Sessions::Id))
                .col(integer(Sessions::UserId))
                .col(string_uniq(Sessions::TokenHash))
                .col(timestamp_with_time_zone(Sessions::CreatedAt))
                .col(timestamp_with_time_zone(Sessions::LastUsedAt))
                .col(timestamp_with_time_zone(Sessions::ExpiresAt))
                .foreign_key(cascade(
                    ForeignKey::create()
                        .from(Sessions::Table, Sessions::UserId)
                        .to(Users::Table, Users::Id),
                ))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ApiTokens::Table)
                .col(pk_auto(ApiTokens::Id))
                .col(integer(ApiTokens::UserId))
                .col(string(ApiTokens::Name))
                .col(string_uniq(ApiTokens::TokenHash))
                .col(timestamp_with_time_zone(ApiTokens::CreatedAt))
                .col(timestamp_with_time_zone_null(ApiTokens::LastUsedAt))
                .foreign_key(cascade(
                    ForeignKey::create()
                        .from(ApiTokens::Table, ApiTokens::UserId)
                        .to(Users::Table, Users::Id),
                ))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Projects::Table)
                .col(pk_auto(Projects::Id))
                .col(integer(Projects::OwnerId))
                .col(string_uniq(Projects::Name))
                .col(text(Projects::GitUrl))
                .col(string(Projects::ProductionBranch))
                .col(string(Projects::RootDir))
                .col(text_null(Projects::InstallCommand))
                .col(text_null(Projects::BuildCommand))
                .col(string_null(Projects::OutputDir))
                .col(string_null(Projects::Image))
                .col(boolean(Projects::Spa))
                .col(string_null(Projects::ProductionDeploymentId))
                .col(timestamp_with_time_zone(Projects::CreatedAt))
                .col(timestamp_with_time_zone(Projects::UpdatedAt))
                .foreign_key(cascade(
                    ForeignKey::create()
                        .from(Projects::Table, Projects::OwnerId)
                        .to(Users::Table, Users::Id),
                ))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(EnvVars::Table)
                .col(integer(EnvVars::ProjectId))
                .col(string(EnvVars::Key))
                .col(text(EnvVars::Value))
                .primary_key(Index::create().col(EnvVars::ProjectId).col(EnvVars::Key))
                .foreign_key(cascade(
                    ForeignKey::create()
                        .from(EnvVars::Table, EnvVars::ProjectId)
                        .to(Projects::Table, Projects::Id),
                ))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Deployments::Table)
                .col(string(Deployments::Id).primary_key())
                .col(string_uniq(Deployments::ShortId))
                .col(integer(Deployments::ProjectId))
                .col(string(Deployments::GitRef))
                .col(string_null(Deployments::CommitSha))
                .col(text_null(Deployments::CommitMessage))
                .col(string(Deployments::Status))
                .col(text_null(Deployments::Error))
                .col(timestamp_with_time_zone(Deployments::CreatedAt))
                .col(timestamp_with_time_zone_null(Deployments::StartedAt))
                .col(timestamp_with_time_zone_null(Deployments::FinishedAt))
                .col(string_null(Deployments::ClaimedBy))
                .col(timestamp_with_time_zone_null(Deployments::LeaseUntil))
                .col(big_integer_null(Deployments::FileCount))
                .col(big_integer_null(Deployments::TotalBytes))
                .foreign_key(cascade(
                    ForeignKey::create()
                        .from(Deployments::Table, Deployments::ProjectId)
                        .to(Projects::Table, Projects::Id),
                ))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("deployments_status_created")
                .table(Deployments::Table)
                .col(Deployments::Status)
                .col(Deployments::CreatedAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("deployments_project_created")
                .table(Deployments::Table)
                .col(Deployments::ProjectId)
                .col(Deployments::CreatedAt)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(LogLines::Table)
                .col(string(LogLines::DeploymentId))
                .col(big_integer(LogLines::Seq))
                .col(timestamp_with_time_zone(LogLines::Ts))
                .col(string(LogLines::Stream))
                .col(text(LogLines::Text))
                .primary_key(
                    Index::create()
                        .col(LogLines::DeploymentId)
                        .col(LogLines::Seq),
                )
                .foreign_key(cascade(
                    ForeignKey::create()
                        .from(LogLines::Table, LogLines::DeploymentId)
                        .to(Deployments::Table, Deployments::Id),
                ))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Domains::Table)
                .col(string(Domains::Hostname).primary_key())
                .col(integer(Domains::ProjectId))
                .col(string(Domains::DeploymentId))
                .col(string(Domains::Kind))
                .col(timestamp_with_time_zone(Domains::CreatedAt))
                .foreign_key(cascade(
                    ForeignKey::create()
                        .from(Domains::Table, Domains::ProjectId)
                        .to(Projects::Table, Projects::Id),
                ))
                .foreign_key(cascade(
                    ForeignKey::create()
                        .from(Domains::Table, Domains::DeploymentId)
                        .to(Deployments::Table, Deployments::Id),
                ))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            Domains::Table.into_iden(),
            LogLines::Table.into_iden(),
            Deployments::Table.into_iden(),
            EnvVars::Table.into_iden(),
            Projects::Table.into_iden(),
            ApiTokens::Table.into_iden(),
            Sessions::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
