//! saga-store (work in progress).
