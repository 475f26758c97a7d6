//! Plan: what to run for a deployment, from the project's settings and what the
//! checkout holds. Explicit settings always win; detection fills the rest.
//!
//! - `package.json` in `root_dir` → Node: `npm ci` with a lockfile, else `npm install`
//!   (`yarn.lock` → yarn, `pnpm-lock.yaml` → pnpm), then the `build` script if there is
//!   one; output is the first of `dist`, `build`, `out`, `public` that the build left.
//! - otherwise a static site: no commands; output is `public/` when present, else
//!   `root_dir` itself.
//!
//! An explicit empty command means "skip this step".

use crate::db::project;

use super::workspace::Workspace;

/// Output directories tried in order when none is set.
pub const OUTPUT_CANDIDATES: &[&str] = &["dist", "build", "out", "public"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framework {
    Node { package_manager: &'static str },
    Static,
}

/// Where the build's output will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Set by the project (relative to `root_dir`).
    Explicit(String),
    /// The first of these (relative to `root_dir`) that exists after the build, else
    /// `root_dir` itself when `or_root`.
    FirstOf {
        candidates: Vec<String>,
        or_root: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub framework: Framework,
    pub image: String,
    pub root_dir: String,
    pub install: Option<String>,
    pub build: Option<String>,
    pub output: Output,
}

impl Plan {
    /// Lines that tell the user what will run, logged before the build.
    pub fn describe(&self) -> Vec<String> {
        let framework = match &self.framework {
            Framework::Node { package_manager } => format!("Node.js ({package_manager})"),
            Framework::Static => "static files".to_string(),
        };
        let output = match &self.output {
            Output::Explicit(d) => d.clone(),
            Output::FirstOf {
                candidates,
                or_root,
            } => {
                let mut s = format!("first of {}", candidates.join(", "));
                if *or_root {
                    s.push_str(", else the root directory");
                }
                s
            }
        };
        let mut lines = vec![format!("Plan: {framework} in '{}'", self.root_dir)];
        if self.install.is_some() || self.build.is_some() {
            lines.push(format!("  image: {}", self.image));
        }
        lines.push(format!(
            "  install: {}",
            self.install.as_deref().unwrap_or("(none)")
        ));
        lines.push(format!(
            "  build: {}",
            self.build.as_deref().unwrap_or("(none)")
        ));
        lines.push(format!("  output: {output}"));
        lines
    }
}

/// Decides the plan of `p` for the checkout in `ws`.
pub fn plan(p: &project::Model, ws: &Workspace, default_image: &str) -> Result<Plan, String> {
    let root = ws
        .resolve(&p.root_dir)?
        .ok_or_else(|| format!("root_dir '{}' does not exist in the repository", p.root_dir))?;
    if !root.is_dir() {
        return Err(format!("root_dir '{}' is not a directory", p.root_dir));
    }
    let join = |name: &str| {
        let rel = if p.root_dir == "." {
            name.to_string()
        } else {
            format!("{}/{name}", p.root_dir)
        };
        ws.resolve(&rel)
    };
    let package_json = join("package.json")?;
    let explicit = |c: &Option<String>| c.as_ref().map(|c| c.trim().to_string());
    let (framework, install, build, output) = match package_json {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read package.json: {e}"))?;
            let manifest: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("package.json is not valid JSON: {e}"))?;
            let has_build = manifest["scripts"]["build"].is_string();
            let (pm, install) = if join("pnpm-lock.yaml")?.is_some() {
                ("pnpm", "pnpm install --frozen-lockfile")
            } else if join("yarn.lock")?.is_some() {
                ("yarn", "yarn install --frozen-lockfile")
            } else if join("package-lock.json")?.is_some() || join("npm-shrinkwrap.json")?.is_some()
            {
                ("npm", "npm ci")
            } else {
                ("npm", "npm install")
            };
            let build = has_build.then(|| match pm {
                "yarn" => "yarn build".to_string(),
                "pnpm" => "pnpm run build".to_string(),
                _ => "npm run build".to_string(),
            });
            (
                Framework::Node {
                    package_manager: pm,
                },
                Some(install.to_string()),
                build,
                Output::FirstOf {
                    candidates: OUTPUT_CANDIDATES.iter().map(|s| s.to_string()).collect(),
                    or_root: false,
                },
            )
        }
        None => {
            let has_build = p
                .build_command
                .as_deref()
                .is_some_and(|c| !c.trim().is_empty());
            let candidates = if has_build {
                OUTPUT_CANDIDATES.iter().map(|s| s.to_string()).collect()
            } else {
                vec!["public".to_string()]
            };
            (
                Framework::Static,
                None,
                None,
                Output::FirstOf {
                    candidates,
                    or_root: true,
                },
            )
        }
    };
    let install = explicit(&p.install_command).map_or(install, |c| (!c.is_empty()).then_some(c));
    let build = explicit(&p.build_command).map_or(build, |c| (!c.is_empty()).then_some(c));
    let output = match &p.output_dir {
        Some(d) => Output::Explicit(d.clone()),
        None => output,
    };
    Ok(Plan {
        framework,
        image: p.image.clone().unwrap_or_else(|| default_image.to_string()),
        root_dir: p.root_dir.clone(),
        install,
        build,
        output,
    })
}

/// The output directory after the build, relative to the checkout.
pub fn resolve_output(plan: &Plan, ws: &Workspace) -> Result<String, String> {
    let under_root = |d: &str| {
        if plan.root_dir == "." {
            d.to_string()
        } else {
            format!("{}/{d}", plan.root_dir)
        }
    };
    let is_dir =
        |rel: &str| -> Result<bool, String> { Ok(ws.resolve(rel)?.is_some_and(|p| p.is_dir())) };
    match &plan.output {
        Output::Explicit(d) => {
            let rel = under_root(d);
            if is_dir(&rel)? {
                Ok(rel)
            } else {
                Err(format!(
                    "output directory '{d}' does not exist after the build"
                ))
            }
        }
        Output::FirstOf {
            candidates,
            or_root,
        } => {
            for c in candidates {
                let rel = under_root(c);
                if is_dir(&rel)? {
                    return Ok(rel);
                }
            }
            if *or_root {
                return Ok(plan.root_dir.clone());
            }
            Err(format!(
                "no output directory: none of {} exists after the build; set output_dir",
                candidates.join(", ")
            ))
        }
    }
}
