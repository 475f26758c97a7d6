//! At most one `building` deployment per project, enforced by the database itself so
//! that workers in different processes claiming at once cannot both win.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Partial unique indexes read the same on SQLite and PostgreSQL.
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX deployments_one_building_per_project \
                 ON deployments (project_id) WHERE status = 'building'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared("DROP INDEX deployments_one_building_per_project")
            .await?;
        Ok(())
    }
}
