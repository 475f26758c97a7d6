//! Pages of the account: first-run setup, login, logout, API tokens.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};

use super::{Csrf, Page, UiForm, UiUser, render, session_cookie, when};
use crate::api::auth::{self as api_auth, Credentials};
use crate::api::error::ApiError;
use crate::app::AppState;
use crate::auth;
use crate::db::{api_token, user};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    page: Page,
    heading: &'static str,
    intro: &'static str,
    action: &'static str,
    button: &'static str,
    email: String,
    error: Option<String>,
}

async fn has_accounts(state: &AppState) -> bool {
    user::Entity::find()
        .count(&state.db)
        .await
        .map(|n| n > 0)
        .unwrap_or(true)
}

fn login_page_for(csrf: &Csrf, setup: bool, email: String, error: Option<String>) -> Response {
    let page = if setup {
        LoginPage {
            page: Page::new(csrf, None),
            heading: "Create the admin account",
            intro: "Welcome to ScaleMesh. This first account administers this installation.",
            action: "/setup",
            button: "Create account",
            email,
            error,
        }
    } else {
        LoginPage {
            page: Page::new(csrf, None),
            heading: "Log in",
            intro: "Deploy your web apps from git.",
            action: "/login",
            button: "Log in",
            email,
            error,
        }
    };
    render(&page)
}

pub async fn setup_page(State(state): State<AppState>, csrf: Csrf) -> Response {
    if has_accounts(&state).await && !state.config.auth.allow_signup {
        return Redirect::to("/login").into_response();
    }
    login_page_for(&csrf, true, String::new(), None)
}

pub async fn login_page(State(state): State<AppState>, csrf: Csrf) -> Response {
    if !has_accounts(&state).await {
        return Redirect::to("/setup").into_response();
    }
    login_page_for(&csrf, false, String::new(), None)
}

fn signed_in(state: &AppState, token: &str) -> Response {
    (
        [(header::SET_COOKIE, session_cookie(state, token))],
        Redirect::to("/"),
    )
        .into_response()
}

pub async fn setup(State(state): State<AppState>, csrf: Csrf, UiForm(form): UiForm) -> Response {
    let email = form.get("email").cloned().unwrap_or_default();
    let creds = Credentials {
        email: email.clone(),
        password: form.get("password").cloned().unwrap_or_default(),
    };
    match api_auth::create_account(&state, creds).await {
        Ok((_, token)) => signed_in(&state, &token),
        Err(e) => login_page_for(&csrf, true, email, Some(e.to_string())),
    }
}

pub async fn login(
    State(state): State<AppState>,
    csrf: Csrf,
    crate::api::extract::ClientIp(ip): crate::api::extract::ClientIp,
    UiForm(form): UiForm,
) -> Response {
    let email = form.get("email").cloned().unwrap_or_default();
    let creds = Credentials {
        email: email.clone(),
        password: form.get("password").cloned().unwrap_or_default(),
    };
    match api_auth::check_login(&state, ip, creds).await {
        Ok((_, token)) => signed_in(&state, &token),
        Err(e @ (ApiError::InvalidCredentials | ApiError::RateLimited { .. })) => {
            login_page_for(&csrf, false, email, Some(e.to_string()))
        }
        Err(e) => e.into_response(),
    }
}

pub async fn logout(State(state): State<AppState>, UiUser(me): UiUser, _: UiForm) -> Response {
    if let Err(e) = auth::revoke(&state.db, me.via).await {
        return ApiError::from(e).into_response();
    }
    let clear = format!(
        "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0",
        auth::SESSION_COOKIE
    );
    ([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response()
}

struct TokenRow {
    id: i32,
    name: String,
    created: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    page: Page,
    tokens: Vec<TokenRow>,
    created: Option<String>,
    error: Option<String>,
}

async fn tokens_view(
    state: &AppState,
    csrf: &Csrf,
    me: &auth::Principal,
    notice: Option<&str>,
    created: Option<String>,
    error: Option<String>,
) -> Response {
    let rows = match api_token::Entity::find()
        .filter(api_token::Column::UserId.eq(me.user.id))
        .order_by_asc(api_token::Column::Id)
        .all(&state.db)
        .await
    {
        Ok(rows) => rows,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let tokens = rows
        .into_iter()
        .map(|t| TokenRow {
            id: t.id,
            name: t.name,
            created: when(t.created_at),
            last_used: t
                .last_used_at
                .map(super::ago)
                .unwrap_or_else(|| "never".into()),
        })
        .collect();
    render(&TokensPage {
        page: Page::new(csrf, Some(me)).with_notice(notice),
        tokens,
        created,
        error,
    })
}

pub async fn tokens_page(
    State(state): State<AppState>,
    csrf: Csrf,
    UiUser(me): UiUser,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    tokens_view(
        &state,
        &csrf,
        &me,
        q.get("notice").map(String::as_str),
        None,
        None,
    )
    .await
}

pub async fn create_token(
    State(state): State<AppState>,
    csrf: Csrf,
    UiUser(me): UiUser,
    UiForm(form): UiForm,
) -> Response {
    let name = form.get("name").cloned().unwrap_or_default();
    match api_auth::check_token_name(&name) {
        Ok(name) => match auth::create_api_token(&state.db, me.user.id, &name).await {
            Ok((_, secret)) => tokens_view(&state, &csrf, &me, None, Some(secret), None).await,
            Err(e) => ApiError::from(e).into_response(),
        },
        Err(e) => tokens_view(&state, &csrf, &me, None, None, Some(e.to_string())).await,
    }
}

pub async fn revoke_token(
    State(state): State<AppState>,
    UiUser(me): UiUser,
    Path(id): Path<i32>,
    _: UiForm,
) -> Response {
    let res = api_token::Entity::delete_many()
        .filter(api_token::Column::Id.eq(id))
        .filter(api_token::Column::UserId.eq(me.user.id))
        .exec(&state.db)
        .await;
    match res {
        Ok(_) => Redirect::to("/tokens?notice=revoked").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
