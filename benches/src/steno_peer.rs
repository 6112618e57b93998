//! The workload on Oxide's steno 0.5: a DAG of N no-op actions run by its saga execution
//! coordinator (SEC), over its `InMemorySecStore` or over [`SledSecStore`], a durable sled-backed
//! `SecStore` written here (steno ships no durable store).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use steno::{
    ActionContext, ActionError, ActionFunc, ActionRegistry, DagBuilder, Node, SagaCachedState,
    SagaCreateParams, SagaDag, SagaId, SagaName, SagaNodeEvent, SagaType, SecClient, SecStore,
};

/// The steno saga type of the workload: no context.
#[derive(Debug)]
pub struct NoopSaga;

impl SagaType for NoopSaga {
    type ExecContextType = ();
}

async fn noop(_ctx: ActionContext<NoopSaga>) -> Result<(), ActionError> {
    Ok(())
}

async fn undo_noop(_ctx: ActionContext<NoopSaga>) -> Result<(), anyhow::Error> {
    Ok(())
}

/// What one saga of the workload needs: its DAG and the registry of its action.
#[derive(Debug, Clone)]
pub struct Workload {
    dag: Arc<SagaDag>,
    registry: Arc<ActionRegistry<NoopSaga>>,
}

impl Workload {
    /// A DAG of `steps` no-op actions run one after the other.
    pub fn new(steps: usize) -> Self {
        let action = ActionFunc::new_action("noop", noop, undo_noop);
        let mut registry = ActionRegistry::new();
        registry.register(action.clone());
        let mut builder = DagBuilder::new(SagaName::new("noop"));
        for i in 0..steps {
            let name = crate::engine::step_name(i);
            builder.append(Node::action(name.as_str(), "Noop", action.as_ref()));
        }
        let dag = builder.build().expect("the no-op DAG is valid");
        Workload {
            dag: Arc::new(SagaDag::new(dag, serde_json::Value::Null)),
            registry: Arc::new(registry),
        }
    }

    /// Creates, starts and awaits one saga on `sec`, which must succeed.
    pub async fn run_one(&self, sec: &SecClient) {
        let id = SagaId::new_v4();
        let done = sec
            .saga_create(id, Arc::new(()), self.dag.clone(), self.registry.clone())
            .await
            .expect("creating a steno saga");
        sec.saga_start(id).await.expect("starting a steno saga");
        let result = done.await;
        assert!(result.kind.is_ok(), "a steno saga failed");
    }

    /// Runs `n` sagas at once on `sec` and waits for all. (steno's `SecClient` cannot be
    /// cloned, so the callers' futures are joined in this task; the sagas themselves run in
    /// steno's tasks.)
    pub async fn run_many(&self, sec: &SecClient, n: usize) {
        futures::future::join_all((0..n).map(|_| self.run_one(sec))).await;
    }
}

/// A steno SEC over `store`, logging nowhere.
pub fn sec(store: Arc<dyn SecStore>) -> SecClient {
    steno::sec(slog::Logger::root(slog::Discard, slog::o!()), store)
}

/// A durable steno `SecStore` over sled, with the engine's durability: every `saga_create` and
/// `record_event` returns after sled's flush and an `fdatasync` of sled's `db` file, shared by
/// concurrent callers (group commit: a caller that finds a sync running waits for the next one,
/// which covers every write made before it began).
///
/// Layout: `sagas` holds the create parameters (JSON) by saga id, `events` the node events
/// (JSON) by saga id and a global sequence number, `states` the cached state by saga id (ids
/// as text).
#[derive(Debug)]
pub struct SledSecStore {
    db: sled::Db,
    sagas: sled::Tree,
    events: sled::Tree,
    states: sled::Tree,
    db_file: Arc<File>,
    next_event: AtomicU64,
    written: AtomicU64,
    durable: AtomicU64,
    syncing: tokio::sync::Mutex<()>,
    syncs: AtomicU64,
}

impl SledSecStore {
    /// Opens (creating) the store in directory `dir`.
    pub fn open(dir: &Path) -> Self {
        let db = sled::open(dir).expect("opening sled for steno");
        let db_file = File::options()
            .read(true)
            .write(true)
            .open(dir.join("db"))
            .expect("opening sled's db file to sync it");
        SledSecStore {
            sagas: db.open_tree("sagas").expect("opening a tree"),
            events: db.open_tree("events").expect("opening a tree"),
            states: db.open_tree("states").expect("opening a tree"),
            db,
            db_file: Arc::new(db_file),
            next_event: AtomicU64::new(0),
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            syncing: tokio::sync::Mutex::new(()),
            syncs: AtomicU64::new(0),
        }
    }

    /// How many flush-and-fdatasync rounds the store made.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Returns once every write made before the call is durable.
    async fn commit(&self) {
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let _syncing = self.syncing.lock().await;
        if self.durable.load(Ordering::SeqCst) >= ticket {
            return;
        }
        let target = self.written.load(Ordering::SeqCst);
        let (db, file) = (self.db.clone(), self.db_file.clone());
        tokio::task::spawn_blocking(move || {
            db.flush().expect("sled flush");
            file.sync_data().expect("fdatasync");
        })
        .await
        .expect("the sync task panicked");
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.durable.store(target, Ordering::SeqCst);
    }
}

#[async_trait]
impl SecStore for SledSecStore {
    async fn saga_create(&self, params: SagaCreateParams) -> Result<(), anyhow::Error> {
        let value = serde_json::to_vec(&params)?;
        self.sagas.insert(params.id.to_string().as_bytes(), value)?;
        self.commit().await;
        Ok(())
    }

    async fn record_event(&self, event: SagaNodeEvent) {
        let mut key = event.saga_id.to_string().into_bytes();
        key.extend_from_slice(&self.next_event.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        let value = serde_json::to_vec(&event).expect("encoding a steno event");
        self.events.insert(key, value).expect("writing a steno event");
        self.commit().await;
    }

    async fn saga_update(&self, id: SagaId, update: SagaCachedState) {
        let state: &str = (&update).into();
        self.states
            .insert(id.to_string().as_bytes(), state.as_bytes())
            .expect("writing a steno saga state");
        self.commit().await;
    }
}
