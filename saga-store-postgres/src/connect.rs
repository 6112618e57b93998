//! [`PostgresStore`] itself: connecting, the durability check, the pool and the writer task.

use std::fmt;
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use saga_core::store::StoreError;
use tokio::sync::mpsc;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::Config;

use crate::error::{pg, pool_error, PostgresError};
use crate::listener::Listener;
use crate::options::PostgresOptions;
use crate::schema;
use crate::tls::{self, Connector, SslMode};
use crate::writer::{self, Counters, GroupCommitStats, Job};

/// How long data sent to the server may stay unacknowledged by its machine before the connection
/// is dropped (`TCP_USER_TIMEOUT`, Linux), unless the URL sets `tcp_user_timeout`.
const TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A [`Store`](saga_core::store::Store) in a PostgreSQL database, shared by executors on
/// several machines. See the [crate docs](crate) for the schema, the locking and what is
/// durable when.
///
/// Cloning is cheap: clones share the pool, the writer and the notifications.
#[derive(Clone)]
pub struct PostgresStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) config: Config,
    /// The TLS connector of every connection: the pool's, the listener's.
    pub(crate) tls: Connector,
    pub(crate) options: PostgresOptions,
    pub(crate) durability: Durability,
    /// The group-commit writer's queue (`None` without group commit).
    pub(crate) writer: Option<mpsc::Sender<Job>>,
    pub(crate) listener: Mutex<Option<Listener>>,
    pub(crate) counters: Arc<Counters>,
    /// The runtime `connect` ran in, which runs the store's tasks.
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut listener) = self.listener.lock() {
            if let Some(listener) = listener.take() {
                listener.stop();
            }
        }
        self.pool.close();
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.options.schema)
            .field("durability", &self.inner.durability)
            .field("ssl_mode", &self.inner.tls.mode())
            .field("group_commit", &self.inner.options.group_commit)
            .finish_non_exhaustive()
    }
}

/// What a commit the store acknowledges survives, as the server's settings say at connect.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// `fsync = on` and the store's sessions commit with `synchronous_commit` at least `on`
    /// (or `local`, `remote_write`, `remote_apply`, as the server says): an acknowledged commit
    /// is on the server's disk.
    Synced {
        /// The sessions' `synchronous_commit`.
        synchronous_commit: String,
    },
    /// The server runs with `fsync = off`, accepted by
    /// [`PostgresOptions::accept_fsync_off`]: a crash of the server's machine may lose
    /// acknowledged commits.
    FsyncOff,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, or a
    /// libpq key-value string), checks that commits are durable, creates or migrates the schema
    /// and starts the group-commit writer. Must run inside a Tokio runtime, which then runs the
    /// store's tasks ([`StoreError::Unavailable`] otherwise).
    ///
    /// TLS as the URL's `sslmode` and `sslrootcert` say, read as libpq reads them (see the
    /// [crate docs](crate#tls)); every connection of the store uses it.
    ///
    /// The URL may name several hosts (`postgres://h1:p1,h2:p2/db`): every connection goes to
    /// the first that takes writes, as `target_session_attrs=read-write`, which the store asks
    /// for whatever the URL says (see the [crate docs](crate#several-hosts-and-failover-to-a-standby)).
    ///
    /// Refused, as [`StoreError::Backend`] with a [`PostgresError`] source: a URL that does not
    /// parse or asks for read-only sessions ([`PostgresError::ReadOnlySessions`]), TLS settings
    /// libpq would refuse or root certificates that cannot be read, a
    /// connection whose TLS fails a check ([`PostgresError::Tls`], naming the host and the
    /// check), a bad schema name, a database whose schema is newer than this release knows, a
    /// server with `fsync = off` (unless accepted). A server that does not answer, or hosts of
    /// which none takes writes now (a standby not yet promoted), is [`StoreError::Transient`].
    ///
    /// Durability: the store never weakens `synchronous_commit`. When the server's default is
    /// `off`, its sessions set it to `on` (and a warning is logged); any stronger default stays.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<PostgresStore, StoreError> {
        let context = "connecting to PostgreSQL";
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(StoreError::Unavailable(
                "PostgresStore::connect must run inside a Tokio runtime, which runs the store's tasks"
                    .into(),
            ));
        };
        if let Some(schema) = &options.schema {
            let ok = !schema.is_empty()
                && schema.len() <= 63
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !schema.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(StoreError::backend(
                    context,
                    PostgresError::InvalidSchema(schema.clone()),
                ));
            }
        }
        let (url, url_tls) = tls::split_url(url).map_err(|e| StoreError::backend(context, e))?;
        let mut config: Config =
            url.parse().map_err(|e| StoreError::backend(context, PostgresError::InvalidUrl(e)))?;
        // Every session of the store writes: of several hosts, only one that takes writes (the
        // primary) will do, and a standby named alone is refused at connect rather than at the
        // first write (see the crate docs on multi-host URLs).
        if config.get_target_session_attrs() == TargetSessionAttrs::ReadOnly {
            return Err(StoreError::backend(context, PostgresError::ReadOnlySessions));
        }
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
        // A server gone without a word (its machine crashed) fails a call within this time
        // rather than TCP's retransmissions' quarter of an hour: the call is then transient, its
        // connection dropped, and the next one goes to whichever host now takes writes.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        let settings = tls::Settings::resolve(url_tls, options.root_certs.as_ref())
            .map_err(|e| StoreError::backend(context, e))?;
        config.ssl_mode(settings.tokio_mode());
        let tls = Connector::new(&settings).map_err(|e| StoreError::backend(context, e))?;
        let ssl_mode = settings.mode;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        config.application_name(&options.application_name);

        // A first connection: the server's settings, then the migration.
        let (mut client, connection) = config
            .connect(tls.clone())
            .await
            .map_err(|e| tls::connect_error(context, &config, ssl_mode, e))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let answer = async {
            let fsync = show(&client, "fsync").await?;
            let synchronous_commit = show(&client, "synchronous_commit").await?;
            schema::migrate(&mut client, options.schema.as_deref()).await?;
            Ok::<_, StoreError>((fsync, synchronous_commit))
        }
        .await;
        drop(client);
        let _ = driver.await;
        let (fsync, synchronous_commit) = answer?;

        let durability = if fsync != "on" {
            if !options.accept_fsync_off {
                return Err(StoreError::backend(context, PostgresError::FsyncOff { value: fsync }));
            }
            tracing::warn!("PostgreSQL runs with fsync = {fsync}: commits are not durable");
            Durability::FsyncOff
        } else if synchronous_commit == "off" {
            tracing::warn!(
                "PostgreSQL's synchronous_commit is off by default: this store's sessions set it on"
            );
            Durability::Synced { synchronous_commit: "on".into() }
        } else {
            Durability::Synced { synchronous_commit: synchronous_commit.clone() }
        };

        let mut session = config.get_options().map(str::to_owned).unwrap_or_default();
        if synchronous_commit == "off" {
            session.push_str(" -c synchronous_commit=on");
        }
        if let Some(schema) = &options.schema {
            session.push_str(&format!(" -c search_path={schema}"));
        }
        // Locks left by a stalled or cut-off executor never wedge the others (see the options).
        session.push_str(&format!(
            " -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
            options.lock_timeout.as_millis(),
            options.idle_in_transaction_timeout.as_millis()
        ));
        // A dead peer is noticed in about 20 s rather than TCP's two hours.
        config.keepalives(true).keepalives_idle(std::time::Duration::from_secs(10));
        let session = session.trim().to_owned();
        if !session.is_empty() {
            config.options(session);
        }

        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::backend(context, e))?;
        // Fail now, not at the first call, when the pooled sessions do not work.
        drop(pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => tls::connect_error(context, &config, ssl_mode, e),
            other => pool_error(context, other),
        })?);

        let counters = Arc::new(Counters::default());
        let writer = options.group_commit.then(|| {
            let (sender, receiver) = mpsc::channel(4 * options.max_group);
            runtime.spawn(writer::run(pool.clone(), receiver, options.max_group, counters.clone()));
            sender
        });
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                pool,
                config,
                tls,
                options,
                durability,
                writer,
                listener: Mutex::new(None),
                counters,
                runtime,
            }),
        })
    }

    /// What an acknowledged commit survives.
    pub fn durability(&self) -> &Durability {
        &self.inner.durability
    }

    /// How concurrent appends shared transactions so far (all zero without group commit).
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.inner.counters.get()
    }

    /// The `sslmode` the store's connections use (`prefer` when the URL names none, as libpq).
    pub fn ssl_mode(&self) -> SslMode {
        self.inner.tls.mode()
    }

    /// The schema version this release migrates to.
    pub fn schema_version() -> i32 {
        schema::LATEST
    }
}

/// A server setting, as `SHOW` says it.
async fn show(client: &tokio_postgres::Client, setting: &str) -> Result<String, StoreError> {
    let context = format!("reading the server's {setting}");
    let row =
        client.query_one(&format!("SHOW {setting}"), &[]).await.map_err(|e| pg(&context, e))?;
    row.try_get::<_, String>(0).map_err(|e| pg(&context, e))
}
