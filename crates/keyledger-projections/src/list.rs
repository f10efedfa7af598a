//! Listing: filters, sorting, offset or cursor pagination over the in-memory model.
//!
//! One pass filters and counts; only the page is sorted (`select_nth_unstable`), so a page
//! costs O(n) in the number of keys, whatever the sort.

use crate::memory::{KeyEntry, ReadModel};
use std::cmp::Ordering;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortField {
    #[default]
    CreatedAt,
    UpdatedAt,
    Name,
    LastUsedAt,
}

impl SortField {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created_at" => Self::CreatedAt,
            "updated_at" => Self::UpdatedAt,
            "name" => Self::Name,
            "last_used_at" => Self::LastUsedAt,
            _ => return None,
        })
    }
}

/// A position in a sorted listing: the sort value and id of the last key seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub value: SortValue,
    pub id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SortValue {
    /// Milliseconds; `i64::MIN` for "never used".
    Time(i64),
    Text(String),
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// `None`: every account (admin only; the caller checks).
    pub account: Option<String>,
    pub limit: usize,
    pub offset: usize,
    pub cursor: Option<Cursor>,
    pub sort: SortField,
    pub descending: bool,
    /// Lower-cased substring of the name.
    pub search: Option<String>,
    pub role: Option<String>,
    pub enabled: Option<bool>,
    pub owner: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Arc<KeyEntry>>,
    pub total: usize,
    /// Present when more keys follow this page.
    pub next_cursor: Option<Cursor>,
}

fn sort_value(e: &KeyEntry, field: SortField) -> SortValue {
    match field {
        SortField::CreatedAt => SortValue::Time(e.state.created_at.millis()),
        SortField::UpdatedAt => SortValue::Time(e.state.updated_at.millis()),
        SortField::LastUsedAt => SortValue::Time(e.last_used_at().unwrap_or(i64::MIN)),
        SortField::Name => SortValue::Text(e.name_lower.clone()),
    }
}

impl ListQuery {
    fn matches(&self, e: &KeyEntry) -> bool {
        let s = &e.state;
        !s.is_deleted()
            && self.account.as_ref().is_none_or(|a| *a == s.account)
            && self
                .search
                .as_ref()
                .is_none_or(|q| e.name_lower.contains(q.as_str()))
            && self
                .role
                .as_ref()
                .is_none_or(|r| s.role.as_ref() == Some(r))
            && self
                .owner
                .as_ref()
                .is_none_or(|o| s.owner.as_ref() == Some(o))
            && self.enabled.is_none_or(|en| s.enabled == en)
            && self.scope.as_ref().is_none_or(|sc| s.has_scope(sc))
    }
}

impl ReadModel {
    pub fn list(&self, q: &ListQuery) -> ListPage {
        let order = |a: &(SortValue, Uuid), b: &(SortValue, Uuid)| {
            let o = a.cmp(b);
            if q.descending { o.reverse() } else { o }
        };
        let mut total = 0usize;
        let mut rest: Vec<((SortValue, Uuid), &Arc<KeyEntry>)> = Vec::new();
        let cursor = q.cursor.as_ref().map(|c| (c.value.clone(), c.id));
        for e in self.entries() {
            if !q.matches(e) {
                continue;
            }
            total += 1;
            let k = (sort_value(e, q.sort), e.state.id);
            if cursor
                .as_ref()
                .is_none_or(|c| order(&k, c) == Ordering::Greater)
            {
                rest.push((k, e));
            }
        }
        let want = q.offset.saturating_add(q.limit);
        let more = rest.len() > want;
        if rest.len() > want && want > 0 {
            rest.select_nth_unstable_by(want, |a, b| order(&a.0, &b.0));
            rest.truncate(want);
        }
        rest.sort_unstable_by(|a, b| order(&a.0, &b.0));
        let page: Vec<_> = rest.into_iter().skip(q.offset).take(q.limit).collect();
        let next_cursor = if more {
            page.last().map(|((value, id), _)| Cursor {
                value: value.clone(),
                id: *id,
            })
        } else {
            None
        };
        ListPage {
            items: page.into_iter().map(|(_, e)| e.clone()).collect(),
            total,
            next_cursor,
        }
    }
}
