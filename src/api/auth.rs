//! `/api/v1/auth/*`, `/api/v1/me` and `/api/v1/tokens`: accounts, logins and API tokens.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{ApiJson, ClientIp, CurrentUser};
use crate::app::AppState;
use crate::auth;
use crate::db::{api_token, user};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(delete_token))
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: i32,
    pub email: String,
    pub is_admin: bool,
    pub created_at: DateTime<Utc>,
}

impl From<user::Model> for UserView {
    fn from(u: user::Model) -> Self {
        UserView {
            id: u.id,
            email: u.email,
            is_admin: u.is_admin,
            created_at: u.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuthResponse {
    pub user: UserView,
    /// A login token: send it as `Authorization: Bearer <token>`.
    pub token: String,
}

#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    pub user: UserView,
}

const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;

/// Lowercases and checks an email address; the error names the field.
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.contains('@')
        });
    if valid {
        Ok(email)
    } else {
        Err(ApiError::validation("email", "must be an email address"))
    }
}

fn check_password(password: &str) -> ApiResult<()> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(ApiError::validation(
            "password",
            format!("must be at least {MIN_PASSWORD} characters"),
        ));
    }
    if n > MAX_PASSWORD {
        return Err(ApiError::validation(
            "password",
            format!("must be at most {MAX_PASSWORD} characters"),
        ));
    }
    Ok(())
}

/// Creates an account. The first one is always allowed and is admin; later ones need
/// `auth.allow_signup`.
#[utoipa::path(post, path = "/api/v1/auth/signup", tag = "auth", request_body = Credentials,
    responses((status = 201, body = AuthResponse), (status = 403, body = crate::api::error::ErrorBody),
              (status = 409, body = crate::api::error::ErrorBody), (status = 422, body = crate::api::error::ErrorBody)))]
async fn signup(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<(StatusCode, Json<AuthResponse>)> {
    let (user, token) = create_account(&state, body).await?;
    Ok((
        StatusCode::CREATED,
        Json(AuthResponse {
            user: user.into(),
            token,
        }),
    ))
}

/// Creates an account and its first session (the API's signup and the UI's setup).
pub async fn create_account(
    state: &AppState,
    body: Credentials,
) -> ApiResult<(user::Model, String)> {
    let email = normalize_email(&body.email)?;
    check_password(&body.password)?;
    let closed = || ApiError::Forbidden {
        code: "signup_closed",
        message: "signup is closed: ask an admin for an account".into(),
    };
    let open = state.config.auth.allow_signup;
    if !open && user::Entity::find().count(&state.db).await? > 0 {
        return Err(closed());
    }
    if user::Entity::find()
        .filter(user::Column::Email.eq(&email))
        .one(&state.db)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict {
            code: "email_taken",
            message: "an account with this email exists".into(),
        });
    }
    let hash = auth::hash_password(body.password).await?;
    let created = user::ActiveModel {
        email: Set(email),
        password_hash: Set(hash),
        is_admin: Set(false),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(&state.db)
    .await
    .map_err(|e| match e.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => ApiError::Conflict {
            code: "email_taken",
            message: "an account with this email exists".into(),
        },
        _ => e.into(),
    })?;
    // Two first signups may race past the count above. The oldest account is the
    // admin; a racer that is not the oldest is undone unless signup is open.
    let first = user::Entity::find()
        .order_by_asc(user::Column::Id)
        .one(&state.db)
        .await?
        .map(|u| u.id);
    let user = if first == Some(created.id) {
        user::Entity::update_many()
            .col_expr(user::Column::IsAdmin, Expr::value(true))
            .filter(user::Column::Id.eq(created.id))
            .exec(&state.db)
            .await?;
        user::Model {
            is_admin: true,
            ..created
        }
    } else if open {
        created
    } else {
        user::Entity::delete_by_id(created.id)
            .exec(&state.db)
            .await?;
        return Err(closed());
    };
    let token = auth::create_session(&state.db, user.id).await?;
    tracing::info!(user_id = user.id, admin = user.is_admin, "account created");
    Ok((user, token))
}

/// Logs in; the same 401 for an unknown email and a wrong password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, body = AuthResponse), (status = 401, body = crate::api::error::ErrorBody),
              (status = 429, body = crate::api::error::ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<Json<AuthResponse>> {
    let (user, token) = check_login(&state, ip, body).await?;
    Ok(Json(AuthResponse {
        user: user.into(),
        token,
    }))
}

/// Checks credentials under the rate limits and starts a session.
pub async fn check_login(
    state: &AppState,
    ip: std::net::IpAddr,
    body: Credentials,
) -> ApiResult<(user::Model, String)> {
    let email = body.email.trim().to_lowercase();
    state
        .login_limiter
        .check(ip, &email)
        .map_err(|wait| ApiError::RateLimited {
            retry_after_secs: wait.as_secs().max(1),
        })?;
    if body.password.len() > MAX_PASSWORD * 4 {
        return Err(ApiError::InvalidCredentials);
    }
    let found = user::Entity::find()
        .filter(user::Column::Email.eq(&email))
        .one(&state.db)
        .await?;
    let stored = found.as_ref().map(|u| u.password_hash.clone());
    let ok = auth::verify_password(body.password, stored).await?;
    let Some(user) = found.filter(|_| ok) else {
        tracing::info!(%ip, "login failed");
        return Err(ApiError::InvalidCredentials);
    };
    let token = auth::create_session(&state.db, user.id).await?;
    Ok((user, token))
}

/// Revokes the token that made this request.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = crate::api::error::ErrorBody)))]
async fn logout(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
) -> ApiResult<StatusCode> {
    auth::revoke(&state.db, me.via).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = crate::api::error::ErrorBody)))]
async fn me(CurrentUser(me): CurrentUser) -> Json<MeResponse> {
    Json(MeResponse {
        user: me.user.into(),
    })
}

#[derive(Deserialize, ToSchema)]
pub struct NewToken {
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedToken {
    pub id: i32,
    pub name: String,
    /// The secret; shown only in this response.
    pub token: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: i32,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// Checks a token's name: 1–100 printable characters.
pub fn check_token_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "name",
            "must be 1-100 characters without control characters",
        ));
    }
    Ok(name.to_string())
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "auth", security(("bearer" = [])), request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 422, body = crate::api::error::ErrorBody)))]
async fn create_token(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    ApiJson(body): ApiJson<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let name = check_token_name(&body.name)?;
    let (row, token) = auth::create_api_token(&state.db, me.user.id, &name).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: row.id,
            name: row.name,
            token,
            created_at: row.created_at,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = TokenList)))]
async fn list_tokens(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
) -> ApiResult<Json<TokenList>> {
    let tokens = api_token::Entity::find()
        .filter(api_token::Column::UserId.eq(me.user.id))
        .order_by_asc(api_token::Column::Id)
        .all(&state.db)
        .await?
        .into_iter()
        .map(|t| TokenView {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
        })
        .collect();
    Ok(Json(TokenList { tokens }))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "auth", security(("bearer" = [])),
    params(("id" = i32, Path)),
    responses((status = 204), (status = 404, body = crate::api::error::ErrorBody)))]
async fn delete_token(
    State(state): State<AppState>,
    CurrentUser(me): CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id: i32 = id.parse().map_err(|_| ApiError::NotFound("token"))?;
    let deleted = api_token::Entity::delete_many()
        .filter(api_token::Column::Id.eq(id))
        .filter(api_token::Column::UserId.eq(me.user.id))
        .exec(&state.db)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(ApiError::NotFound("token"));
    }
    Ok(StatusCode::NO_CONTENT)
}
