//! saga-testkit (work in progress).
