//! The in-memory read model: every key by id, the verification index (secret hash -> key),
//! live `last_used_at` stamps, and the listing's columns (one compact [`Row`] per key and the
//! names in one arena, in rows numbered in order of first appearance). Fed only with committed
//! envelopes, in seq order.

use crate::names::Names;
use hashbrown::HashTable;
use keyledger_core::{Event, KeyState, SecretHash, Timestamp, evolve_owned};
use keyledger_store::{Envelope, ReplayEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use uuid::Uuid;

/// `last_used_at` sentinel for "never".
const NEVER: i64 = i64::MIN;

/// One key with its live usage stamp. The state is immutable; an event replaces the entry.
///
/// `repr(C)` keeps what a verification reads at the front, beside the `Arc`'s counters: with a
/// million keys a verification then touches about two cache lines of its entry instead of the
/// five or six the state's fields are spread over.
#[derive(Debug)]
#[repr(C)]
pub struct KeyEntry {
    check: Check,
    last_used: AtomicI64,
    /// Set when `last_used` changed since the last flush.
    dirty: std::sync::atomic::AtomicBool,
    pub state: KeyState,
}

/// Copies of the state's fields that decide most verifications. Derived from `state` when the
/// entry is made, and never changed after (an event replaces the whole entry).
#[derive(Debug)]
struct Check {
    secret_hash: SecretHash,
    /// `expires_at` in milliseconds; `i64::MAX` for never.
    expires_at: i64,
    deleted: bool,
    enabled: bool,
    /// No IP allow-list: every address is allowed.
    any_ip: bool,
}

impl KeyEntry {
    fn new(state: KeyState, last_used: i64) -> Self {
        Self {
            check: Check {
                secret_hash: state.secret_hash,
                expires_at: state.expires_at.map_or(i64::MAX, |t| t.millis()),
                deleted: state.is_deleted(),
                enabled: state.enabled,
                any_ip: state.allowed_ips.is_empty(),
            },
            state,
            last_used: AtomicI64::new(last_used),
            dirty: false.into(),
        }
    }

    /// The current secret's hash (`state.secret_hash`).
    pub fn secret_hash(&self) -> &SecretHash {
        &self.check.secret_hash
    }

    /// `state.is_deleted()`.
    pub fn is_deleted(&self) -> bool {
        self.check.deleted
    }

    /// `state.enabled`.
    pub fn is_enabled(&self) -> bool {
        self.check.enabled
    }

    /// `state.is_expired_at(now)`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.check.expires_at <= now.millis()
    }

    /// `state.allows_ip(ip)`; reads the allow-list only when there is one.
    pub fn allows_ip(&self, ip: Option<std::net::IpAddr>) -> bool {
        self.check.any_ip || self.state.allows_ip(ip)
    }

    /// An entry outside any model (e.g. a past state), never used.
    pub fn detached(state: KeyState) -> Self {
        Self::new(state, NEVER)
    }

    pub fn last_used_at(&self) -> Option<i64> {
        let v = self.last_used.load(Ordering::Relaxed);
        (v != NEVER).then_some(v)
    }

    /// Records a use at `ms` (monotonic: an older stamp never overwrites a newer one).
    /// Returns `true` when the entry became dirty, i.e. must be queued for the next flush.
    fn touch(&self, ms: i64) -> bool {
        // Plain loads first: most uses land in a millisecond already stamped, and a gateway's
        // verifications should not all pay for a locked read-modify-write on a shared line.
        self.last_used.load(Ordering::Relaxed) < ms
            && self.last_used.fetch_max(ms, Ordering::Relaxed) < ms
            && !self.dirty.load(Ordering::Relaxed)
            && !self.dirty.swap(true, Ordering::Relaxed)
    }
}

/// Where a secret hash goes in the verification index: its first 8 bytes. It is already a
/// uniform SHA-256 output, and only keyledger's own secrets are ever inserted (presented keys
/// are only looked up), so a keyed hash's flooding protection buys nothing here.
fn slot(hash: &SecretHash) -> u64 {
    u64::from_le_bytes(hash.0[..8].try_into().expect("8 bytes"))
}

fn current_slot(e: &Arc<KeyEntry>) -> u64 {
    slot(e.secret_hash())
}

/// Only called on entries of [`ReadModel::rotating`], which all have a previous secret.
fn rotating_slot(e: &Arc<KeyEntry>) -> u64 {
    slot(
        &e.state
            .previous
            .as_ref()
            .expect("rotating entries have a previous secret")
            .secret_hash,
    )
}

/// Moves `entry`'s key in one index table from the hash `was` to the hash `now` (either may be
/// absent); when both are the same, overwrites the slot in place.
fn place(
    table: &mut HashTable<Arc<KeyEntry>>,
    was: Option<SecretHash>,
    now: Option<SecretHash>,
    entry: &Arc<KeyEntry>,
    rehash: fn(&Arc<KeyEntry>) -> u64,
) {
    let id = entry.state.id;
    if let Some(was) = was
        && let Ok(mut slot_entry) = table.find_entry(slot(&was), |e| e.state.id == id)
    {
        if now == Some(was) {
            *slot_entry.get_mut() = entry.clone();
            return;
        }
        slot_entry.remove();
    }
    if let Some(now) = now {
        table.insert_unique(slot(&now), entry.clone(), rehash);
    }
}

/// What a presented secret hash resolves to.
#[derive(Debug, Clone)]
pub struct HashMatch {
    pub entry: Arc<KeyEntry>,
    /// The hash is the key's rotated-away secret (valid only during its grace period).
    pub previous: bool,
}

/// What listing filters and sorts on, per key, without touching the entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub id: Uuid,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The account's number in [`ReadModel::account_ids`].
    pub account: u32,
    pub live: bool,
    pub enabled: bool,
}

#[derive(Debug, Default)]
pub struct ReadModel {
    /// Key id → its row number in `entries`, `rows` and `names`.
    slots: HashMap<Uuid, u32>,
    pub(crate) entries: Vec<Arc<KeyEntry>>,
    pub(crate) rows: Vec<Row>,
    /// Lower-cased names, for case-insensitive search and sorting by name.
    pub(crate) names: Names,
    /// Account name → its number (in order of first appearance); rows hold the number.
    account_ids: HashMap<String, u32>,
    /// Keys not revoked, per account number.
    live_keys: Vec<u32>,
    /// The verification index: each key's entry placed by its current secret's hash (one
    /// lookup per verification), and by its rotated-away secret's hash while that one has a
    /// grace period. A slot holds only the pointer (9 bytes with its control byte, against 41
    /// with the hash as the key): the entry's own copy of the hash is what lookups compare.
    current: HashTable<Arc<KeyEntry>>,
    rotating: HashTable<Arc<KeyEntry>>,
    /// When each live key's next scheduled event falls due: `(ms, key)`, for expiries and ends
    /// of grace periods, so the scheduler never scans every key.
    due: std::collections::BTreeSet<(i64, Uuid)>,
    /// Keys whose `last_used_at` changed since the last flush, so the flusher never scans
    /// every key.
    dirty: parking_lot::Mutex<Vec<Uuid>>,
    head: u64,
}

/// The instants at which a key has something scheduled.
fn due_times(s: &KeyState) -> impl Iterator<Item = i64> + '_ {
    let live = !s.is_deleted();
    let expiry = s
        .expires_at
        .filter(|_| live && !s.expired)
        .map(|t| t.millis());
    let grace = s
        .previous
        .as_ref()
        .filter(|_| live)
        .map(|p| p.until.millis());
    expiry.into_iter().chain(grace)
}

impl ReadModel {
    /// The seq of the last applied envelope.
    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &Uuid) -> Option<&Arc<KeyEntry>> {
        self.slots.get(id).map(|&slot| &self.entries[slot as usize])
    }

    pub fn entries(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.entries.iter()
    }

    /// The interned index of `account`, if any key ever had it.
    pub(crate) fn account_id(&self, account: &str) -> Option<u32> {
        self.account_ids.get(account).copied()
    }

    /// How many keys of `account` are not revoked (disabled and expired keys count).
    pub fn live_keys(&self, account: &str) -> usize {
        self.account_id(account)
            .map_or(0, |a| self.live_keys[a as usize] as usize)
    }

    /// Puts `entry` in its row (a new one for a new key) and updates the row's columns.
    fn store(&mut self, entry: Arc<KeyEntry>) {
        let s = &entry.state;
        let account = match self.account_ids.get(&s.account) {
            Some(&a) => a,
            None => {
                let a = self.account_ids.len() as u32;
                self.account_ids.insert(s.account.clone(), a);
                self.live_keys.push(0);
                a
            }
        };
        let row = Row {
            id: s.id,
            created_ms: s.created_at.millis(),
            updated_ms: s.updated_at.millis(),
            account,
            live: !s.is_deleted(),
            enabled: s.enabled,
        };
        // A key's account never changes, so its count moves only with revocation.
        let was_live = self
            .slots
            .get(&s.id)
            .map(|&slot| self.rows[slot as usize].live);
        match (was_live, row.live) {
            (Some(true), false) => self.live_keys[account as usize] -= 1,
            (None | Some(false), true) => self.live_keys[account as usize] += 1,
            _ => {}
        }
        match self.slots.get(&s.id) {
            Some(&slot) => {
                let old = &self.entries[slot as usize].state;
                if old.name != s.name {
                    self.names.set(slot, &s.name.to_lowercase());
                }
                self.rows[slot as usize] = row;
                self.entries[slot as usize] = entry;
            }
            None => {
                let slot = self.entries.len() as u32;
                self.slots.insert(s.id, slot);
                self.names.set(slot, &s.name.to_lowercase());
                self.rows.push(row);
                self.entries.push(entry);
            }
        }
    }

    /// Makes room for `additional` more keys (before a bulk load).
    pub fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
        self.entries.reserve(additional);
        self.rows.reserve(additional);
        self.current.reserve(additional, current_slot);
    }

    /// Inserts a key as loaded from the persisted table (one the model does not hold yet).
    pub fn load(&mut self, state: KeyState, last_used: Option<i64>) {
        for t in due_times(&state) {
            self.due.insert((t, state.id));
        }
        let entry = Arc::new(KeyEntry::new(state, last_used.unwrap_or(NEVER)));
        self.reindex(None, &entry);
        self.store(entry);
    }

    pub fn set_head(&mut self, head: u64) {
        self.head = head;
    }

    /// Points the verification index at `next`, the entry that replaces `old` (`None` for a
    /// key's first entry). A hash the key keeps has its slot overwritten where it is.
    fn reindex(&mut self, old: Option<&KeyEntry>, next: &Arc<KeyEntry>) {
        let previous = |s: &KeyState| s.previous.as_ref().map(|p| p.secret_hash);
        let (was, was_rotating) = match old {
            Some(o) => (Some(o.state.secret_hash), previous(&o.state)),
            None => (None, None),
        };
        let now = Some(next.state.secret_hash);
        place(&mut self.current, was, now, next, current_slot);
        place(
            &mut self.rotating,
            was_rotating,
            previous(&next.state),
            next,
            rotating_slot,
        );
    }

    /// Heap bytes of the verification index (both tables).
    pub fn index_bytes(&self) -> usize {
        self.current.allocation_size() + self.rotating.allocation_size()
    }

    /// Applies one committed envelope. Envelopes at or below the head are ignored, so feeding
    /// the same envelope twice is harmless.
    pub fn apply(&mut self, env: &Envelope) {
        self.apply_event(env.seq, env.key_id, env.occurred_at, env.event.clone());
    }

    /// [`ReadModel::apply`] for a replayed event, which it consumes.
    pub fn apply_replayed(&mut self, ev: ReplayEvent) {
        self.apply_event(ev.seq, ev.key_id, ev.occurred_at, ev.event);
    }

    /// Folds `event` (owned: `evolve` would copy it anyway) into the key's entry.
    fn apply_event(&mut self, seq: u64, key_id: Uuid, at: Timestamp, event: Event) {
        if seq <= self.head {
            return;
        }
        self.head = seq;
        let old = self.get(&key_id).cloned();
        let last_used = old
            .as_ref()
            .map_or(NEVER, |e| e.last_used.load(Ordering::Relaxed));
        let next = evolve_owned(old.as_ref().map(|e| e.state.clone()), key_id, at, event);
        if let Some(old) = &old {
            for t in due_times(&old.state) {
                self.due.remove(&(t, key_id));
            }
        }
        for t in due_times(&next) {
            self.due.insert((t, key_id));
        }
        let entry = Arc::new(KeyEntry::new(next, last_used));
        // A hash stays indexed only while it is the key's current or rotating secret (a revoked
        // key keeps its current hash, so that it verifies as REVOKED).
        self.reindex(old.as_deref(), &entry);
        self.store(entry);
    }

    /// O(1): the key whose current or rotating secret has this hash.
    pub fn by_hash(&self, hash: &SecretHash) -> Option<HashMatch> {
        let at = slot(hash);
        if let Some(e) = self.current.find(at, |e| e.secret_hash() == hash) {
            return Some(HashMatch {
                entry: e.clone(),
                previous: false,
            });
        }
        let rotating = |e: &Arc<KeyEntry>| {
            e.state
                .previous
                .as_ref()
                .is_some_and(|p| p.secret_hash == *hash)
        };
        self.rotating.find(at, rotating).map(|e| HashMatch {
            entry: e.clone(),
            previous: true,
        })
    }

    /// Records a use of `entry` at `ms` (write-behind: persisted by the next flush).
    pub fn touch(&self, entry: &KeyEntry, ms: i64) {
        if entry.touch(ms) {
            self.dirty.lock().push(entry.state.id);
        }
    }

    /// Takes the `last_used_at` stamps changed since the last call.
    pub fn take_dirty_last_used(&self) -> Vec<(Uuid, i64)> {
        let ids = std::mem::take(&mut *self.dirty.lock());
        ids.into_iter()
            .filter_map(|id| {
                let e = self.get(&id)?;
                e.dirty.store(false, Ordering::Relaxed);
                e.last_used_at().map(|t| (id, t))
            })
            .collect()
    }

    /// Queues stamps whose flush failed again, so that the next flush retries them (with the
    /// key's latest stamp by then).
    pub fn requeue_last_used(&self, stamps: &[(Uuid, i64)]) {
        let mut dirty = self.dirty.lock();
        for (id, _) in stamps {
            if let Some(e) = self.get(id)
                && !e.dirty.swap(true, Ordering::Relaxed)
            {
                dirty.push(*id);
            }
        }
    }

    /// Keys with an expiry or an end of grace at or before `now_ms` (possibly already
    /// recorded: the domain decides).
    pub fn due(&self, now_ms: i64) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .due
            .range(..=(now_ms, Uuid::max()))
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The states of all keys, sorted by id: for comparing two models.
    pub fn snapshot(&self) -> Vec<KeyState> {
        let mut v: Vec<KeyState> = self.entries.iter().map(|e| e.state.clone()).collect();
        v.sort_by_key(|s| s.id);
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use keyledger_core::Timestamp;

    /// A secret hash for `n` whose first 8 bytes (the index's slot) are spread out.
    fn hash(n: u64) -> SecretHash {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        h[8..16].copy_from_slice(&n.to_le_bytes());
        SecretHash(h)
    }

    /// The entry's copies decide exactly as the state's own methods, at the edges too.
    #[test]
    fn entry_checks_agree_with_the_state() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let mut states = Vec::new();
        for (enabled, deleted, expires, ips) in [
            (true, None, None, vec![]),
            (false, None, Some(Timestamp(100)), vec![]),
            (true, Some(Timestamp(5)), Some(Timestamp(i64::MAX)), vec![]),
            (
                true,
                None,
                Some(Timestamp(99)),
                vec!["10.0.0.0/8".parse().unwrap()],
            ),
        ] {
            let mut s = plain_state(Uuid::now_v7(), hash(states.len() as u64));
            (s.enabled, s.deleted_at, s.expires_at, s.allowed_ips) =
                (enabled, deleted, expires, ips);
            states.push(s);
        }
        for s in states {
            let e = KeyEntry::detached(s.clone());
            assert_eq!(e.secret_hash(), &s.secret_hash);
            assert_eq!(e.is_deleted(), s.is_deleted());
            assert_eq!(e.is_enabled(), s.enabled);
            for now in [0, 98, 99, 100, 101, i64::MAX - 1] {
                assert_eq!(
                    e.is_expired_at(Timestamp(now)),
                    s.is_expired_at(Timestamp(now))
                );
            }
            for addr in [
                None,
                ip("10.1.2.3"),
                ip("192.168.0.1"),
                ip("::ffff:10.0.0.1"),
            ] {
                assert_eq!(e.allows_ip(addr), s.allows_ip(addr));
            }
        }
    }

    /// An enabled key of account `acct` with nothing optional set: what the module tests build
    /// on, overriding the fields they look at.
    pub(crate) fn plain_state(id: Uuid, secret_hash: SecretHash) -> KeyState {
        KeyState {
            id,
            account: "acct".into(),
            name: "key".into(),
            owner: None,
            role: None,
            scopes: vec![],
            allowed_ips: vec![],
            enabled: true,
            expires_at: None,
            metadata: Default::default(),
            prefix: "kl".into(),
            hint: "kl_x".into(),
            secret_hash,
            previous: None,
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
            rotated_at: None,
            deleted_at: None,
            expired: false,
            version: 1,
        }
    }

    fn state(n: u64) -> KeyState {
        KeyState {
            name: format!("key {n}"),
            ..plain_state(Uuid::from_u128(u128::from(n)), hash(n))
        }
    }

    fn rotated(old: u64, new: u64) -> Event {
        Event::Rotated(keyledger_core::event::Rotated {
            secret_hash: hash(new),
            hint: "kl_y".into(),
            previous_secret_hash: hash(old),
            grace_seconds: 60,
            grace_until: Some(Timestamp(60_000)),
        })
    }

    /// `(key, rotating)` for a hash, or `None` when it does not verify.
    fn find(model: &ReadModel, h: SecretHash) -> Option<(Uuid, bool)> {
        model.by_hash(&h).map(|m| (m.entry.state.id, m.previous))
    }

    #[test]
    fn rotating_secrets_stay_found_while_both_tables_grow_and_go_when_their_grace_ends() {
        const KEYS: u64 = 5_000;
        const ROTATED: u64 = 300;
        let mut model = ReadModel::default();
        let mut seq = 0;
        let mut apply = |model: &mut ReadModel, n: u64, event: Event| {
            seq += 1;
            model.apply_event(seq, Uuid::from_u128(u128::from(n)), Timestamp(2), event);
        };
        // Keys 1..=ROTATED are rotated before the tables have grown to their final size.
        for n in 1..=ROTATED {
            model.load(state(n), None);
            apply(&mut model, n, rotated(n, KEYS + n));
        }
        for n in ROTATED + 1..=KEYS {
            model.load(state(n), None);
        }
        let id = |n: u64| Uuid::from_u128(u128::from(n));
        for n in 1..=ROTATED {
            assert_eq!(
                find(&model, hash(KEYS + n)),
                Some((id(n), false)),
                "key {n}"
            );
            assert_eq!(find(&model, hash(n)), Some((id(n), true)), "key {n}");
        }
        for n in ROTATED + 1..=KEYS {
            assert_eq!(find(&model, hash(n)), Some((id(n), false)), "key {n}");
        }
        assert_eq!(find(&model, hash(3 * KEYS)), None);

        // The grace period ends: only the new secret is left.
        apply(
            &mut model,
            1,
            Event::RotationEnded(keyledger_core::event::RotationEnded {
                secret_hash: hash(1),
            }),
        );
        assert_eq!(find(&model, hash(1)), None);
        assert_eq!(find(&model, hash(KEYS + 1)), Some((id(1), false)));

        // A revoked key's current secret stays indexed (it verifies as REVOKED); its rotating
        // one goes. Each hash is indexed once, for the key's latest entry.
        apply(&mut model, 2, Event::Deleted(Default::default()));
        let m = model.by_hash(&hash(KEYS + 2)).expect("still indexed");
        assert!(m.entry.state.is_deleted());
        assert_eq!(find(&model, hash(2)), None);
        assert_eq!(model.current.len(), KEYS as usize);
        assert_eq!(model.rotating.len(), ROTATED as usize - 2);
    }

    #[test]
    fn live_keys_are_counted_per_account_and_a_revocation_counts_once() {
        let mut model = ReadModel::default();
        let in_account = |n: u64, account: &str| KeyState {
            account: account.into(),
            ..state(n)
        };
        model.load(in_account(1, "acme"), None);
        model.load(in_account(2, "acme"), None);
        model.load(in_account(3, "globex"), None);
        assert_eq!(model.live_keys("acme"), 2);
        assert_eq!(model.live_keys("globex"), 1);
        assert_eq!(model.live_keys("initech"), 0);

        let disable = Event::Updated(keyledger_core::event::Updated {
            enabled: Some(false),
            ..Default::default()
        });
        model.apply_event(1, Uuid::from_u128(1), Timestamp(2), disable);
        assert_eq!(model.live_keys("acme"), 2, "a disabled key still counts");
        for seq in [2, 2] {
            model.apply_event(
                seq,
                Uuid::from_u128(1),
                Timestamp(3),
                Event::Deleted(Default::default()),
            );
        }
        assert_eq!(
            model.live_keys("acme"),
            1,
            "revoked once, however often applied"
        );
        assert_eq!(model.live_keys("globex"), 1);
    }

    #[test]
    fn a_use_is_queued_once_per_flush_and_stamps_never_go_back() {
        let mut model = ReadModel::default();
        model.load(state(1), None);
        let entry = model.get(&Uuid::from_u128(1)).unwrap().clone();

        model.touch(&entry, 10);
        model.touch(&entry, 20);
        model.touch(&entry, 20);
        model.touch(&entry, 5);
        assert_eq!(model.take_dirty_last_used(), vec![(entry.state.id, 20)]);
        assert_eq!(entry.last_used_at(), Some(20));

        // Nothing newer since the flush: nothing to write.
        model.touch(&entry, 20);
        model.touch(&entry, 15);
        assert_eq!(model.take_dirty_last_used(), vec![]);

        // A newer use after the flush is queued again.
        model.touch(&entry, 30);
        assert_eq!(model.take_dirty_last_used(), vec![(entry.state.id, 30)]);
    }
}
