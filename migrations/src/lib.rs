//! Schema migrations of ScaleMesh, applied in order at `scalemesh serve` start and by
//! `scalemesh migrate`. The same statements run on SQLite and PostgreSQL, so every
//! column type here is one both understand through sea-query.
//!
//! A migration that has landed is never edited: later changes add a new file.

pub use sea_orm_migration::prelude::*;

mod m0001_initial;
mod m0002_one_build_per_project;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_initial::Migration),
            Box::new(m0002_one_build_per_project::Migration),
        ]
    }
}
