//! The route table: hostname label → deployment, held in memory so the request path
//! never asks the database.
//!
//! Readers take a lock-free snapshot (`ArcSwap`); a reload builds a whole new map from
//! the domains table and swaps it in at once, so a request sees the old table or the
//! new one, never a half-written one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait};

use crate::db::domains::DomainKind;
use crate::db::{domain, project};

/// Where one hostname points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub deployment_id: Arc<str>,
    pub project_id: i32,
    /// The project serves `/index.html` for unknown paths.
    pub spa: bool,
    /// The hostname names one deployment forever (`<project>-<short_id>`), so its
    /// responses may be cached for long.
    pub immutable: bool,
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

    /// Replaces the table with the domains table as it is now; returns the deployments
    /// that no hostname serves any more.
    pub async fn reload(&self, db: &DatabaseConnection) -> Result<Vec<Arc<str>>, DbErr> {
        let spa: HashMap<i32, bool> = project::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|p| (p.id, p.spa))
            .collect();
        let rows = domain::Entity::find().all(db).await?;
        let map: HashMap<String, Route> = rows
            .into_iter()
            .map(|d| {
                let route = Route {
                    deployment_id: Arc::from(d.deployment_id.as_str()),
                    project_id: d.project_id,
                    spa: spa.get(&d.project_id).copied().unwrap_or(false),
                    immutable: d.kind == DomainKind::Deployment.as_str(),
                };
                (d.hostname, route)
            })
            .collect();
        let live: HashSet<&str> = map.values().map(|r| &*r.deployment_id).collect();
        let old = self.routes.load();
        let mut gone: Vec<Arc<str>> = old
            .values()
            .filter(|r| !live.contains(&*r.deployment_id))
            .map(|r| r.deployment_id.clone())
            .collect();
        gone.sort();
        gone.dedup();
        self.routes.store(Arc::new(map));
        Ok(gone)
    }
}
