//! Listing: filters, sorting, offset or cursor pagination over the in-memory model.
//!
//! Runs on the read model's columns: one pass over compact rows (or over the name arena's
//! search matches) filters and counts, and a bounded heap ranks the page, so a page costs O(n)
//! cheap checks in the number of keys, whatever the sort, and touches an entry only for the
//! filters rows do not hold (role, owner, scope) and for the page itself.

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

/// A row's sort key; `Text` borrows the name from the arena. One query only ever compares
/// keys of one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Time(i64),
    Text(&'a [u8]),
}

impl Key<'_> {
    fn to_value(self) -> SortValue {
        match self {
            Key::Time(t) => SortValue::Time(t),
            Key::Text(b) => SortValue::Text(String::from_utf8_lossy(b).into_owned()),
        }
    }
}

impl SortValue {
    fn as_key(&self) -> Key<'_> {
        match self {
            SortValue::Time(t) => Key::Time(*t),
            SortValue::Text(s) => Key::Text(s.as_bytes()),
        }
    }
}

/// A candidate for the page, ordered as the listing asks (the best first).
struct Ranked<'a> {
    key: (Key<'a>, Uuid),
    descending: bool,
    slot: u32,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let o = self.key.cmp(&other.key);
        if self.descending { o.reverse() } else { o }
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Ranked<'_> {}

impl ReadModel {
    /// One pass over the rows (or over the search's matches in the name arena) filters and
    /// counts; a bounded heap keeps the best `offset + limit`, so a page costs O(n) cheap
    /// column checks and O(n log page) at worst for ranking.
    pub fn list(&self, q: &ListQuery) -> ListPage {
        let empty = ListPage {
            items: Vec::new(),
            total: 0,
            next_cursor: None,
        };
        let account = match &q.account {
            Some(a) => match self.account_id(a) {
                Some(id) => Some(id),
                None => return empty,
            },
            None => None,
        };
        let needs_entry = q.role.is_some() || q.owner.is_some() || q.scope.is_some();
        let matches = |slot: u32| {
            let row = &self.rows[slot as usize];
            if !row.live
                || account.is_some_and(|a| a != row.account)
                || q.enabled.is_some_and(|en| en != row.enabled)
            {
                return false;
            }
            if !needs_entry {
                return true;
            }
            let s = &self.entries[slot as usize].state;
            q.role.as_ref().is_none_or(|r| s.role.as_ref() == Some(r))
                && q.owner.as_ref().is_none_or(|o| s.owner.as_ref() == Some(o))
                && q.scope.as_ref().is_none_or(|sc| s.has_scope(sc))
        };
        let key = |slot: u32| -> Key<'_> {
            let row = &self.rows[slot as usize];
            match q.sort {
                SortField::CreatedAt => Key::Time(row.created_ms),
                SortField::UpdatedAt => Key::Time(row.updated_ms),
                SortField::LastUsedAt => Key::Time(
                    self.entries[slot as usize]
                        .last_used_at()
                        .unwrap_or(i64::MIN),
                ),
                SortField::Name => Key::Text(self.names.get(slot)),
            }
        };
        let cursor = q.cursor.as_ref().map(|c| Ranked {
            key: (c.value.as_key(), c.id),
            descending: q.descending,
            slot: u32::MAX,
        });
        let want = q.offset.saturating_add(q.limit);
        let mut total = 0usize;
        let mut after_cursor = 0usize;
        // Max-heap of the best `want`: its top is the worst kept, evicted by anything better.
        let mut best: std::collections::BinaryHeap<Ranked<'_>> =
            std::collections::BinaryHeap::with_capacity(want.min(4096) + 1);
        let mut consider = |slot: u32| {
            if !matches(slot) {
                return;
            }
            total += 1;
            let r = Ranked {
                key: (key(slot), self.rows[slot as usize].id),
                descending: q.descending,
                slot,
            };
            if cursor.as_ref().is_some_and(|c| r <= *c) {
                return;
            }
            after_cursor += 1;
            if best.len() < want {
                best.push(r);
            } else if want > 0 && best.peek().is_some_and(|worst| r < *worst) {
                best.pop();
                best.push(r);
            }
        };
        match q.search.as_deref() {
            Some(needle) => self.names.containing(needle, &mut consider),
            None => (0..self.rows.len() as u32).for_each(&mut consider),
        }
        let ranked = best.into_sorted_vec();
        let page: Vec<&Ranked<'_>> = ranked.iter().skip(q.offset).take(q.limit).collect();
        let next_cursor = if after_cursor > want {
            page.last().map(|r| Cursor {
                value: r.key.0.to_value(),
                id: r.key.1,
            })
        } else {
            None
        };
        ListPage {
            items: page
                .iter()
                .map(|r| self.entries[r.slot as usize].clone())
                .collect(),
            total,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::tests::plain_state;
    use keyledger_core::{KeyState, SecretHash, Timestamp};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Spec {
        name: String,
        account: u8,
        created: i64,
        updated: i64,
        last_used: Option<i64>,
        enabled: bool,
        deleted: bool,
        role: Option<u8>,
        scope: Option<u8>,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            "[abAB ]{1,6}",
            0u8..2,
            0i64..6,
            0i64..6,
            proptest::option::of(0i64..6),
            any::<bool>(),
            proptest::bool::weighted(0.2),
            proptest::option::of(0u8..2),
            proptest::option::of(0u8..2),
        )
            .prop_map(
                |(name, account, created, updated, last_used, enabled, deleted, role, scope)| {
                    Spec {
                        name,
                        account,
                        created,
                        updated,
                        last_used,
                        enabled,
                        deleted,
                        role,
                        scope,
                    }
                },
            )
    }

    fn state(i: usize, s: &Spec) -> KeyState {
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        KeyState {
            account: format!("acct{}", s.account),
            name: s.name.clone(),
            role: s.role.map(|r| format!("role{r}")),
            scopes: s.scope.map(|r| format!("scope{r}")).into_iter().collect(),
            enabled: s.enabled,
            created_at: Timestamp(s.created),
            updated_at: Timestamp(s.updated),
            deleted_at: s.deleted.then_some(Timestamp(s.updated)),
            ..plain_state(Uuid::from_u128(1000 + i as u128), SecretHash(hash))
        }
    }

    fn query() -> impl Strategy<Value = ListQuery> {
        (
            (
                proptest::option::of(0u8..3),
                1usize..8,
                0usize..4,
                prop_oneof![
                    Just(SortField::CreatedAt),
                    Just(SortField::UpdatedAt),
                    Just(SortField::Name),
                    Just(SortField::LastUsedAt),
                ],
                any::<bool>(),
            ),
            (
                proptest::option::of("[ab ]{0,2}"),
                proptest::option::of(0u8..2),
                proptest::option::of(any::<bool>()),
                proptest::option::of(0u8..2),
            ),
        )
            .prop_map(
                |((account, limit, offset, sort, descending), (search, role, enabled, scope))| {
                    ListQuery {
                        account: account.map(|a| format!("acct{a}")),
                        limit,
                        offset,
                        cursor: None,
                        sort,
                        descending,
                        search,
                        role: role.map(|r| format!("role{r}")),
                        enabled,
                        owner: None,
                        scope: scope.map(|s| format!("scope{s}")),
                    }
                },
            )
    }

    /// The listing's meaning, written as plainly as possible: filter, sort, skip, take.
    fn reference(model: &ReadModel, q: &ListQuery) -> (Vec<Uuid>, usize, Option<Cursor>) {
        let value = |e: &KeyEntry| match q.sort {
            SortField::CreatedAt => SortValue::Time(e.state.created_at.0),
            SortField::UpdatedAt => SortValue::Time(e.state.updated_at.0),
            SortField::LastUsedAt => SortValue::Time(e.last_used_at().unwrap_or(i64::MIN)),
            SortField::Name => SortValue::Text(e.state.name.to_lowercase()),
        };
        let mut all: Vec<(SortValue, Uuid)> = model
            .entries()
            .filter(|e| {
                let s = &e.state;
                !s.is_deleted()
                    && q.account.as_ref().is_none_or(|a| *a == s.account)
                    && q.search
                        .as_ref()
                        .is_none_or(|n| s.name.to_lowercase().contains(n.as_str()))
                    && q.role.as_ref().is_none_or(|r| s.role.as_ref() == Some(r))
                    && q.enabled.is_none_or(|en| s.enabled == en)
                    && q.scope.as_ref().is_none_or(|sc| s.has_scope(sc))
            })
            .map(|e| (value(e), e.state.id))
            .collect();
        all.sort();
        if q.descending {
            all.reverse();
        }
        let total = all.len();
        let after: Vec<_> = match &q.cursor {
            None => all,
            Some(c) => {
                let at = (c.value.clone(), c.id);
                all.into_iter()
                    .filter(|k| if q.descending { *k < at } else { *k > at })
                    .collect()
            }
        };
        let page: Vec<_> = after.iter().skip(q.offset).take(q.limit).cloned().collect();
        let next = (after.len() > q.offset + q.limit)
            .then(|| {
                page.last().map(|(v, id)| Cursor {
                    value: v.clone(),
                    id: *id,
                })
            })
            .flatten();
        (page.into_iter().map(|(_, id)| id).collect(), total, next)
    }

    fn model(specs: &[Spec], renames: &[(usize, String)]) -> ReadModel {
        let mut m = ReadModel::default();
        for (i, s) in specs.iter().enumerate() {
            m.load(state(i, s), s.last_used);
        }
        for (i, name) in renames {
            if let Some(s) = specs.get(*i) {
                let renamed = Spec {
                    name: name.clone(),
                    ..s.clone()
                };
                m.load(state(*i, &renamed), s.last_used);
            }
        }
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn a_page_is_the_reference_listing_page(
            specs in proptest::collection::vec(spec(), 0..40),
            renames in proptest::collection::vec((0usize..40, "[abAB ]{1,9}"), 0..10),
            q in query(),
        ) {
            let m = model(&specs, &renames);
            let got = m.list(&q);
            let ids: Vec<Uuid> = got.items.iter().map(|e| e.state.id).collect();
            let (want, total, next) = reference(&m, &q);
            prop_assert_eq!(ids, want);
            prop_assert_eq!(got.total, total);
            prop_assert_eq!(got.next_cursor, next);
        }

        #[test]
        fn following_cursors_walks_the_whole_listing_once(
            specs in proptest::collection::vec(spec(), 0..40),
            mut q in query(),
        ) {
            let m = model(&specs, &[]);
            q.offset = 0;
            let whole = reference(&m, &ListQuery { limit: usize::MAX / 2, ..q.clone() }).0;
            let mut walked = Vec::new();
            loop {
                let page = m.list(&q);
                walked.extend(page.items.iter().map(|e| e.state.id));
                match page.next_cursor {
                    Some(c) => q.cursor = Some(c),
                    None => break,
                }
            }
            prop_assert_eq!(walked, whole);
        }
    }
}
