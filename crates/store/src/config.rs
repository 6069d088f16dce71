//! Which database the store uses.

use std::fmt;
use std::path::{Path, PathBuf};

use refund_gateway_domain::StoreError;
use secrecy::{ExposeSecret, SecretString};

/// File name of the SQLite database inside the data directory.
pub const SQLITE_FILE_NAME: &str = "refund-gateway.sqlite3";

/// Default size of the PostgreSQL connection pool.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// Where the operations are kept.
pub enum DatabaseConfig {
    /// An SQLite file, used by this one process only (order locks are in-process).
    Sqlite {
        /// The database file; created with its WAL files next to it.
        path: PathBuf,
    },
    /// A PostgreSQL database, possibly shared by several gateway replicas.
    Postgres {
        /// `postgres://user:password@host:port/db?...`; a secret, never printed.
        url: SecretString,
        /// Size of the connection pool, and the most connections of the claims and outcomes,
        /// which the store hands out itself (order locks hold none; liveness and lock
        /// notifications use two connections of their own).
        max_connections: u32,
    },
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            Self::Postgres {
                max_connections, ..
            } => f
                .debug_struct("Postgres")
                .field("url", &"[REDACTED]")
                .field("max_connections", max_connections)
                .finish(),
        }
    }
}

impl DatabaseConfig {
    /// The store for a `--database-url`, or the default SQLite file in `data_dir`:
    /// - `postgres://…` or `postgresql://…`: PostgreSQL with [`DEFAULT_MAX_CONNECTIONS`];
    /// - `sqlite:PATH` (also `sqlite://PATH`): that SQLite file;
    /// - `None` (or an empty string): `data_dir/refund-gateway.sqlite3`, creating `data_dir`.
    ///
    /// Anything else is refused with [`StoreError::Unavailable`] naming only the scheme.
    pub fn from_url_or_data_dir(
        database_url: Option<&str>,
        data_dir: &Path,
    ) -> Result<Self, StoreError> {
        let url = database_url.map(str::trim).filter(|u| !u.is_empty());
        let Some(url) = url else {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot create data directory {}: {e}",
                    data_dir.display()
                ))
            })?;
            return Ok(Self::Sqlite {
                path: data_dir.join(SQLITE_FILE_NAME),
            });
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres {
                url: SecretString::from(url.to_owned()),
                max_connections: DEFAULT_MAX_CONNECTIONS,
            });
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            // Query options (`?mode=rwc`) are not supported: the store sets its own.
            if path.is_empty() || path.contains('?') {
                return Err(StoreError::Unavailable(
                    "an sqlite: database URL must be sqlite:PATH, without options".to_owned(),
                ));
            }
            return Ok(Self::Sqlite {
                path: PathBuf::from(path),
            });
        }
        // Only the scheme: the rest may hold a password.
        let scheme = url.split_once(':').map_or("(none)", |(s, _)| s);
        Err(StoreError::Unavailable(format!(
            "unsupported database URL scheme {scheme:?}: use postgres://, postgresql:// or sqlite:"
        )))
    }

    /// What in a PostgreSQL URL is secret (the password of the user info, a `password=`
    /// query option), so error messages can be scrubbed of it.
    pub(crate) fn url_secrets(url: &SecretString) -> Vec<String> {
        let url = url.expose_secret();
        let mut secrets = vec![url.to_owned()];
        let Some((_, rest)) = url.split_once("://") else {
            return secrets;
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
            && !password.is_empty()
        {
            secrets.push(password.to_owned());
        }
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&') {
                if let Some(("password", value)) = pair.split_once('=')
                    && !value.is_empty()
                {
                    secrets.push(value.to_owned());
                }
            }
        }
        secrets
    }

    /// `message` with every secret of `url` replaced by `[REDACTED]`.
    pub(crate) fn redact(message: String, url: &SecretString) -> String {
        let mut secrets = Self::url_secrets(url);
        // Longest first, so the whole URL goes before the password inside it.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.iter().fold(message, |m, secret| {
            m.replace(secret.as_str(), "[REDACTED]")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_backend() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let data = dir.path().join("data");
        match DatabaseConfig::from_url_or_data_dir(None, &data) {
            Ok(DatabaseConfig::Sqlite { path }) => {
                assert_eq!(path, data.join(SQLITE_FILE_NAME));
                assert!(data.is_dir());
            }
            other => panic!("{other:?}"),
        }
        match DatabaseConfig::from_url_or_data_dir(Some("sqlite:/x/y.db"), &data) {
            Ok(DatabaseConfig::Sqlite { path }) => assert_eq!(path, PathBuf::from("/x/y.db")),
            other => panic!("{other:?}"),
        }
        for url in ["postgres://u:pw@h/db", "postgresql://h/db"] {
            match DatabaseConfig::from_url_or_data_dir(Some(url), &data) {
                Ok(c @ DatabaseConfig::Postgres { .. }) => {
                    assert!(!format!("{c:?}").contains("pw"));
                }
                other => panic!("{other:?}"),
            }
        }
        let err = DatabaseConfig::from_url_or_data_dir(Some("mysql://u:secret@h/db"), &data);
        match err {
            Err(e) => assert!(!e.to_string().contains("secret"), "{e}"),
            Ok(c) => panic!("{c:?}"),
        }
    }

    #[test]
    fn redacts_the_password() {
        let redact = |m: &str, u: &str| {
            DatabaseConfig::redact(m.to_owned(), &SecretString::from(u.to_owned()))
        };
        assert_eq!(
            redact("bad p%40ss here", "postgres://u:p%40ss@h:5432/db"),
            "bad [REDACTED] here"
        );
        assert_eq!(
            redact("x postgres://u:pw@h/db y", "postgres://u:pw@h/db"),
            "x [REDACTED] y"
        );
        assert_eq!(
            redact("sekrit", "postgres://h/db?sslmode=require&password=sekrit"),
            "[REDACTED]"
        );
        assert_eq!(redact("u@h", "postgres://u@h/db"), "u@h");
    }
}
