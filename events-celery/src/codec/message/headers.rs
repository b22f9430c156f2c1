//! Header names, each spelled once: the task headers of Celery protocol 2 in the order Celery 5
//! writes them ([`Header`], used by every header writer and reader), and this crate's own
//! `x-events-*` headers.

/// Declares [`Header`] from one table of variant and wire name, in Celery's order.
macro_rules! celery_headers {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// A task header of Celery protocol 2 (`task`, `id` and the others Celery 5 writes).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Header {
            $($(#[$doc])* $variant,)*
        }

        impl Header {
            /// Every header, in the order Celery 5 writes them (custom headers follow).
            pub(crate) const ALL: [Header; [$($name),*].len()] = [$(Header::$variant),*];

            /// The header's name on the wire.
            #[inline]
            pub(crate) const fn name(self) -> &'static str {
                match self {
                    $(Header::$variant => $name,)*
                }
            }

            /// The header named `name`, if it is one of Celery's (else a custom header).
            #[inline]
            pub(crate) fn from_name(name: &str) -> Option<Header> {
                match name {
                    $($name => Some(Header::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

celery_headers! {
    /// The sender's language (`py`).
    Lang = "lang",
    /// The task name.
    Task = "task",
    /// The task id.
    Id = "id",
    /// A display name for logs.
    Shadow = "shadow",
    /// Not before this time.
    Eta = "eta",
    /// Not after this time.
    Expires = "expires",
    /// The group id.
    Group = "group",
    /// The position in the group.
    GroupIndex = "group_index",
    /// How many times the task was retried.
    Retries = "retries",
    /// `[hard, soft]` time limits.
    TimeLimit = "timelimit",
    /// The first task of the workflow.
    RootId = "root_id",
    /// The task that sent this one.
    ParentId = "parent_id",
    /// A Python repr of the args.
    ArgsRepr = "argsrepr",
    /// A Python repr of the kwargs.
    KwargsRepr = "kwargsrepr",
    /// The sender (`gen<pid>@<host>`).
    Origin = "origin",
    /// Whether the result is ignored.
    IgnoreResult = "ignore_result",
    /// How many times the task was replaced.
    ReplacedTaskNesting = "replaced_task_nesting",
    /// Names of stamped headers.
    StampedHeaders = "stamped_headers",
    /// Stamps.
    Stamps = "stamps",
}

/// The header in which a message published by a handler carries how many publishes deep it is
/// (`events_core::origin`); a worker dead-letters one at
/// [`MAX_PUBLISH_DEPTH`](events_core::MAX_PUBLISH_DEPTH) as a publish cycle.
pub const PUBLISH_DEPTH_HEADER: &str = "x-events-depth";

/// The header that carries the names of the events on the way to a message published by a
/// handler, oldest first (the last 64).
pub const PUBLISH_CHAIN_HEADER: &str = "x-events-chain";

/// The header that stands in for a header table the AMQP connection refused to parse (it
/// nested too deep); its value says why. A message carrying it is refused by
/// [`TaskMessage::decode_amqp`](crate::codec::TaskMessage::decode_amqp).
pub(crate) const REFUSED_HEADER: &str = "x-events-refused-headers";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for header in Header::ALL {
            assert_eq!(Header::from_name(header.name()), Some(header));
        }
        assert_eq!(Header::from_name("x-trace-id"), None);
        assert_eq!(Header::from_name("Task"), None);
        assert_eq!(Header::ALL.len(), 19);
    }
}
