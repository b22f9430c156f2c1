//! Integration, UI (trybuild) and interop tests for the domain-events workspace.
