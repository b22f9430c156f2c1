//! [`OutboxError`]: what can go wrong writing to, migrating or relaying an outbox.

/// Everything that can go wrong with an outbox. Each message says what happened and what to
/// do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A schema or table name that is not a plain identifier.
    #[error(
        "invalid outbox {what} name `{name}`: {reason}; use lower-case ASCII letters, digits and \
         `_`, starting with a letter or `_`"
    )]
    InvalidName {
        /// `schema` or `table`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A statement failed.
    #[error("outbox {operation} on {table} failed: {source}{hint}")]
    Database {
        /// What was being done (`publish_in`, `claim`, `migrate`, …).
        operation: &'static str,
        /// The outbox table, `schema.table`.
        table: String,
        /// A hint on what to do, when one is known (empty otherwise).
        hint: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },

    /// The event is not declared, its payload does not fit its type, or it could not be
    /// serialised (see [`events_core::Error`]).
    #[error(transparent)]
    Event(#[from] events_core::Error),

    /// The table was migrated by a newer `events-outbox` than this one.
    #[error(
        "the outbox {table} is at schema version {found}, newer than the {known} this \
         events-outbox knows: upgrade events-outbox in this program"
    )]
    NewerSchema {
        /// The outbox table.
        table: String,
        /// The version found.
        found: i32,
        /// The latest version this crate knows.
        known: i32,
    },
}

impl OutboxError {
    pub(crate) fn database(operation: &'static str, table: &str, source: sqlx::Error) -> Self {
        let code = match &source {
            sqlx::Error::Database(e) => e.code().map(|c| c.into_owned()),
            _ => None,
        };
        let hint = match code.as_deref() {
            // undefined_table, undefined_function, invalid_schema_name
            Some("42P01" | "42883" | "3F000") => {
                "; create the outbox table first with `Outbox::migrate` (or run the SQL of \
                 `Outbox::migration_sql`)"
            }
            _ => "",
        };
        Self::Database {
            operation,
            table: table.to_owned(),
            hint,
            source,
        }
    }
}
