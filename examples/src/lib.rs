//! Examples of dtasks.
