//! ScaleMesh: a self-hosted Vercel in one binary. It clones a web app from git, builds
//! it in a container, stores the output as an immutable deployment, serves every
//! deployment on its own subdomain, and streams the build log live.
//!
//! The library does the work; `main.rs` only parses the command line. Tests drive the
//! library: [`app::AppState::build`] from a [`config::Config`], then [`app::serve`] on a
//! listener bound to port 0, or [`app::router`] with `oneshot`.
//!
//! # Layout
//! - [`config`]: the one `Config`, from TOML and `SCALEMESH_<SECTION>__<KEY>`.
//! - [`app`]: wiring of state and roles; the Host split between dashboard and sites.
//! - [`db`]: connection, migrations (crate `scalemesh-migrations`), entities, shared queries.
//! - [`auth`]: password hashes, session and API token secrets, login rate limits.
//! - [`names`]: what a project name, git URL, ref or env key may be.
//! - [`api`]: the HTTP API (`/api/v1`) and system routes.
//! - [`proxy`]: Host routing and the route table of deployments.
//! - [`builder`]: the build queue, sources, plans and runners.
//! - [`logs`]: build log persistence and streaming.
//! - [`body`]: the one response body type of the listener.
//! - [`server`]: the HTTP accept loop with its limits (slowloris, connection cap).
//! - [`storage`]: opening the artifact store (`object_store`).
//! - [`metrics`]: Prometheus metrics.

pub mod api;
pub mod app;
pub mod auth;
pub mod body;
pub mod builder;
pub mod config;
pub mod db;
pub mod logs;
pub mod metrics;
pub mod names;
pub mod proxy;
pub mod server;
pub mod storage;
