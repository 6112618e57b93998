//! saga-steps-aws (work in progress).
