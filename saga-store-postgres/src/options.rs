//! How [`PostgresStore::connect`](crate::PostgresStore::connect) connects.

use std::path::PathBuf;
use std::time::Duration;

use crate::tls::RootCerts;

/// Options of [`PostgresStore::connect`](crate::PostgresStore::connect); `Default` suits most
/// uses.
///
/// ```
/// use std::time::Duration;
/// use saga_store_postgres::PostgresOptions;
/// let options = PostgresOptions::default()
///     .schema("saga")
///     .pool_size(32)
///     .application_name("executor-7");
/// assert_eq!(options.get_pool_size(), 32);
/// ```
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    pub(crate) schema: Option<String>,
    pub(crate) pool_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) wait_timeout: Duration,
    pub(crate) retries: u32,
    pub(crate) group_commit: bool,
    pub(crate) max_group: usize,
    pub(crate) application_name: String,
    pub(crate) accept_fsync_off: bool,
    pub(crate) lock_timeout: Duration,
    pub(crate) idle_in_transaction_timeout: Duration,
    pub(crate) root_certs: Option<RootCerts>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: None,
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(2),
            idle_in_transaction_timeout: Duration::from_secs(5),
            retries: 4,
            group_commit: true,
            max_group: 64,
            application_name: "saga-store-postgres".into(),
            accept_fsync_off: false,
            root_certs: None,
        }
    }
}

impl PostgresOptions {
    /// Keeps the tables in this schema (created when missing) rather than the first schema of
    /// the connection's `search_path`: a lowercase identifier (`a-z`, `0-9`, `_`). Several
    /// stores may share one database in different schemas.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// How many connections the store keeps at most (default 16), besides one for cancel
    /// notifications once [`cancel_notifications`](crate::PostgresStore::cancel_notifications)
    /// is called.
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The pool size asked for.
    pub fn get_pool_size(&self) -> usize {
        self.pool_size
    }

    /// How long making one connection may take (default 10 s), unless the URL says.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a free connection of the pool (default 10 s) before it fails
    /// with a transient error.
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// How many times a call is retried inside the store after a transient error, where that is
    /// safe (default 4, pausing 10–20 ms, then twice as long each time, at most 1 s): then the
    /// transient error is returned.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Whether concurrent appends share transactions (default on; see the crate docs). Off,
    /// each append commits alone: only for comparison.
    #[must_use]
    pub fn group_commit(mut self, on: bool) -> Self {
        self.group_commit = on;
        self
    }

    /// How many appends one shared transaction takes at most (default 64, at most 64: each
    /// append is a savepoint, and PostgreSQL tracks up to 64 subtransactions of a transaction
    /// cheaply).
    #[must_use]
    pub fn max_group(mut self, appends: usize) -> Self {
        self.max_group = appends.clamp(1, 64);
        self
    }

    /// The `application_name` of the store's connections (default `saga-store-postgres`), as
    /// `pg_stat_activity` shows it.
    #[must_use]
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Connects to a server that runs with `fsync = off`, which is refused otherwise: commits
    /// are then not durable across a crash of the server's machine. For throw-away test
    /// databases only; [`PostgresStore::durability`](crate::PostgresStore::durability) says so.
    #[must_use]
    pub fn accept_fsync_off(mut self) -> Self {
        self.accept_fsync_off = true;
        self
    }

    /// How long a statement of the store waits for a row lock before it fails (transient, and
    /// retried): `lock_timeout` of its sessions. Default 2 s. A claim never queues behind a
    /// transaction that another executor left open (it stalled, or its network was cut), so
    /// that a scan goes on to the other Operations.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long the server lets a session of this store sit idle inside a transaction before it
    /// ends the session: `idle_in_transaction_session_timeout`. Default 5 s. A process stopped
    /// (SIGSTOP, a debugger, swapping) or cut off in the middle of a transaction would otherwise
    /// hold its rows' locks, and every takeover of those Operations would wait for it. The store's
    /// own transactions are never idle for more than a round trip.
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.idle_in_transaction_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Checks the server's certificate against the certificates in this PEM file (one or
    /// more: the authority that issued the server's, or its chain's root), as the URL's
    /// `sslrootcert=<path>` does; the URL's `sslrootcert`, when it has one, wins. With roots,
    /// `sslmode=prefer` and `require` check the chain as `verify-ca` does (as libpq); the URL's
    /// `sslmode=verify-ca` or `verify-full` needs them. Read once, at
    /// [`connect`](crate::PostgresStore::connect): a file that cannot be read, or holds no
    /// certificate, is refused there with [`PostgresError::RootCertificates`](crate::PostgresError::RootCertificates).
    ///
    /// ```
    /// use saga_store_postgres::PostgresOptions;
    /// let options = PostgresOptions::default().ssl_root_cert("/etc/saga/db-ca.pem");
    /// # let _ = options;
    /// // with "postgres://saga@db.example.com/saga?sslmode=verify-full"
    /// ```
    #[must_use]
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certs = Some(RootCerts::File(path.into()));
        self
    }

    /// Checks the server's certificate against the system's trusted root certificates (read
    /// with `rustls-native-certs`: on Linux the files named by `SSL_CERT_FILE` or
    /// `SSL_CERT_DIR`, else OpenSSL's usual ones, such as Debian's `ca-certificates`), as the
    /// URL's `sslrootcert=system` does; the URL's `sslrootcert`, when it has one, wins. As in
    /// libpq, the mode is then `verify-full` unless the URL says otherwise, and a weaker
    /// `sslmode` is refused: any public authority signs certificates for any name.
    #[must_use]
    pub fn system_root_certs(mut self) -> Self {
        self.root_certs = Some(RootCerts::System);
        self
    }
}
