//! Reading a deployment's stored log: pages after a seq, for the logs API and for the
//! SSE stream's history and gap repair.

use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{LogLine, Stream};
use crate::db::log_line;

/// Up to `limit` stored lines with `seq > after`, in order.
pub async fn lines_after(
    db: &DatabaseConnection,
    deployment_id: &str,
    after: i64,
    limit: u64,
) -> Result<Vec<LogLine>, DbErr> {
    Ok(log_line::Entity::find()
        .filter(log_line::Column::DeploymentId.eq(deployment_id))
        .filter(log_line::Column::Seq.gt(after))
        .order_by_asc(log_line::Column::Seq)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(|l| LogLine {
            seq: l.seq,
            ts: l.ts,
            stream: Stream::parse(&l.stream),
            text: l.text,
        })
        .collect())
}
