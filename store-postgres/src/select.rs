//! The statements a [`Filter`] or a [`Query`] makes: a page newest first with keyset
//! pagination, and a purge.

use std::time::SystemTime;

use dtasks::store::{from_millis, Filter, Parent, Query};
use dtasks::Error;
use tokio_postgres::types::ToSql;

use crate::row::{status_text, COLUMNS, FINISHED};

/// A statement and its parameters.
pub(crate) struct Statement {
    /// The SQL text.
    pub(crate) text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Statement {
    fn new() -> Self {
        Self {
            text: String::new(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter; returns its placeholder.
    fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// The parameters, as the client takes them.
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The conditions of `filter` but its statuses (and of `query`'s cursor, when given),
/// joined by `AND`; `TRUE` when there are none.
fn conditions(st: &mut Statement, filter: &Filter, query: Option<&Query>) -> String {
    let mut out = Vec::new();
    if let Some(name) = filter.dtask_name() {
        let p = st.param(name.to_owned());
        out.push(format!("name = {p}"));
    }
    match filter.parent_selected() {
        None => {}
        Some(Parent::None) => out.push("parent IS NULL".to_owned()),
        Some(Parent::Of(parent)) => {
            let p = st.param(parent.as_str().to_owned());
            out.push(format!("parent = {p}"));
        }
        Some(other) => unreachable!("a parent filter this store does not know: {other:?}"),
    }
    if let Some(prefix) = filter.prefix() {
        let p = st.param(like_prefix(prefix));
        out.push(format!("id LIKE {p}"));
    }
    let (after, before) = filter.started_range();
    if let Some(t) = after {
        let p = st.param(t);
        out.push(format!("created_at >= {p}"));
    }
    if let Some(t) = before {
        let p = st.param(t);
        out.push(format!("created_at < {p}"));
    }
    if let Some(cursor) = query.and_then(Query::cursor) {
        let (ms, id) = cursor.parts();
        let t: SystemTime = from_millis(ms);
        let pt = st.param(t);
        let pid = st.param(id.as_str().to_owned());
        out.push(format!("(created_at, id) < ({pt}, {pid})"));
    }
    if out.is_empty() {
        "TRUE".to_owned()
    } else {
        out.join(" AND ")
    }
}

/// The `LIKE` pattern of the ids that start with `prefix`.
fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The page `query` asks for, plus one row that says whether a next page exists.
///
/// Rows come newest first by `(created_at, id)`, which is the order of
/// [`Cursor`](dtasks::store::Cursor)s since times are kept to the millisecond. A filter
/// on several statuses reads each status's newest rows from its index and merges them,
/// rather than sorting every row of those statuses.
pub(crate) fn page(instances: &str, query: &Query) -> Result<Statement, Error> {
    let mut st = Statement::new();
    let limit = i64::try_from(query.page_size() + 1).unwrap_or(i64::MAX);
    let lim = st.param(limit);
    let cond = conditions(&mut st, query.filter(), Some(query));
    let order = "ORDER BY created_at DESC, id DESC";
    let statuses = query.filter().statuses();
    st.text = match statuses {
        [] => format!("SELECT {COLUMNS} FROM {instances} WHERE {cond} {order} LIMIT {lim}"),
        [one] => {
            let s = st.param(status_text(*one));
            format!(
                "SELECT {COLUMNS} FROM {instances} WHERE status = {s} AND {cond} {order} \
                 LIMIT {lim}"
            )
        }
        several => {
            let mut parts = Vec::new();
            for status in several {
                let s = st.param(status_text(*status));
                parts.push(format!(
                    "(SELECT {COLUMNS} FROM {instances} WHERE status = {s} AND {cond} \
                     {order} LIMIT {lim})"
                ));
            }
            format!(
                "SELECT * FROM ({}) AS u {order} LIMIT {lim}",
                parts.join(" UNION ALL ")
            )
        }
    };
    Ok(st)
}

/// Removes the finished rows `filter` selects, with their claims; answers how many.
/// `None` when the filter selects no finished status.
pub(crate) fn purge(
    instances: &str,
    claims: &str,
    payloads: &str,
    filter: &Filter,
) -> Option<Statement> {
    let mut statuses: Vec<String> = FINISHED.iter().map(|s| (*s).to_owned()).collect();
    if !filter.statuses().is_empty() {
        statuses.retain(|s| filter.statuses().iter().any(|f| status_text(*f) == s));
        if statuses.is_empty() {
            return None;
        }
    }
    let mut st = Statement::new();
    let s = st.param(statuses);
    let cond = conditions(&mut st, filter, None);
    st.text = format!(
        "WITH gone AS (DELETE FROM {instances} WHERE status = ANY({s}::text[]) AND {cond} \
         RETURNING id), \
         claims AS (DELETE FROM {claims} WHERE id IN (SELECT id FROM gone)), \
         values_gone AS (DELETE FROM {payloads} AS p USING gone WHERE p.instance = gone.id \
         OR (starts_with(p.instance, gone.id || '.') AND \
         substr(p.instance, length(gone.id) + 2) ~ '^[0-9]+(\\.[0-9]+)*$')) \
         SELECT count(*) FROM gone"
    );
    Some(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtasks::Status;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_prefix("eu-"), "eu-%");
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
    }

    #[test]
    fn a_page_of_several_statuses_merges_one_select_per_status() {
        let q = Query::new(Filter::new().status(Status::Failed).status(Status::Running));
        let st = page("t", &q).unwrap();
        assert_eq!(st.text.matches("UNION ALL").count(), 1);
        assert_eq!(st.params().len(), 3);
    }

    #[test]
    fn a_purge_of_running_statuses_only_removes_nothing() {
        let f = Filter::new().status(Status::Running);
        assert!(purge("t", "c", "p", &f).is_none());
        let f = Filter::new().status(Status::Running).status(Status::Failed);
        assert!(purge("t", "c", "p", &f).is_some());
    }
}
