//! saga-steps-docker (work in progress).
