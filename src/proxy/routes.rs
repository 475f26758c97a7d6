//! The route table: hostname label → deployment, held in memory so the request path
//! never asks the database.
//!
//! Readers take a lock-free snapshot (`ArcSwap`); a reload builds a whole new map from
//! the domains table and swaps it in at once, so a request sees the old table or the
//! new one, never a half-written one.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

use crate::db::domain;

/// Where one hostname points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub deployment_id: String,
    pub project_id: i32,
}

#[derive(Default)]
pub struct RouteTable {
    routes: ArcSwap<HashMap<String, Route>>,
}

impl RouteTable {
    /// The route of a hostname label, if any.
    pub fn get(&self, label: &str) -> Option<Route> {
        self.routes.load().get(label).cloned()
    }

    pub fn len(&self) -> usize {
        self.routes.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the table with the domains table as it is now.
    pub async fn reload(&self, db: &DatabaseConnection) -> Result<(), DbErr> {
        let rows = domain::Entity::find().all(db).await?;
        let map = rows
            .into_iter()
            .map(|d| {
                (
                    d.hostname,
                    Route {
                        deployment_id: d.deployment_id,
                        project_id: d.project_id,
                    },
                )
            })
            .collect();
        self.routes.store(Arc::new(map));
        Ok(())
    }
}
