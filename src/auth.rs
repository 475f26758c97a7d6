//! Accounts: password hashing, the secrets of sessions and API tokens, and the login
//! rate limiter.
//!
//! Only a SHA-256 of a token is stored, so a copy of the database holds no usable
//! credential. Passwords are hashed with argon2id on the blocking pool (a hash takes
//! tens of milliseconds of CPU and must not stall the runtime).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use chrono::Utc;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set,
};
use sha2::{Digest, Sha256};

use crate::db::{api_token, session, user};

/// Name of the UI's session cookie; it holds a session token.
pub const SESSION_COOKIE: &str = "scalemesh_session";
/// How long a login lasts.
pub const SESSION_DAYS: i64 = 30;
const SESSION_PREFIX: &str = "sms_";
const API_TOKEN_PREFIX: &str = "smt_";
/// `last_used_at` is written at most this often per token, not on every request.
const TOUCH_INTERVAL_SECS: i64 = 60;

/// Who a request acts for, and through which secret.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: user::Model,
    pub via: Credential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Session(i32),
    ApiToken(i32),
}

/// Hashes a password with argon2id and a random salt, off the async runtime.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    })
    .await?
}

/// Checks a password against a stored hash; `None` (unknown account) still spends the
/// time of one verification, so timing does not tell which emails exist.
pub async fn verify_password(password: String, stored: Option<String>) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let stored = stored.unwrap_or_else(|| dummy_hash().to_string());
        let parsed = PasswordHash::new(&stored).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"not a real password")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// A new random secret with its kind's prefix.
fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// The stored form of a secret.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Starts a session for `user_id`; returns the secret to hand to the client.
pub async fn create_session(db: &DatabaseConnection, user_id: i32) -> Result<String, DbErr> {
    let token = new_secret(SESSION_PREFIX);
    let now = Utc::now();
    session::ActiveModel {
        user_id: Set(user_id),
        token_hash: Set(hash_token(&token)),
        created_at: Set(now),
        last_used_at: Set(now),
        expires_at: Set(now + chrono::Duration::days(SESSION_DAYS)),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(token)
}

/// Creates a named API token; returns the row and the secret, shown only once.
pub async fn create_api_token(
    db: &DatabaseConnection,
    user_id: i32,
    name: &str,
) -> Result<(api_token::Model, String), DbErr> {
    let token = new_secret(API_TOKEN_PREFIX);
    let row = api_token::ActiveModel {
        user_id: Set(user_id),
        name: Set(name.to_string()),
        token_hash: Set(hash_token(&token)),
        created_at: Set(Utc::now()),
        last_used_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok((row, token))
}

/// Resolves a secret to its user, or `None` when it is unknown, revoked or expired.
pub async fn authenticate(
    db: &DatabaseConnection,
    token: &str,
) -> Result<Option<Principal>, DbErr> {
    let hash = hash_token(token);
    let now = Utc::now();
    let (user_id, via) = if token.starts_with(SESSION_PREFIX) {
        let Some(s) = session::Entity::find()
            .filter(session::Column::TokenHash.eq(&hash))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        if s.expires_at <= now {
            return Ok(None);
        }
        if (now - s.last_used_at).num_seconds() > TOUCH_INTERVAL_SECS {
            let mut active: session::ActiveModel = s.clone().into();
            active.last_used_at = Set(now);
            active.update(db).await?;
        }
        (s.user_id, Credential::Session(s.id))
    } else if token.starts_with(API_TOKEN_PREFIX) {
        let Some(t) = api_token::Entity::find()
            .filter(api_token::Column::TokenHash.eq(&hash))
            .one(db)
            .await?
        else {
            return Ok(None);
        };
        if t.last_used_at
            .is_none_or(|at| (now - at).num_seconds() > TOUCH_INTERVAL_SECS)
        {
            let mut active: api_token::ActiveModel = t.clone().into();
            active.last_used_at = Set(Some(now));
            active.update(db).await?;
        }
        (t.user_id, Credential::ApiToken(t.id))
    } else {
        return Ok(None);
    };
    let user = user::Entity::find_by_id(user_id).one(db).await?;
    Ok(user.map(|user| Principal { user, via }))
}

/// Revokes the secret a request used.
pub async fn revoke(db: &DatabaseConnection, via: Credential) -> Result<(), DbErr> {
    match via {
        Credential::Session(id) => session::Entity::delete_by_id(id).exec(db).await?,
        Credential::ApiToken(id) => api_token::Entity::delete_by_id(id).exec(db).await?,
    };
    Ok(())
}

/// Login attempts allowed per client address and per account. Both must have room;
/// an attacker spreading guesses over many accounts meets the first, one spreading
/// over many addresses the second.
pub struct LoginLimiter {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    by_account: DefaultKeyedRateLimiter<String>,
}

impl LoginLimiter {
    pub fn new(per_ip_per_minute: u32, per_account_per_minute: u32) -> Self {
        let quota = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("max(1)"));
        LoginLimiter {
            by_ip: DefaultKeyedRateLimiter::keyed(quota(per_ip_per_minute)),
            by_account: DefaultKeyedRateLimiter::keyed(quota(per_account_per_minute)),
        }
    }

    /// Takes one attempt; `Err(wait)` when either budget is spent.
    pub fn check(&self, ip: IpAddr, email: &str) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        if self.by_ip.len() > 100_000 {
            self.by_ip.retain_recent();
        }
        if self.by_account.len() > 100_000 {
            self.by_account.retain_recent();
        }
        self.by_ip
            .check_key(&ip)
            .map_err(|nu| nu.wait_time_from(now))?;
        self.by_account
            .check_key(&email.to_string())
            .map_err(|nu| nu.wait_time_from(now))
    }
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::new(30, 10)
    }
}
