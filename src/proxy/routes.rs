//! The route table: hostname label → deployment, held in memory so the request path
//! never asks the database.
//!
//! Readers take a lock-free snapshot (`ArcSwap`); a reload builds a whole new map from
//! the domains table and swaps it in at once, so a request sees the old table or the
//! new one, never a half-written one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sea_orm::{DatabaseConnection, DbErr, EntityTrait, QuerySelect};

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
    routes: ArcSwap<HashMap<Box<str>, Route>>,
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
    ///
    /// Reads only the columns a route needs (no timestamps to parse), and keeps one
    /// copy of each deployment id however many hostnames serve it.
    pub async fn reload(&self, db: &DatabaseConnection) -> Result<Vec<Arc<str>>, DbErr> {
        let spa: HashMap<i32, bool> = project::Entity::find()
            .select_only()
            .columns([project::Column::Id, project::Column::Spa])
            .into_tuple::<(i32, bool)>()
            .all(db)
            .await?
            .into_iter()
            .collect();
        let rows: Vec<(String, i32, String, String)> = domain::Entity::find()
            .select_only()
            .columns([
                domain::Column::Hostname,
                domain::Column::ProjectId,
                domain::Column::DeploymentId,
                domain::Column::Kind,
            ])
            .into_tuple()
            .all(db)
            .await?;
        let mut ids: HashSet<Arc<str>> = HashSet::new();
        let mut map = HashMap::with_capacity(rows.len());
        for (hostname, project_id, deployment_id, kind) in rows {
            let deployment_id = match ids.get(deployment_id.as_str()) {
                Some(id) => id.clone(),
                None => {
                    let id: Arc<str> = Arc::from(deployment_id);
                    ids.insert(id.clone());
                    id
                }
            };
            let route = Route {
                deployment_id,
                project_id,
                spa: spa.get(&project_id).copied().unwrap_or(false),
                immutable: kind == DomainKind::Deployment.as_str(),
            };
            map.insert(hostname.into_boxed_str(), route);
        }
        let mut gone: Vec<Arc<str>> = self
            .routes
            .load()
            .values()
            .filter(|r| !ids.contains(&*r.deployment_id))
            .map(|r| r.deployment_id.clone())
            .collect();
        gone.sort();
        gone.dedup();
        self.routes.store(Arc::new(map));
        Ok(gone)
    }
}
